"""testbed: network block I/O under memory pressure, emulated and measured.

The package is layered so that each part can be read, tested and used alone:

- ``mm``       the storage client's emulated memory: pages, watermarks, gfp flags,
               reserves and the historical policies, page cache, dirty throttling,
               flusher, kswapd, lockup detector.
- ``iscsi``    a pure-Python iSCSI initiator (RFC 7143) and the block device on it.
- ``netdev``   the reserve-aware packet handler: the client's NIC driver in user space.
- ``backends`` bring a topology up on Mininet (default) or Docker, and tear it down.
- ``scenario`` / ``orchestrator`` / ``report``  run a scenario and show its outcome.

See docs/architecture.md for the data path and the contracts between the parts.
"""

__version__ = "0.1.0"
