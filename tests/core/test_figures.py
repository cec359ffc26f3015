"""What other traffic's users feel, as summary.json records it: transmit drops by class,
each bulk flow's longest stall, its server's retransmission counts (TCP_INFO)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from nodes.bulk_source import tcp_info
from testbed.mm import DropReason
from testbed.netdev.counters import MEMALLOC, OTHER, RECEIVED, TX, Counters
from testbed.report.summary import bulk_tcp, drops_by_reason, longest_stalls

HOSTS = {"client": "10.0.0.1", "bulk1": "10.0.0.11", "bulk2": "10.0.0.12"}


def test_summary_splits_transmit_drops_by_class():
    c = Counters(list(DropReason))
    t = c.tally()
    for cls, reason, n in ((OTHER, DropReason.NOMEM, 7), (MEMALLOC, DropReason.LINK_LOSS, 2)):
        i = c.cell(TX, cls, RECEIVED)
        t[i] += n
        j = c.cell(TX, cls, c.reason_slot[reason])
        t[j] += n
    d = drops_by_reason(c.snapshot())
    assert d["tx"]["total"] == 9 and d["tx"]["NOMEM"] == 7 and d["tx"]["LINK_LOSS"] == 2
    assert d["tx"]["other"] == {"total": 7, "NOMEM": 7}
    assert d["tx"]["memalloc"] == {"total": 2, "LINK_LOSS": 2}
    assert d["other"] == {"total": 0} and d["memalloc"] == {"total": 0}
    assert drops_by_reason(None)["tx"]["other"] == {"total": 0}


def sample(t: float, **bytes_by_ip: int) -> dict:
    flows = [{"flow": f"tcp 10.0.0.1:4000{i}<->{ip.replace('_', '.')}:5001", "charged_bytes": b}
             for i, (ip, b) in enumerate(bytes_by_ip.items())]
    return {"t": t, "net": {"flows": flows}}


def test_the_longest_stall_is_the_longest_time_without_a_new_byte():
    a, b = "10_0_0_11", "10_0_0_12"
    samples = [sample(0.1, **{a: 0}), sample(0.2, **{a: 100, b: 0}), sample(0.3, **{a: 100, b: 5}),
               sample(1.5, **{a: 100, b: 9}), sample(1.6, **{a: 300, b: 9}),
               sample(2.0, **{a: 400, b: 9}), sample(9.0, **{a: 400, b: 9})]
    got = longest_stalls(samples, HOSTS, end_t=2.5)
    # bulk1: no byte between 0.2 and 1.6; bulk2's last progress at 1.5 ends its count
    assert got == {"bulk1": 1.4, "bulk2": 1.2}
    # the outcome's time bounds what is looked at
    assert longest_stalls(samples, HOSTS, end_t=0.3) == {"bulk1": 0.1, "bulk2": 0.1}


def test_the_servers_retransmission_counts_add_up_per_host(tmp_path: Path):
    lines = [{"event": "ready"},
             {"event": "stats", "flows": [{"id": 1, "retrans": 3, "rto": 1, "rto_ms": 200}]},
             {"event": "stats", "flows": [{"id": 1, "retrans": 5, "rto": 2, "rto_ms": 650},
                                          {"id": 2, "retrans": 1, "rto": 0, "rto_ms": 0}]},
             {"event": "stop", "flows": [{"id": 2, "retrans": 2, "rto": 1, "rto_ms": 300}]}]
    (tmp_path / "bulk1.ndjson").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "bulk2.ndjson").write_text(json.dumps(
        {"event": "stats", "flows": [{"id": 1, "bytes_sent": 5}]}) + "\n")
    got = bulk_tcp(tmp_path, ["bulk1", "bulk2", "bulk3"])
    assert got["bulk1"] == {"retrans": 7, "rto": 3, "rto_time_s": 0.95}
    # a server that did not record them (an older source), or no file at all
    assert got["bulk2"] == got["bulk3"] == {"retrans": None, "rto": None, "rto_time_s": None}


def test_tcp_info_reads_a_live_socket_and_nothing_from_a_closed_one():
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    try:
        conn.sendall(b"x" * 65536)
        got = tcp_info(conn)
        assert got is not None and got["retrans"] == 0
        assert set(got) == {"retrans", "rto", "rto_ms"}
    finally:
        conn.close()
        cli.close()
        srv.close()
    assert tcp_info(conn) is None
