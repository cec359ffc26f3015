"""Helpers shared by the tests and the benchmarks; not part of the library.

- :mod:`tests.support.vethnet`: small real networks of namespaces and veths
  (:class:`~tests.support.vethnet.VethNet`) for the packet handler's tests and benchmark;
- :mod:`tests.support.pinger`: an ICMP echo pinger run inside a namespace, for RTTs;
- :mod:`tests.support.forwarder`: the plain forwarder, the handler's I/O with nothing
  else, the benchmark's baseline.
"""
