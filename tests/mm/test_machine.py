"""The Machine: completion and read-back, the lockup and its cycle, stalls, metrics, stop."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
from typing import Optional

import pytest

from testbed.errors import ConfigError
from testbed.mm import Machine, MachineConfig, MemoryManager, MMError, Skb, Sock, WorkloadConfig
from testbed.mm.lockup import FlowTally, RecoveryHorizon, StorageFlow


def writer(**kw) -> WorkloadConfig:
    return WorkloadConfig(kind="writer", **kw)


def test_256_mib_through_64_mib_completes_and_verifies(disk):
    cfg = MachineConfig(memory_mb=64, workloads=[writer(total_mb=256, files=4, seed=7)])
    with Machine(cfg, disk) as m:
        out = m.wait(deadline_s=120)
        assert out.verdict == "completed", out
        assert out.bytes_written == out.bytes_written_back == 256 << 20
        assert m.mm.vm.pgsteal_kswapd + m.mm.vm.pgsteal_direct > 40000    # memory was recycled
    assert m.mm.check_invariants() == []
    result = m.verify()
    assert result.ok and result.bytes_checked == 256 << 20 and result.pages_checked == 65536


def test_verify_catches_a_corrupted_block(disk):
    cfg = MachineConfig(memory_mb=16, workloads=[writer(total_mb=2, seed=3)])
    with Machine(cfg, disk) as m:
        assert m.wait(deadline_s=30).verdict == "completed"
    inode = m.workloads[0].files[0]
    fd = os.open(disk.path, os.O_RDWR)
    os.pwrite(fd, b"X", inode.device_page(17) * 4096 + 100)
    os.close(fd)
    result = m.verify()
    assert result.mismatches == 1 and result.examples == [f"{inode.name} page 17"]


SHORT = RecoveryHorizon(command_timeout_s=1.0, keepalive_s=1.0, time2wait_s=0.5, login_s=0.5,
                        tcp_rto_s=0.1)     # max(1 + 0.5 + 0.5, 0.1 * 15) = 2 s: a test's patience


class Frames(threading.Thread):
    """The network of a storage client, without a network: every 10 ms frames of a bulk
    download, then one of the storage flow (a target's retransmission), arrive on ``dev``.
    A bulk frame that gets an skb is queued to a socket nobody reads, up to ``rcvbuf``
    pages (a reader held back); a storage frame that gets one is delivered and freed, one
    that gets none is dropped: that is the storage flow's tally."""

    BULK_PER_STORAGE = 4

    def __init__(self, mm: MemoryManager, dev, rcvbuf_pages: int = 800) -> None:
        super().__init__(name="frames", daemon=True)
        self.mm, self.dev, self.rcvbuf = mm, dev, rcvbuf_pages
        self.bulk = mm.sock_create("bulk")
        self.dropped = self.delivered = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            for _ in range(self.BULK_PER_STORAGE):
                if self.bulk.rmem_pages < self.rcvbuf:
                    skb = self.mm.netdev_alloc_skb(self.dev, 1500)
                    if isinstance(skb, Skb):
                        self.bulk.queue_rcv(skb, 1448)
            skb = self.mm.netdev_alloc_skb(self.dev, 1500)
            if isinstance(skb, Skb):
                self.mm.kfree_skb(skb)
                self.delivered += 1
            else:
                self.dropped += 1

    def flow(self) -> StorageFlow:
        return StorageFlow("iSCSI", self.dev, lambda: FlowTally(self.dropped, self.delivered),
                           lambda: "a test's target")


@contextlib.contextmanager
def networked(cfg: MachineConfig, disk, horizon: Optional[RecoveryHorizon] = SHORT):
    """A started Machine whose storage flow is :class:`Frames`'."""
    mm = MemoryManager.from_config(cfg)
    frames = Frames(mm, mm.register_netdev("eth0"))
    m = Machine(cfg, disk, mm=mm, storage_flow=frames.flow(), horizon=horizon)
    frames.start()
    try:
        with m:
            yield m
    finally:
        frames.stop.set()
        frames.join(5)
        frames.bulk.close()


def lockup_config(**kw) -> MachineConfig:
    return MachineConfig(memory_mb=32, policy="none", lockup_after_s=1.0, workloads=[
        writer(total_mb=16, files=2, seed=1),
        WorkloadConfig(kind="mmap_writer", total_mb=48, seed=2)], **kw)


def assert_lockup_signature(m: Machine, ev) -> None:
    assert ev is not None and ev.stalled_for_s >= 1.0 + SHORT.seconds
    assert ev.stuck_for_s >= SHORT.seconds and ev.horizon["seconds"] == SHORT.seconds
    floor = m.mm.zone.mark_atomic
    assert ev.free - ev.storage_rx_need < ev.storage_rx_mark == floor < ev.wmark_min  # at the floor
    assert ev.dirty + ev.writeback > 0.8 * m.mm.zone.managed_pages    # filled with dirty pages
    assert ev.reclaimable == 0
    assert ev.throttled_dirty >= 1                                    # the writer is held back
    assert ev.counters["nr_written"] < 2048
    assert ev.storage["dropped_while_stuck"] > 0 and ev.storage["delivered_while_stuck"] == 0
    assert ev.tasks["writer0"] == "balance_dirty_pages"
    text = ev.cycle["text"]
    assert text[0].startswith(f"writeback -> iSCSI responses: {ev.writeback:,} pages under writeback")
    assert text[1].startswith("iSCSI responses -> an skb: ")
    assert text[1].endswith(f"the GFP_ATOMIC floor of {floor})")
    assert text[-1].startswith("dirty pages -> writeback: ")


def test_a_stalled_disk_behind_the_network_locks_up_names_its_cycle_and_recovers(disk):
    disk.stall()
    with networked(lockup_config(), disk) as m:
        out = m.wait(deadline_s=30)
        assert out.verdict == "lockup", out
        assert_lockup_signature(m, out.lockup)
        time.sleep(0.5)                                   # stuck: nothing moves
        assert m.mm.vm.nr_written == 0 and m.lockup.locked_up
        disk.resume()
        out = m.wait(deadline_s=60, stop_on_lockup=False)
        assert out.verdict == "completed", out
        assert out.lockup.recovered_at is not None and out.lockup.recovered_at > out.lockup.t
        assert out.lockup.recovered_by == "writeback completed" and not m.lockup.locked_up
        assert [s["ended_by"] for s in out.stalls if s["lockup"]] == ["writeback completed"]
    assert m.verify().ok and m.mm.check_invariants() == []


def test_a_stalled_local_disk_is_a_stall_not_a_lockup(disk):
    """No network storage, no receive deadlock: stuck past the horizon, it is recorded
    as stuck with the reason, and the run waits on."""
    disk.stall()
    with Machine(lockup_config(), disk, horizon=SHORT) as m:
        out = m.wait(deadline_s=1.0 + 2 * SHORT.seconds + 2.0)
        assert out.verdict == "deadline" and out.lockup is None, out
        stall = out.stalls[0]
        assert stall["ended_by"] is None and not stall["lockup"]
        assert stall["not_lockup"] == "no network storage: writeback waits for no received frame"
        disk.resume()
        out = m.wait(deadline_s=60)
        assert out.verdict == "completed" and out.stalls[0]["ended_by"] == "writeback completed"
    assert m.verify().ok


def test_a_slow_disk_is_slow_not_locked_up(disk):
    """Each write takes 2.5 s, longer than lockup_after_s: every pause is a stall with
    memory exhausted and storage frames dropped - the old detector called it a lockup. It
    completes, its stalls recorded, each ended by a writeback completing."""
    disk.set_latency(2.5)
    cfg = MachineConfig(memory_mb=16, policy="none", lockup_after_s=1.0, writeback_inflight=64,
                        writeback_batch_kb=512, workloads=[
                            writer(total_mb=8, files=2, seed=1),
                            WorkloadConfig(kind="mmap_writer", total_mb=16, seed=2)])
    with networked(cfg, disk, horizon=None) as m:     # the initiator's own horizon, 42 s
        out = m.wait(deadline_s=120)
        assert out.verdict == "completed", out
    assert out.lockup is None and out.stalls
    assert all(s["ended_by"] == "writeback completed" and not s["lockup"] for s in out.stalls)
    assert all(1.0 <= s["duration_s"] < 2.5 + 1.0 for s in out.stalls), out.stalls
    disk.set_latency(0.0)                                 # the read-back need not be slow
    assert m.verify().ok


def test_stop_is_bounded_while_the_machine_is_locked_up(disk):
    disk.stall()
    with networked(lockup_config(), disk) as m:
        assert m.wait(deadline_s=30).verdict == "lockup"
        t = time.monotonic()
        assert m.stop(timeout=3.0) is True
        assert time.monotonic() - t < 3.0
        assert m.wait(deadline_s=30, stop_on_lockup=False).verdict == "stopped"
        assert m.stop() is True                           # idempotent
    disk.resume()


def test_deadline_outcome(disk):
    disk.set_bandwidth(1 << 20)                           # 1 MiB/s: 8 MiB cannot finish in 1 s
    cfg = MachineConfig(memory_mb=64, workloads=[writer(total_mb=8)])
    with Machine(cfg, disk) as m:
        out = m.wait(deadline_s=1.0)
    assert out.verdict == "deadline" and 0.9 < out.t < 3


def test_metrics_are_ndjson_with_kernel_names_and_extra_fields(disk, tmp_path):
    path = os.path.join(tmp_path, "client.ndjson")
    cfg = MachineConfig(memory_mb=32, metrics_interval_ms=50, policy="phillips-2005",
                        workloads=[writer(total_mb=8)])
    m = Machine(cfg, disk, netdevs=[("eth0", 1500)], metrics_path=path,
                metric_sources=[lambda: {"handler_rx": 42}])
    with m:
        assert m.wait(deadline_s=30).verdict == "completed"
        time.sleep(0.2)
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert len(lines) >= 3
    for key in ("t", "free", "dirty", "writeback", "reclaimable", "wmark_min", "wmark_low", "wmark_high",
                "reserve", "alloc_fail", "nr_throttled_dirty", "nr_throttled_reclaim", "writeback_bytes",
                "PFMemallocDrop", "pgscan_direct_throttle", "kswapd_failures", "allocstall", "drops",
                "handler_rx", "bg_thresh", "thresh", "lockup"):
        assert key in lines[0], key
    assert [s["t"] for s in lines] == sorted(s["t"] for s in lines)
    assert lines[0]["reserve"] == {"eth0": 0} and lines[0]["reserve_pages"] == {"eth0": 53}
    assert lines[-1]["writeback_bytes"] == 8 << 20
    assert not m.netdev("eth0").registered                 # given back at stop
    with pytest.raises(MMError, match="no netdev 'eth9'"):
        m.netdev("eth9")


class StreamServer(threading.Thread):
    """A loopback TCP server sending ``nbytes`` of seeded random data to one client."""

    def __init__(self, nbytes: int, seed: int = 5, expect_request: bool = False):
        super().__init__(daemon=True)
        self.nbytes, self.seed, self.expect_request = nbytes, seed, expect_request
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(10)
        self.address = self.srv.getsockname()
        self.request = b""

    def run(self):
        conn, _ = self.srv.accept()
        with conn:
            if self.expect_request:
                self.request = conn.recv(100)
            rnd = random.Random(self.seed)
            left = self.nbytes
            while left:
                n = min(left, 50_000)
                conn.sendall(rnd.randbytes(n))
                left -= n
        self.srv.close()


def test_downloader_reads_a_socket_into_files_that_verify(disk):
    server = StreamServer(3_000_123, expect_request=True)
    server.start()
    seen = []

    def hook(sock, mm_sock, server_address):
        assert server_address == server.address
        seen.append((sock.getsockname()[1], mm_sock))
        with pytest.raises(OSError):
            sock.getpeername()                            # bound, not yet connected
        mm_sock.set_memalloc()

    cfg = MachineConfig(memory_mb=32, workloads=[WorkloadConfig(
        kind="downloader", total_mb=10, files=2, request="GET\n")])
    with Machine(cfg, disk, socket_hook=hook, download_servers=[server.address]) as m:
        out = m.wait(deadline_s=30)
        assert out.verdict == "completed", out
    server.join(5)
    dl = m.workloads[0]
    assert dl.eof and dl.bytes_received == dl.bytes_written == 3_000_123
    assert server.request == b"GET\n"
    assert seen and seen[0][0] != 0 and isinstance(seen[0][1], Sock)
    assert seen[0][1].closed and m.mm.memalloc_socks == 1     # __sk_free leaves the count
    result = m.verify()
    assert result.ok and result.bytes_checked == 3_000_123
    assert [f.size for f in dl.files] == [3_000_123]        # under the 5 MiB per file


def test_downloader_spreads_the_stream_over_its_files(disk):
    server = StreamServer(1_500_001, seed=9)
    server.start()
    cfg = MachineConfig(memory_mb=16, workloads=[WorkloadConfig(kind="downloader", total_mb=2, files=2,
                                                                chunk_kb=12)])
    with Machine(cfg, disk, download_servers=[server.address]) as m:
        assert m.wait(deadline_s=30).verdict == "completed"
    server.join(5)
    dl = m.workloads[0]
    assert [f.size for f in dl.files] == [1 << 20, 1_500_001 - (1 << 20)]
    result = m.verify()
    assert result.ok and result.bytes_checked == 1_500_001


def test_a_machine_on_a_given_memory_manager(disk):
    cfg = MachineConfig(memory_mb=16, policy="phillips-2005", workloads=[writer(total_mb=1)])
    mm = MemoryManager.from_config(cfg)
    dev = mm.register_netdev("eth0")               # as the packet handler does, before the machine
    with Machine(cfg, disk, mm=mm) as m:
        assert m.mm is mm and m.wait(deadline_s=30).verdict == "completed"
    assert dev.registered and mm.zone.wmark_min == 128 + 53
    with pytest.raises(MMError, match="does not match"):
        Machine(MachineConfig(memory_mb=32), disk, mm=mm)


def test_a_downloader_needs_a_server(disk):
    cfg = MachineConfig(workloads=[WorkloadConfig(kind="downloader")])
    with pytest.raises(MMError, match=r"workloads\[0\].*server"):
        Machine(cfg, disk)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"client\.policy: 'linux-2\.4' is not one of none, "):
        MachineConfig(policy="linux-2.4").validate()
    with pytest.raises(ConfigError, match=r"client\.memory_mb: expected int, got str 'lots'"):
        MachineConfig.from_dict({"memory_mb": "lots"})
    with pytest.raises(ConfigError, match=r"client\.swappiness: unknown key"):
        MachineConfig.from_dict({"swappiness": 60})
    with pytest.raises(ConfigError, match=r"client\.workloads\[1\]\.rate_mbps: -3\.0 is below the minimum 0$"):
        MachineConfig.from_dict({"workloads": [{"kind": "writer"}, {"kind": "writer", "rate_mbps": -3}]})
    with pytest.raises(ConfigError, match=r"client\.workloads\[0\]\.kind"):
        MachineConfig.from_dict({"workloads": [{"kind": "anon_hog"}]})
    with pytest.raises(ConfigError, match=r"client\.threshold: 1\.5 is above the maximum 1$"):
        MachineConfig(threshold=1.5).validate()
    with pytest.raises(ConfigError, match=r"client\.threshold: -0\.5 is below the minimum 0$"):
        MachineConfig(threshold=-0.5).validate()
    with pytest.raises(ConfigError, match=r"client\.writeback_batch_kb: must be a multiple of 4, got 6$"):
        MachineConfig(writeback_batch_kb=6).validate()
    with pytest.raises(ConfigError, match=r"client\.min_free_kbytes"):
        MachineConfig(memory_mb=4, min_free_kbytes=4096).validate()
    cfg = MachineConfig.from_dict({"memory_mb": 32, "policy": "none", "threshold": 1,
                                   "workloads": [{"kind": "mmap_writer", "total_mb": 1.5}]})
    assert cfg.total_pages == 8192 and cfg.workloads[0].total_bytes == 1536 << 10


def test_rate_limited_writer_keeps_its_rate(disk):
    cfg = MachineConfig(memory_mb=32, workloads=[writer(total_mb=4, rate_mbps=8)])
    with Machine(cfg, disk) as m:
        out = m.wait(deadline_s=30)
    assert out.verdict == "completed" and 0.45 < out.t < 1.5
