"""How the kernel client judges a run without a guest: the guest agent's lockup rule
(``StallWatch``, run here on the host's Python with the same page patterns the guest
gets) and the host's account of a guest that sent no outcome (its console)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest

from testbed.guest import image
from testbed.mm import workload
from testbed.guest.node import GuestRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def agent():
    """nodes/kernel_client/guest_agent.py as the guest loads it (tbpattern beside it)."""
    pattern = types.ModuleType("tbpattern")
    exec(compile(image.run_files()["tbpattern.py"], "tbpattern.py", "exec"), pattern.__dict__)
    sys.modules["tbpattern"] = pattern
    spec = importlib.util.spec_from_file_location(
        "guest_agent", ROOT / "nodes" / "kernel_client" / "guest_agent.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("tbpattern", None)


def sample(wb: int, dirty: int = 10, writeback: int = 5, free: int = 100, wmark_min: int = 50):
    return {"writeback_bytes": wb, "dirty": dirty, "writeback": writeback, "free": free,
            "wmark_min": wmark_min}


def test_progress_or_nothing_pending_is_no_stall(agent):
    w = agent.StallWatch(4.0, now=0.0)
    assert w.update(sample(0), 1.0, False, False) == (0.0, False)
    assert w.update(sample(4096), 5.0, False, False) == (0.0, False)      # moved
    assert w.update(sample(4096, dirty=0, writeback=0), 20.0, False, False) == (0.0, False)
    assert w.longest == 0.0


def test_a_stall_at_the_min_watermark_is_a_lockup_and_above_it_is_not(agent):
    w = agent.StallWatch(4.0, now=0.0)
    w.update(sample(8192), 0.0, False, False)
    assert w.update(sample(8192), 3.9, False, False) == (3.9, False)     # not long enough
    assert w.update(sample(8192), 6.0, False, False) == (6.0, False)     # free above min
    assert w.update(sample(8192, free=50), 6.5, False, False) == (6.5, True)
    assert w.longest == 6.5


def test_a_stall_is_no_lockup_before_the_kernels_recovery_horizon(agent):
    """Before the horizon (the command timeout, then the replacement timeout) the kernel
    may still fail the session's commands or log in again: the guest runs on."""
    w = agent.StallWatch(4.0, now=0.0, horizon_s=40.0)
    w.update(sample(8192), 0.0, False, False)
    assert w.update(sample(8192, free=50), 6.0, False, False) == (6.0, False)
    assert w.update(sample(8192, free=50), 39.9, False, True) == (39.9, False)
    assert w.update(sample(8192, free=50), 40.0, False, False) == (40.0, True)


def test_blocked_tasks_are_read_with_their_kernel_stacks(agent, tmp_path):
    """A /proc of three tasks as the kernel writes it: only the one in state D is kept,
    with its wchan and its stack's function names (offsets dropped)."""
    for pid, comm, state in ((7, "kworker/u4:2-iscsi_q_1", "D"), (8, "python3", "S"),
                             (9, "a (b) c", "D")):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({comm}) {state} 1 1 1 0 -1 4194560 0 0\n")
        (d / "wchan").write_text("sk_stream_wait_memory" if pid == 7 else "balance_dirty_pages")
        (d / "stack").write_text("[<0>] sk_stream_wait_memory+0x2c7/0x380\n"
                                 "[<0>] tcp_sendmsg_locked+0x5a1/0xc60\n" if pid == 7 else "")
    (tmp_path / "self").mkdir()
    got = agent.blocked_tasks(str(tmp_path))
    assert got == [{"pid": 7, "comm": "kworker/u4:2-iscsi_q_1", "wchan": "sk_stream_wait_memory",
                    "stack": ["sk_stream_wait_memory", "tcp_sendmsg_locked"]},
                   {"pid": 9, "comm": "a (b) c", "wchan": "balance_dirty_pages", "stack": []}]


def test_iscsi_states_are_the_transport_classs(agent, tmp_path):
    for cls, name, state in (("iscsi_session", "session1", "FAILED"),
                             ("iscsi_connection", "connection1:0", "down")):
        d = tmp_path / "class" / cls / name
        d.mkdir(parents=True)
        (d / "state").write_text(state + "\n")
    assert agent.iscsi_states(str(tmp_path)) == {"session1": "FAILED", "connection1:0": "down"}
    assert agent.iscsi_states(str(tmp_path / "none")) == {}


def test_a_hung_task_makes_a_stall_a_lockup_whatever_free_memory(agent):
    w = agent.StallWatch(2.0, now=0.0)
    w.update(sample(0), 0.0, False, False)
    assert w.update(sample(0, free=10_000), 2.5, False, True) == (2.5, True)


def test_a_final_fsync_that_does_not_return_is_pending_writeback(agent):
    w = agent.StallWatch(2.0, now=0.0)
    idle = sample(4096, dirty=0, writeback=0, free=10)
    w.update(idle, 0.0, True, False)
    assert w.update(idle, 3.0, True, False) == (3.0, True)


def runner(tmp_path: Path, console: str, samples: list[dict]) -> GuestRunner:
    (tmp_path / "console.log").write_text(console)
    (tmp_path / "m.ndjson").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return GuestRunner({"console_path": str(tmp_path / "console.log"),
                        "metrics_path": str(tmp_path / "m.ndjson")})


LAST = {"t": 12.5, "free": 60, "wmark_min": 70, "dirty": 900, "writeback": 40,
        "stalled_for_s": 9.0, "workload_bytes": 2 << 20, "writeback_bytes": 1 << 20,
        "PFMemallocDrop": 3, "allocstall": 7}


def test_a_silent_guest_with_hung_task_warnings_is_a_lockup(tmp_path):
    hung = "[  40.1] INFO: task kworker/u2:1:57 blocked for more than 4 seconds."
    r = runner(tmp_path, f"boot\n{hung}\nmore\n", [{"t": 0.0, "events": []}, LAST])
    out = r._host_outcome("deadline", "the guest sent nothing for 60s")
    assert out["verdict"] == "lockup"
    lk = out["lockup"]
    assert lk["hung_task_messages"] == [hung.strip()] and lk["free"] == 60
    assert lk["t"] == 12.5 and lk["stalled_for_s"] == 9.0 and lk["counters"]["PFMemallocDrop"] == 3
    assert out["bytes_written_back"] == 1 << 20 and r.manifest["extents"] == []


def test_a_silent_guest_without_them_is_not_and_an_oom_kill_is_named(tmp_path):
    oom = "[  11.9] Out of memory: Killed process 121 (python3) total-vm:16552kB"
    r = runner(tmp_path, f"{oom}\n", [LAST])
    out = r._host_outcome("deadline", "the guest sent nothing for 60s")
    assert out["verdict"] == "deadline" and "lockup" not in out
    assert out["detail"].endswith(f"the guest's OOM killer ran: {oom}")


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs CAP_NET_ADMIN")
def test_both_clients_get_a_receive_buffer_past_rmem_max(agent):
    """The downloaders of both clients ask for the same buffer: the guest's 6.1 caps the
    plain SO_RCVBUF at its rmem_max (208 KiB), which made its load smaller than the
    model's until both forced it (the kernel doubles what is asked)."""
    want = rmem_max() + (1 << 20)
    for set_rcvbuf in (workload.set_rcvbuf, agent.set_rcvbuf):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            set_rcvbuf(s, want)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * want, set_rcvbuf


def test_tcp_memory_is_read_from_sockstat(agent, tmp_path, monkeypatch):
    real_open = open
    sockstat = tmp_path / "sockstat"
    sockstat.write_text("sockets: used 130\nTCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1412\n"
                        "UDP: inuse 1 mem 2\n")
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(
        sockstat if p == "/proc/net/sockstat" else p, *a, **k))
    assert agent.tcp_mem_pages() == 1412
