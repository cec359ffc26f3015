"""Each policy gets its own kernel's mechanisms (testbed.mm.era), and no more.

One block per mechanism, each against the behaviour its citation names: transmit and
PDU memory, writeback that reclaim starts, dirty limits, mmap dirtying, the OOM
killer, kswapd_failures; then the profiles, their citations and docs/kernels.md.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import socket
import struct
import threading
import time

import pytest

from testbed.mm import GFP_KERNEL, GFP_NOIO, PF, DropReason, Gfp, MemoryManager, Skb, Use, current, task_flags
from testbed.mm import kernels_doc
from testbed.mm.config import MachineConfig, WorkloadConfig
from testbed.mm.era import (CITATIONS, LINUX_2_6_13, LINUX_3_6, PENDING, EraProfile,
                            markdown_table, policy_profiles)
from testbed.mm.flusher import Flusher
from testbed.mm.machine import Machine
from testbed.mm.oom_kill import OomKiller, badness, oom_badness
from testbed.mm.page_writeback import DirtyThrottle, get_dirty_limits, ratelimit_pages_2_6_13
from testbed.mm.pagecache import PTE_DIRTY, PageCache
from testbed.mm.policy import POLICIES, Gorman36
from testbed.mm.errors import MachineStopped
from testbed.mm.task import TaskKilled, TaskStruct
from testbed.mm.vmscan import DEF_PRIORITY, Kswapd, may_pageout, try_to_free_pages
from testbed.mm.workload import Downloader

from .conftest import set_free
from .test_flusher import Recorder
from .test_throttle import wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
OLD = ("none", "reserve-only", "phillips-2005", "phillips-2005-threshold")


def block_sock(mm: MemoryManager):
    """The storage client's iSCSI socket: GFP_NOIO (nbd's sock_xmit), marked memalloc."""
    sk = mm.sock_create("iscsi")
    sk.sk_allocation = GFP_NOIO
    sk.set_memalloc()
    return sk


def page_cache(mm: MemoryManager, device, **flusher_kw):
    throttle = DirtyThrottle(mm)
    pc = PageCache(mm, device, throttle)
    flusher = Flusher(mm, pc, throttle, **flusher_kw)
    return pc, throttle, flusher


# ------------------------------------------------------------ 1. transmit and PDU memory
@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_pdu_in_flusher_context_stops_at_min_in_2005_and_not_in_3_6(policy):
    """2.6.13: pdflush has no PF_MEMALLOC and no socket may transmit from the reserves;
    3.6: sk_set_memalloc() puts __GFP_MEMALLOC in the socket's sk_allocation."""
    mm = MemoryManager(16384, policy=policy)
    sk = block_sock(mm)
    set_free(mm, mm.zone.wmark_min)
    with task_flags(PF.KTHREAD):                    # the flusher's flags, in every era
        got = mm.pdu_alloc(48, sk)
    assert got is (policy == "gorman-3.6")
    if not got:
        assert mm.vm.alloc_fail["noio"] == 1 and mm.used[Use.PDU] == 0


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_pdu_in_reclaim_context_may_use_the_reserves_in_every_era(policy):
    mm = MemoryManager(16384, policy=policy)
    sk = block_sock(mm)
    set_free(mm, 10)
    with task_flags(PF.MEMALLOC):                   # pageout() from kswapd or direct reclaim
        assert mm.pdu_alloc(8192 + 48, sk)
    assert mm.used[Use.PDU] == 3
    with task_flags(PF.MEMALLOC):
        assert not mm.pdu_alloc(65536, sk)          # the zone itself is empty
    mm.pdu_free(8192 + 48)
    assert mm.used[Use.PDU] == 0 and mm.check_invariants() == []


@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_flusher_has_no_pf_memalloc(policy, disk):
    """pdflush (PF_FLUSHER) and the bdi flusher (PF_SWAPWRITE): neither PF_MEMALLOC."""
    mm = MemoryManager(16384, policy=policy)
    sk = block_sock(mm)
    results = []

    def pdu_for_request():
        results.append(mm.pdu_alloc(48, sk))

    rec = Recorder(disk, on_submit=pdu_for_request)
    pc, _, flusher = page_cache(mm, rec, writeback_interval_s=0.05, expire_s=0)
    pc.write(pc.create("f"), 0, bytes(64 << 10))
    set_free(mm, mm.zone.wmark_min - 1)             # under min: only the reserves are left
    flusher.start()
    try:
        wait_for(lambda: results)
        assert not any(f & PF.MEMALLOC for f in rec.flags)
        assert results[0] is (policy == "gorman-3.6")
    finally:
        mm.shutdown()
        flusher.join(5)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_transmit_from_the_reserves_only_for_the_era_or_a_pf_memalloc_sender(policy):
    mm = MemoryManager(16384, policy=policy)
    dev = mm.register_netdev("eth0", 1500)
    iscsi, bulk = block_sock(mm), mm.sock_create("bulk")
    set_free(mm, mm.zone.mark_atomic)               # GFP_ATOMIC cannot have a page
    assert mm.alloc_tx_skb(dev, 1514, bulk) is DropReason.NOMEM
    tx = mm.alloc_tx_skb(dev, 1514, iscsi)
    assert isinstance(tx, Skb) is (policy == "gorman-3.6")
    if isinstance(tx, Skb):
        mm.kfree_skb(tx)
    mm.memalloc_tx_credit(4096)                     # an ordinary sender: no credit
    assert iscsi.memalloc_tx_bytes == 0 and bulk.memalloc_tx_bytes == 0
    with task_flags(PF.MEMALLOC):                   # reclaim's pageout sends 4 KiB
        mm.memalloc_tx_credit(4096)
    assert iscsi.memalloc_tx_bytes == 4096 and bulk.memalloc_tx_bytes == 0
    sent = [mm.alloc_tx_skb(dev, 1514, iscsi) for _ in range(3)]   # 3 x 1448 bytes of payload
    assert all(isinstance(s, Skb) for s in sent)
    assert iscsi.memalloc_tx_bytes == (4096 if policy == "gorman-3.6" else 0)  # 3.6: not needed
    for s in sent:
        mm.kfree_skb(s)
    assert isinstance(mm.alloc_tx_skb(dev, 1514, iscsi), Skb) is (policy == "gorman-3.6")
    assert mm.alloc_tx_skb(dev, 1514, bulk) is DropReason.NOMEM
    with pytest.raises(Exception, match="length"):
        mm.alloc_tx_skb(dev, -5, iscsi)


# ---------------------------------------------------------- 2. writeback reclaim starts
def test_may_pageout_follows_the_era():
    old = MemoryManager(16384, policy="none")
    new = MemoryManager(16384, policy="gorman-3.6")

    class Queue:                                    # the page cache, as may_write_to_queue sees it
        busy = False

        def congested(self):
            return self.busy

    for mm in (old, new):
        mm.shrinker = Queue()
    direct, kswapd = TaskStruct("dd"), TaskStruct("kswapd0")
    kswapd.flags |= PF.KSWAPD | PF.MEMALLOC
    for prio in range(DEF_PRIORITY, -1, -1):
        # 2.6.13: shrink_list -> pageout() for kswapd and direct reclaim, if __GFP_FS
        assert may_pageout(old, direct, GFP_KERNEL, prio) and may_pageout(old, kswapd, GFP_KERNEL, prio)
        assert not may_pageout(old, direct, GFP_NOIO, prio)
        # 3.6: never from direct reclaim; kswapd only below DEF_PRIORITY - 2
        assert not may_pageout(new, direct, GFP_KERNEL, prio)
        assert may_pageout(new, kswapd, GFP_KERNEL, prio) is (prio < DEF_PRIORITY - 2)
    old.shrinker.busy = True                        # may_write_to_queue(): a congested queue
    assert not may_pageout(old, direct, GFP_KERNEL, 5) and may_pageout(old, kswapd, GFP_KERNEL, 5)
    direct.backing_dev_info = old.shrinker          # ... unless it is the one it writes to
    assert may_pageout(old, direct, GFP_KERNEL, 5)


def dirty_machine(policy, device, pages=2000):
    """Memory full of dirty pages, no clean one: reclaim can only write."""
    mm = MemoryManager(16384, policy=policy)
    pc, throttle, flusher = page_cache(mm, device)
    pc.write(pc.create("f"), 0, bytes(pages * 4096), throttle=False)
    set_free(mm, mm.zone.wmark_min - 1)
    return mm, pc, flusher


@pytest.mark.parametrize("policy, writes", [("none", True), ("gorman-3.6", False)])
def test_direct_reclaim_writes_back_under_pf_memalloc_only_in_2005(policy, writes, disk):
    seen = []

    def pdu():                                      # what the block device allocates meanwhile
        seen.append((current().comm, bool(current().flags & PF.MEMALLOC), mm.pdu_alloc(48)))

    rec = Recorder(disk, on_submit=pdu)
    disk.set_latency(0.2)
    mm, pc, _ = dirty_machine(policy, rec)
    mm.oom = None                                   # reclaim only, here
    task = current()
    reclaimed, progress = try_to_free_pages(mm, 1, GFP_KERNEL, task)
    assert not task.flags & PF.MEMALLOC            # restored after reclaim
    if writes:
        assert seen and all(memalloc and ok for _, memalloc, ok in seen)   # reserves: granted
        assert all(comm == task.comm for comm, _, _ in seen)              # in its own context
        assert mm.vm.nr_vmscan_write >= 32
        # the sweep naps HZ/10 between passes: its own writeback completes (0.2 s) and the
        # next passes reclaim those pages, SWAP_CLUSTER_MAX of them: progress
        assert reclaimed >= 32 and progress
    else:
        assert not seen and mm.vm.nr_vmscan_write == 0
    disk.set_latency(0.0)


@pytest.mark.parametrize("policy", ["none", "gorman-3.6"])
def test_kswapd_writes_back_itself_with_pf_memalloc(policy, disk):
    """2.6.13 kswapd calls pageout() from the first pass; 3.6 once its priority fell."""
    rec = Recorder(disk)
    mm, pc, _ = dirty_machine(policy, rec)
    kswapd = Kswapd(mm, retry_wait_s=0.01)
    kswapd.start()
    try:
        with mm.lock:
            mm.wakeup_kswapd_locked()
        wait_for(lambda: rec.flags)
        assert all(f & PF.KSWAPD and f & PF.MEMALLOC for f in rec.flags)
        assert mm.vm.nr_vmscan_write > 0
    finally:
        mm.shutdown()
        kswapd.join(5)


def test_reclaimed_writeback_rotates_to_the_cold_end(disk):
    mm, pc, _ = dirty_machine("none", disk, pages=64)
    with mm.lock:
        pages = pc.isolate_dirty_locked(8)
    pc.pageout(pages)
    wait_for(lambda: mm.vm.nr_writeback == 0)
    with mm.lock:
        assert set(list(pc.lru)[:8]) == set(pages)  # rotate_reclaimable_page(): reclaimed first
        assert not any(p.flags for p in pages)


# ------------------------------------------------------------------ 3. dirty limits
def test_get_dirty_limits_2_6_13_cuts_the_ratio_when_much_is_mapped():
    lim = get_dirty_limits(10000, 0, 10, 40)
    assert (lim.bg_thresh, lim.thresh) == (1000, 4000)
    lim = get_dirty_limits(10000, 7000, 10, 40)     # unmapped 30%: dirty_ratio 15
    assert (lim.bg_thresh, lim.thresh) == (1000, 1500)
    lim = get_dirty_limits(10000, 9500, 10, 40)     # unmapped 5%: 2, raised to 5; bg 10 >= 5: 2
    assert (lim.bg_thresh, lim.thresh) == (200, 500)
    assert ratelimit_pages_2_6_13(8000) == 250 and ratelimit_pages_2_6_13(100) == 16


def test_2005_limits_use_total_pages_at_boot_and_the_mapped_pages(disk):
    mm = MemoryManager(16384, policy="phillips-2005")
    pc, throttle, _ = page_cache(mm, disk)
    boot_high = mm.zone.wmark_high
    mm.register_netdev("eth0", 1500)                # the reserve raises the watermarks later
    assert mm.zone.wmark_high > boot_high
    lim = throttle.limits()
    assert lim.dirtyable == throttle.total_pages == 16384 - boot_high
    assert lim.thresh == throttle.total_pages * 20 // 100
    inode = pc.create("m")
    pc.store_mapped(inode, 0, bytes(12000 * 4096))  # ~73% of memory mapped
    unmapped = 100 - pc.nr_mapped * 100 // throttle.total_pages
    assert throttle.limits().thresh == throttle.total_pages * max(5, min(20, unmapped // 2)) // 100
    new = MemoryManager(16384, policy="gorman-3.6")
    assert DirtyThrottle(new).limits().dirtyable == 16384 - new.zone.wmark_high   # 3.2's


class WriterThread(threading.Thread):
    def __init__(self, pc, nbytes):
        super().__init__(name="dd", daemon=True)
        self.pc, self.nbytes, self.written, self.error = pc, nbytes, 0, None

    def run(self):
        inode = self.pc.create("w")
        try:
            while self.written < self.nbytes:
                self.pc.write(inode, self.written, bytes(65536))
                self.written += 65536
        except Exception as exc:
            self.error = exc


@pytest.mark.parametrize("policy", ["none", "gorman-3.6"])
def test_the_2005_writer_writes_back_itself_then_waits(policy, disk):
    """2.6.13 balance_dirty_pages: writeback_inodes() in the writer's context, then
    blk_congestion_wait once there is nothing left to write; 3.2 on, the writer only
    pauses (the flusher writes)."""
    disk.stall()                                    # nothing completes: the wait must come
    submitters = set()
    rec = Recorder(disk, on_submit=lambda: submitters.add(threading.current_thread().name))
    mm = MemoryManager(16384, policy=policy)
    pc, throttle, flusher = page_cache(mm, rec, inflight=4096)     # not started; a deep queue
    writer = WriterThread(pc, 24 << 20)             # over the hard limit of either era
    writer.start()
    try:
        wait_for(lambda: mm.vm.dirty_throttle_pauses > 0, timeout=10)
        assert mm.vm.nr_throttled_dirty == 1 and writer.is_alive()
        if policy == "none":
            assert submitters == {"dd"} and throttle.dirty_exceeded
            assert mm.vm.nr_writeback >= throttle.limits().thresh - throttle.ratelimit_pages
        else:
            assert not submitters and mm.vm.nr_writeback == 0
    finally:
        mm.shutdown()
        disk.resume()
        writer.join(5)


# ------------------------------------------------------------------ 4. mmap dirtying
def test_2005_mmap_dirt_is_invisible_until_reclaim_or_munmap(disk):
    mm = MemoryManager(16384, policy="none")
    pc, throttle, _ = page_cache(mm, disk)
    inode = pc.create("m")
    pc.store_mapped(inode, 0, bytes(40 << 20))       # far over every limit
    assert mm.vm.nr_dirty == 0 and mm.vm.dirty_throttle_pauses == 0
    assert len(pc.pte_dirty) == 10240 and pc.nr_mapped == 10240 and pc.nr_reclaimable == 0
    assert all(p.flags == PTE_DIRTY for p in inode.pages.values())
    with mm.lock:
        scanned, reclaimed = pc.shrink_locked(32)    # reclaim unmaps: the dirt moves to the page
    assert (scanned, reclaimed) == (32, 0) and mm.vm.nr_dirty == 32
    pc.munmap(inode)                                # exit: zap_pte_range
    assert mm.vm.nr_dirty == 10240 and not pc.pte_dirty and pc.nr_mapped == 0
    assert pc.check_locked() == []


def test_3_6_mmap_dirt_is_counted_and_throttled(disk):
    mm = MemoryManager(16384, policy="gorman-3.6")
    pc, throttle, flusher = page_cache(mm, disk)
    disk.stall()
    done = threading.Event()

    def mmap_writer():
        try:
            pc.store_mapped(pc.create("m"), 0, bytes(40 << 20))
        except Exception:
            pass
        done.set()

    threading.Thread(target=mmap_writer, daemon=True).start()
    try:
        wait_for(lambda: mm.vm.nr_throttled_dirty == 1)
        assert mm.vm.nr_dirty <= throttle.limits().thresh + 64 and not pc.pte_dirty
        assert not done.is_set()
    finally:
        disk.resume()
        mm.shutdown()
        done.wait(5)


# ------------------------------------------------------------------ 5. the OOM killer
class Proc:
    """A process for select_bad_process()."""

    def __init__(self, name, total_vm, rss, kind="writer"):
        self.name, self.kind, self.vm, self.rss = name, kind, total_vm, rss
        self.killed = False
        self.alive = True

    def oom_alive(self):
        return self.alive

    def oom_dying(self):
        return self.killed and self.alive

    def total_vm_pages(self):
        return self.vm

    def rss_pages(self):
        return self.rss

    def oom_kill(self):
        self.killed = True
        return 7


def test_the_victim_is_the_eras():
    """2.6.13 badness(): total_vm; 3.6 oom_badness(): rss + page tables."""
    procs = [Proc("mapper", 10240, 100), Proc("reader", 500, 400), Proc("twin", 500, 400)]
    picks = {}
    for policy in ("none", "gorman-3.6"):
        oom = OomKiller(MemoryManager(16384, policy=policy))
        for p in procs:
            oom.register(p)
        picks[policy] = oom.select_bad_process()
    assert picks["none"] == (procs[0], badness(10240), False)
    assert picks["gorman-3.6"] == (procs[1], oom_badness(400, 500), False)   # ties: the oldest
    assert oom_badness(400, 500) == 401 and badness(10240) == 10240


def test_no_second_kill_while_the_victim_is_dying():
    mm = MemoryManager(16384, policy="none")
    procs = [Proc("a", 100, 1), Proc("b", 50, 1)]
    for p in procs:
        mm.oom.register(p)
    task = TaskStruct("allocator")
    kill = mm.oom.out_of_memory(GFP_KERNEL, task)
    assert kill.victim == "a" and kill.pages_freed == 7 and kill.heuristic == "badness"
    assert mm.oom.out_of_memory(GFP_KERNEL, task) is None       # select_bad_process: -1
    procs[0].alive = False                                      # it exited
    assert mm.oom.out_of_memory(GFP_KERNEL, task).victim == "b"
    assert mm.vm.oom_kill == 2


def alloc_until_stopped(mm):
    try:
        mm.alloc_pages(1, GFP_KERNEL)
    except MachineStopped:
        pass


def oom_setup(policy):
    mm = MemoryManager(16384, policy=policy)
    victim = Proc("hog", 1000, 1000)
    mm.oom.register(victim)
    set_free(mm, mm.zone.wmark_min - 1)             # nothing to reclaim, nothing free
    return mm, victim


def test_2005_oom_fires_when_reclaim_makes_no_progress():
    """A __GFP_FS request that may retry, and try_to_free_pages freed nothing."""
    mm, victim = oom_setup("none")
    t = threading.Thread(target=alloc_until_stopped, args=(mm,), daemon=True)
    t.start()
    wait_for(lambda: victim.killed)
    assert mm.oom.kills[0].victim == "hog" and mm.oom.kills[0].trigger == t.name
    mm.shutdown()
    t.join(5)


@pytest.mark.parametrize("gfp", [GFP_NOIO, GFP_KERNEL | Gfp.NORETRY])
def test_no_oom_without_fs_or_with_noretry(gfp):
    mm, victim = oom_setup("none")
    assert not mm.alloc_pages(1, gfp | Gfp.NORETRY)
    assert not victim.killed and mm.vm.oom_kill == 0


def test_3_6_oom_waits_for_all_unreclaimable():
    """3.6 do_try_to_free_pages reports progress unless every zone is all_unreclaimable
    (kswapd sets it; any page freed clears it)."""
    mm, victim = oom_setup("gorman-3.6")
    mm.policy.throttle_direct_reclaim = lambda gfp, task: None     # not the throttle's test
    t = threading.Thread(target=alloc_until_stopped, args=(mm,), daemon=True)
    t.start()
    time.sleep(0.3)
    assert not victim.killed                        # "progress": the zone is reclaimable
    with mm.lock:
        mm.all_unreclaimable = True
    wait_for(lambda: victim.killed)
    mm.free_pages(1, Use.KERNEL)
    assert not mm.all_unreclaimable
    mm.shutdown()
    t.join(5)


def test_oom_kill_false_turns_it_off():
    assert MemoryManager(16384, policy="none", oom_kill=False).oom is None
    with pytest.raises(Exception, match="no OOM killer"):
        class Off(Gorman36):
            era = dataclasses.replace(LINUX_3_6, oom_killer="off")
        MemoryManager(16384, policy=Off(), oom_kill=True)


def test_killing_a_downloader_frees_its_socket_queue(disk):
    mm = MemoryManager(16384, policy="none")
    pc, _, _ = page_cache(mm, disk)
    dev = mm.register_netdev("eth0", 1500)
    dl = Downloader(0, WorkloadConfig(kind="downloader"), mm, pc, ("127.0.0.1", 9))
    dl.task = TaskStruct("downloader0")
    dl.mm_sock = mm.sock_create("downloader0")
    for _ in range(20):                             # received, unread: its reader is blocked
        dl.mm_sock.queue_rcv(mm.alloc_tx_skb(dev, 1514, None), 1448)
    free = mm.zone.free
    held = mm.used[Use.SKB]
    freed = dl.oom_kill()
    assert freed == mm.zone.free - free >= 20 and mm.used[Use.SKB] == held - freed
    assert dl.mm_sock.closed and dl.task.oom_killed
    assert mm.check_invariants() == []


def reset_downloader(mm, disk) -> tuple[Downloader, threading.Thread, socket.socket]:
    """A downloader whose server resets the connection once the request is in (a zero
    linger close sends RST), as a peer does to a socket the OOM killer shut down: the
    downloader is past its connect, and its recv finds the reset."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)

    def reset() -> None:
        conn, _ = srv.accept()
        conn.settimeout(10)
        conn.recv(1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    pc, _, _ = page_cache(mm, disk)
    dl = Downloader(0, WorkloadConfig(kind="downloader", total_mb=1, request="GET\n"), mm, pc,
                    srv.getsockname())
    t = threading.Thread(target=reset)
    t.start()
    return dl, t, srv


@pytest.mark.parametrize("killed", [False, True])
def test_a_reset_under_a_killed_downloader_is_the_kill_not_a_failure(disk, killed):
    """The OOM killer shuts a downloader's socket down under its waiting recv; the reset
    that can follow is the kill's (TaskKilled, counted as a kill), where it once ended the
    run as "downloader failed: Connection reset by peer". Alive, a reset stays a failure."""
    mm = MemoryManager(16384, policy="none")
    dl, t, srv = reset_downloader(mm, disk)
    task = current()
    task.oom_killed = killed
    try:
        with pytest.raises(TaskKilled if killed else ConnectionResetError):
            dl.body()
    finally:
        task.oom_killed = False
        t.join(10)
        srv.close()


def test_a_killed_task_gives_up_its_waits():
    mm = MemoryManager(16384, policy="none")
    task = current()
    task.oom_killed = True
    try:
        with pytest.raises(TaskKilled):
            mm.check_stopping()
    finally:
        task.oom_killed = False


def mmap_config(policy):
    return MachineConfig(memory_mb=16, policy=policy, lockup_after_s=30.0, workloads=[
        WorkloadConfig(kind="mmap_writer", total_mb=32, seed=2),
        WorkloadConfig(kind="writer", total_mb=4, seed=1)])


def test_a_2005_machine_on_a_stalled_disk_oom_kills_the_mmap_writer(disk):
    """Memory full of mmap dirt that cannot be written: 2.6.13 kills the largest
    total_vm, and the kill is in the outcome and in the metrics."""
    disk.stall()
    with Machine(mmap_config("none"), disk) as m:
        wait_for(lambda: m.mm.vm.oom_kill >= 1, timeout=30)
        wait_for(lambda: m.workloads[0].killed, timeout=10)
        out = m.wait(deadline_s=0.1)
        kill = out.oom_kills[0]
        assert kill.victim == "mmap_writer0" and kill.heuristic == "badness"
        assert kill.points == badness(m.workloads[0].total_vm_pages())
        assert out.to_dict()["oom_kills"][0]["victim"] == "mmap_writer0"
        assert m.metrics.sample()["oom_kills"][0]["victim"] == "mmap_writer0"
        assert m.mm.vm.nr_dirty > 0 and not m.page_cache.pte_dirty     # its exit showed its dirt
    disk.resume()


def test_oom_kill_off_keeps_the_2005_machine_waiting(disk):
    disk.stall()
    with Machine(mmap_config("none"), disk, oom_kill=False) as m:
        out = m.wait(deadline_s=4.0)
        assert out.verdict == "deadline" and out.oom_kills == [] and m.mm.oom is None
    disk.resume()


# ------------------------------------------------------------- 6. kswapd_failures
@pytest.mark.parametrize("policy", ["none", "gorman-3.6"])
def test_no_kswapd_failures_before_4_11(policy):
    mm = MemoryManager(16384, policy=policy)
    set_free(mm, 10)
    kswapd = Kswapd(mm, retry_wait_s=0.001)
    kswapd.start()
    try:
        for _ in range(3):
            with mm.lock:
                mm.wakeup_kswapd_locked()
            time.sleep(0.1)
        assert mm.vm.kswapd_failures == 0 and kswapd.is_alive()
        mm.vm.kswapd_failures = 16                  # no such counter: nothing reads it
        with mm.lock:
            assert not mm.hopeless_locked() and not mm.allow_direct_reclaim_locked()
    finally:
        mm.shutdown()
        kswapd.join(5)


def test_kswapd_failures_count_per_balance_pgdat_run_where_the_era_has_them():
    class Later(Gorman36):
        era = dataclasses.replace(LINUX_3_6, kernel="4.11", kswapd_failures=True)

    mm = MemoryManager(16384, policy=Later())
    set_free(mm, 10)
    kswapd = Kswapd(mm, retry_wait_s=0.001)
    runs = []
    real = kswapd._run
    kswapd._run = lambda: (runs.append(1), real())[1]
    kswapd.balance_pgdat()                          # returns: the node is hopeless
    assert mm.vm.kswapd_failures == 16 and len(runs) == 16
    with mm.lock:
        assert mm.hopeless_locked() and mm.allow_direct_reclaim_locked()


# ------------------------------------------------------- profiles, sources, the docs
def test_each_policy_names_its_kernel():
    assert {name: cls.era for name, cls in POLICIES.items()} == {
        **dict.fromkeys(OLD, LINUX_2_6_13), "gorman-3.6": LINUX_3_6}
    assert MemoryManager(4096, policy="reserve-only").era is LINUX_2_6_13


def test_every_switch_has_its_kernels_source():
    for profile in (LINUX_2_6_13, LINUX_3_6):
        for switch in profile.switches():
            if switch in PENDING:
                continue
            cite = CITATIONS[switch][profile.kernel]
            assert cite.kernel == profile.kernel and cite.file and cite.function and cite.note


def test_mechanisms_read_the_era_never_a_policy_name():
    for path in (ROOT / "testbed" / "mm").glob("*.py"):
        src = path.read_text()
        assert not re.search(r"policy\.name\s*(==|\bin\b)", src), path
        assert not re.search(r"""==\s*["'](none|reserve-only|phillips-2005[-a-z]*|gorman-3\.6)["']""",
                             src), path


def test_docs_kernels_md_is_the_era_table():
    table = kernels_doc.documented((ROOT / "docs" / "kernels.md").read_text())
    assert table == markdown_table(policy_profiles()), \
        "docs/kernels.md disagrees with testbed/mm/era.py: python -m testbed.mm.kernels_doc"
    for profile in (LINUX_2_6_13, LINUX_3_6):
        for switch, cites in CITATIONS.items():
            if profile.kernel in cites:
                assert cites[profile.kernel].file in table


def test_profiles_are_frozen_records():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LINUX_2_6_13.oom_killer = "off"             # type: ignore[misc]
    assert isinstance(LINUX_3_6, EraProfile)
