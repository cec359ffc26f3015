"""What a restarted storage client does differently: the ``client_restart`` fault.

The orchestrator starts the client again after it was killed with SIGKILL, with
``incarnation`` > 1 in its configuration. Two things of the dead one are still there
and must be dealt with, as a machine that boots after a crash does:

- **the wire**: the dead packet handler had moved the client's address onto its TAP
  device, which vanished with the process; the wire is left without an address (and
  still isolated by the handler's nft table, which the new handler's attach adds again:
  ``nft add`` of an existing table or chain is no error). :func:`reclaim_wire` puts the
  address back on the wire, where the new handler's attach finds it and moves it to the
  new TAP, as the interface's configuration does at boot. The wire's sysctls stay as
  the dead handler set them (IPv6 off, ``arp_ignore`` 8): the new handler sets the same.
- **the metrics stream**: the run has one ``client.ndjson`` on one time axis, from the
  first incarnation's start. :class:`RunClockStream` appends the new incarnation's
  samples to it with ``t`` moved onto that axis (the emulated machine, being new,
  counts from its own start; the stream is shifted rather than the machine, whose clock
  is also its lockup detector's).
"""

from __future__ import annotations

import json
import subprocess
from typing import Callable, TextIO

from testbed.errors import TestbedError

IP_TIMEOUT_S = 10.0


def reclaim_wire(wire: str, cidr: str) -> None:
    """Give the client's address back to ``wire`` (``ip addr replace``: idempotent)."""
    try:
        r = subprocess.run(["ip", "addr", "replace", cidr, "dev", wire], capture_output=True,
                           text=True, timeout=IP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"restart: ip addr replace {cidr} dev {wire} did not finish in "
                           f"{IP_TIMEOUT_S:g}s") from None
    if r.returncode != 0:
        raise TestbedError(f"restart: ip addr replace {cidr} dev {wire}: {r.stderr.strip()}")


class RunClockStream:
    """A text stream for :class:`testbed.mm.metrics.Metrics` that appends each NDJSON
    sample to ``out`` with ``offset()`` added to its ``t``: the seconds from the run's
    load start to this machine's start."""

    def __init__(self, out: TextIO, offset: Callable[[], float]):
        self.out = out
        self.offset = offset

    def write(self, text: str) -> int:
        for line in text.splitlines():
            sample = json.loads(line)
            sample["t"] = round(sample.get("t", 0.0) + self.offset(), 3)
            self.out.write(json.dumps(sample, separators=(",", ":")) + "\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        self.out.close()
