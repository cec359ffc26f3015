"""A minute of everything at once: no lost page, no negative counter, no emulator deadlock.

Writers, an mmap writer, the flusher and kswapd run in a Machine whose disk is
made slow and stalled in turns (so the emulated machine locks up and recovers);
beside them one thread hammers the page allocator with every gfp class, one
plays the packet handler (skbs for a memalloc and a bulk socket, sk_filter,
queue_rcv, kfree_skb) and one reads the sockets. Every 0.2 s the invariants are
checked: free + used == total, counters >= 0, the page cache agrees with the
counters. At the end stop() must return within its timeout.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from testbed.mm import (GFP_ATOMIC, GFP_KERNEL, GFP_NOIO, DropReason, Gfp, Machine,
                        MachineConfig, MachineStopped, Skb, Use, WorkloadConfig)
from testbed.blockdev.local import LocalDisk
from testbed.mm.skbuff import ETH_P_IP

DURATION_S = 60.0


class Hammer(threading.Thread):
    """Allocates and frees pages at random in every gfp class."""

    GFPS = (GFP_ATOMIC, GFP_KERNEL, GFP_NOIO | Gfp.NORETRY, Gfp.MEMALLOC, GFP_KERNEL | Gfp.NORETRY)

    def __init__(self, mm, stop):
        super().__init__(daemon=True, name="hammer")
        self.mm, self.stop = mm, stop
        self.held: list[int] = []
        self.ops = 0
        self.error = None

    def run(self):
        rnd = random.Random(1)
        try:
            while not self.stop.is_set():
                if self.held and (len(self.held) > 200 or rnd.random() < 0.45):
                    self.mm.free_pages(self.held.pop(rnd.randrange(len(self.held))), Use.KERNEL)
                else:
                    n = rnd.choice((1, 1, 2, 4, 8))
                    if self.mm.alloc_pages(n, rnd.choice(self.GFPS), Use.KERNEL):
                        self.held.append(n)
                self.ops += 1
                if self.ops % 64 == 0:
                    time.sleep(0.001)
        except MachineStopped:
            pass
        except Exception as exc:
            self.error = exc


class Packets(threading.Thread):
    """The packet handler's per-frame calls, for a memalloc and a bulk socket."""

    def __init__(self, mm, dev, socks, stop):
        super().__init__(daemon=True, name="packets")
        self.mm, self.dev, self.socks, self.stop = mm, dev, socks, stop
        self.frames = 0
        self.error = None

    def run(self):
        rnd = random.Random(2)
        try:
            while not self.stop.is_set():
                for _ in range(50):
                    sk = rnd.choice(self.socks)
                    r = self.mm.netdev_alloc_skb(self.dev, 1514)
                    self.frames += 1
                    if not isinstance(r, Skb):
                        assert isinstance(r, DropReason)
                        continue
                    if rnd.random() < 0.05:
                        tx = self.mm.alloc_tx_skb(self.dev, 1514, sk)
                        if isinstance(tx, Skb):
                            self.mm.kfree_skb(tx)
                    if self.mm.sk_filter(r, sk, ETH_P_IP) is not None:
                        self.mm.kfree_skb(r)
                    else:
                        sk.queue_rcv(r, 1448)
                time.sleep(0.002)
        except Exception as exc:
            self.error = exc


class Reader(threading.Thread):
    def __init__(self, socks, stop):
        super().__init__(daemon=True, name="reader")
        self.socks, self.stop = socks, stop

    def run(self):
        while not self.stop.is_set():
            for sk in self.socks:
                sk.consume(64 * 1448)
            time.sleep(0.003)


class DiskMood(threading.Thread):
    """Fast, slow, stalled, fast again, in a loop."""

    def __init__(self, disk, stop):
        super().__init__(daemon=True, name="disk-mood")
        self.disk, self.stop = disk, stop

    def run(self):
        while not self.stop.wait(2.0):
            self.disk.set_latency(0.3)
            if self.stop.wait(1.5):
                break
            self.disk.set_latency(0.0)
            self.disk.stall()
            self.stop.wait(3.0)
            self.disk.resume()
        self.disk.set_latency(0.0)
        self.disk.resume()


@pytest.fixture
def big_disk(tmp_path):
    """A 2 GiB sparse disk: a minute at about 14 MiB/s fits."""
    dev = LocalDisk(os.path.join(tmp_path, "big.img"), 2 << 30)
    yield dev
    dev.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_minute_of_everything_at_once(big_disk):
    disk = big_disk
    # dirty_ratio 100: since 2.6.19 the mmap writer is throttled too, so only a limit of
    # all dirtyable memory lets the dirt fill the machine (and lock it up) under 3.6
    cfg = MachineConfig(memory_mb=16, policy="gorman-3.6", lockup_after_s=2.0, dirty_ratio=100, workloads=[
        WorkloadConfig(kind="writer", total_mb=100_000, files=3, rate_mbps=6, seed=1),
        WorkloadConfig(kind="writer", total_mb=100_000, rate_mbps=3, seed=2),
        WorkloadConfig(kind="mmap_writer", total_mb=100_000, rate_mbps=5, seed=3, chunk_kb=256)])
    m = Machine(cfg, disk, netdevs=[("eth0", 1500)])
    mm = m.mm
    stop = threading.Event()
    iscsi, bulk = mm.sock_create("iscsi"), mm.sock_create("bulk")
    iscsi.set_memalloc()
    # The packets go through a jumbo NIC: its buffers are too big for a page fragment, so
    # 3.6 allocates them with __alloc_skb(SKB_ALLOC_RX) and marks those from the reserves
    # pfmemalloc (a 1500-byte e1000 buffer is a fragment, which 3.6 never marks).
    jumbo = mm.register_netdev("eth1", 9000, rx_ring=16)
    helpers = [Hammer(mm, stop), Packets(mm, jumbo, [iscsi, bulk], stop),
               Reader([iscsi, bulk], stop), DiskMood(disk, stop)]
    checks = 0
    m.start()
    for h in helpers:
        h.start()
    try:
        end = time.monotonic() + DURATION_S
        while time.monotonic() < end:
            time.sleep(0.2)
            assert mm.lock.acquire(timeout=5), "the mm lock is stuck: emulator deadlock"
            mm.lock.release()
            problems = mm.check_invariants()
            assert problems == [], problems
            checks += 1
            for h in helpers:
                assert getattr(h, "error", None) is None, h.error
            assert all(w.error is None for w in m.workloads)
    finally:
        t = time.monotonic()
        stopped = m.stop(timeout=5.0)
        stop_took = time.monotonic() - t
        stop.set()
        for h in helpers:
            h.join(5)
    assert stopped and stop_took < 5.0
    assert not any(h.is_alive() for h in helpers)
    # the emulated machine did work and met trouble on the way
    assert checks > 200
    assert mm.vm.nr_written > 50_000 and helpers[0].ops > 10_000 and helpers[1].frames > 10_000
    assert mm.vm.allocstall > 0 and mm.vm.pgsteal_kswapd > 0
    assert m.lockup.longest_stall_s >= 2.0
    assert any(e.recovered_at is not None for e in m.lockup.episodes)   # locked up, came back
    assert mm.vm.PFMemallocDrop > 0 and mm.vm.pgscan_direct_throttle > 0
    # give everything back: nothing is lost
    for n in helpers[0].held:
        mm.free_pages(n, Use.KERNEL)
    iscsi.close()
    bulk.close()
    mm.unregister_netdev(jumbo)
    assert mm.used[Use.KERNEL] == 0 and mm.used[Use.SKB] == 0 and mm.used[Use.PDU] == 0
    assert mm.check_invariants() == []
    assert mm.zone.free + mm.used[Use.FILE] == mm.zone.managed_pages
