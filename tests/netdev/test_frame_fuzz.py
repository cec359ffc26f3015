"""Frame fuzzing of the receive path, driven directly (no wire, no root needed).

Hypothesis draws broken frames (``tests/support/frames.py``: truncated Ethernet, IP
and TCP headers, IHLs and TCP data offsets that lie, IP fragments, VLAN tags, wrong
EtherTypes, empty and oversize frames) and :class:`~tests.support.frames.RxPath` takes
each through the packet handler's receive steps, with memory at ease or at the atomic
floor. None may crash the path or make it count an error; each is counted exactly once,
delivered or dropped under one reason; the parse never reads past the frame and agrees
with ``explain``; afterwards a segment of the storage flow is still delivered as
memalloc and charged to its socket, and no skb is left charged.

A few hundred frames run here with every ``make test``; ``make fuzz`` runs 10,000.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.support import frames as fz

EXAMPLES = 300


@pytest.fixture(scope="module")
def rx():
    path = fz.RxPath()
    yield path
    path.close()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=fz.frames())
def test_no_frame_crashes_the_receive_path_and_each_is_counted_once(rx, case):
    frame, pressure = case
    verdict = rx.check(frame, pressure)
    assert verdict.outcome != "crash" and not verdict.problem, verdict


def test_after_the_fuzz_the_storage_flow_goes_on_and_nothing_is_left(rx):
    assert sum(rx.outcomes.values()) >= EXAMPLES // 2          # the fuzz ran first, here
    assert rx.storage_still_flows() is None
    assert rx.leftovers() == []


@pytest.mark.parametrize("frame,outcome", [
    (b"", "MALFORMED (ethernet)"),                             # nothing at all
    (bytes(13), "MALFORMED (ethernet)"),                       # a runt
    (fz.storage_segment(1)[:14 + 19], "MALFORMED (ipv4)"),     # IPv4 header cut short
    (fz.storage_segment(1)[:14 + 20 + 19], "MALFORMED (ipv4)"),   # tot_len beyond the frame
    # a later fragment has no TCP header to check (explain() used to look for one)
    (bytes(Ether() / IP(src=fz.TARGET, dst=fz.CLIENT, proto=6, frag=1) / Raw(b"x" * 9)),
     "delivered other"),
    (fz.storage_segment(1, 0)[:46] + b"\x40" + fz.storage_segment(1, 0)[47:],
     "MALFORMED (tcp)"),                                         # a TCP data offset of 4 words
])
def test_named_malformed_frames(frame, outcome):
    path = fz.RxPath()
    try:
        verdict = path.check(frame)
        assert (verdict.outcome, verdict.problem) == (outcome, "")
        assert path.storage_still_flows() is None and path.leftovers() == []
    finally:
        path.close()
