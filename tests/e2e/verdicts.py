"""Reading a run's lockup evidence (``summary.json``'s ``lockup``): which state held it.

Shared by the end-to-end tests that accept more than one outcome of a policy on a load
and must tell which one a run reached.
"""

from __future__ import annotations


def at_tcp_mem(summary: dict) -> bool:
    """A lockup held at TCP's hard limit, the stream-specific deadlock: the downloads'
    queues hold ``tcp_mem[2]``, their readers wait for writeback, and the storage flow's
    segments are refused ``PROTO_MEM``, free memory possibly above min. 2.6.13 exempts no
    skb; 3.6's c76562b6709f exempts only ``pfmemalloc`` skbs, which above min there are
    none of. Its cycle runs through TCP memory (the detector's ``TcpOutlook``)."""
    return ((summary.get("lockup") or {}).get("cycle") or {}).get("kind") == "tcp_mem"


def assert_held_at_tcp_mem(summary: dict) -> None:
    """The evidence of :func:`at_tcp_mem`'s state: the storage flow's next segment is
    refused at ``tcp_mem[2]``, writeback waits on it, and the cycle closes through readers
    that wait for writeback."""
    lk = summary["lockup"]
    tcp = lk["tcp"]
    assert tcp["refused"] and tcp["allocated"] + tcp["need"] > tcp["limits"][2], tcp
    e = [(x["waiter"], x["waits_for"]) for x in lk["cycle"]["edges"]]
    assert e[0][0] == "writeback" and e[1][1] == "TCP memory", e
    assert e[-1][1] == "writeback", e
