#!/usr/bin/env python3
"""Benchmark of the emulated memory manager: prints figures, asserts nothing.

Every figure is measured at each machine size of ``--pages`` (default 8k, 64k and 128k
pages: 32, 256 and 512 MiB), to show how the cost per page and per skb grows with the
machine (issue 17: the memory manager counts pages, so it should not):

1. ``alloc_pages(1, GFP_KERNEL)`` + ``free_pages(1)`` pairs (fast path), us per pair.
2. The memory manager's share of an skb's life, per policy, in microseconds per
   frame and as a percentage of one core at 83,000 frames a second (1 Gbit/s of
   1500-byte frames): (a) ``netdev_alloc_skb`` + ``sk_filter`` + ``kfree_skb``
   (a dropped frame, or one no socket keeps); (b) ``netdev_alloc_skb`` +
   ``sk_filter`` + ``queue_rcv``, with the reader's ``consume`` after each 64 KiB
   ``recv`` (a delivered frame, the common case); (c) as (b) but one ``consume``
   per frame (a reader that reads every segment on its own: the worst case).
   The target is under 10 % of a core, about 1.2 us per frame.
3. Page-cache writes in memory, us per page dirtied (half the machine written, no
   writeback), and a whole Machine writing twice its memory to a LocalDisk (dirty
   limits, the flusher, reclaim): us per page written back and MiB/s.

Each figure is the best of several repeats. ``--quick`` (for a smoke test) takes fewer
frames and repeats. With the defaults it took 32 s on the project's 2-core machine.

    .venv/bin/python bench/bench_mm.py [--pages 8192,65536,131072] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from testbed.blockdev.local import LocalDisk  # noqa: E402
from testbed.mm import (GFP_KERNEL, POLICIES, Machine, MachineConfig,  # noqa: E402
                        MemoryManager, WorkloadConfig)
from testbed.mm.page_writeback import DirtyThrottle  # noqa: E402
from testbed.mm.pagecache import PageCache  # noqa: E402
from testbed.mm.pattern import pattern_bytes  # noqa: E402
from testbed.mm.skbuff import ETH_P_IP  # noqa: E402

FRAMES_PER_S = 83_000
DEFAULT_PAGES = (8192, 65536, 131072)


class Settings:
    """How much each figure measures: the defaults, or ``--quick``'s fraction."""

    def __init__(self, quick: bool) -> None:
        self.repeats = 2 if quick else 5
        self.pairs = 20_000 if quick else 200_000
        self.frames = 4_500 if quick else 45_000
        self.quick = quick


def best(fn, n: int, repeats: int) -> float:
    """Best time per iteration (seconds) of ``fn(n)`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t) / n)
    return min(times)


def mib(pages: int) -> int:
    return pages * 4096 >> 20


def bench_pages(sizes: list[int], cfg: Settings) -> None:
    print("alloc_pages+free_pages (1 page, GFP_KERNEL fast path), us per pair:")
    for pages in sizes:
        mm = MemoryManager(pages, policy="none")
        alloc, free = mm.alloc_pages, mm.free_pages

        def run(n: int) -> None:
            for _ in range(n):
                alloc(1, GFP_KERNEL)
                free(1)

        per = best(run, cfg.pairs, cfg.repeats)
        print(f"  {pages:>7,} pages ({mib(pages):>3} MiB): {per * 1e6:.2f} us ({1 / per:,.0f} pairs/s)")


def bench_skb(sizes: list[int], cfg: Settings) -> None:
    print(f"skb life in mm per frame (1514-byte frames; % of one core at {FRAMES_PER_S:,} frames/s):")
    for pages in sizes:
        for name in POLICIES:
            a, b, c = skb_figures(pages, name, cfg)
            print(f"  {pages:>7,} pages {name:24s} (a) drop {a * 1e6:4.2f} us "
                  f"{a * FRAMES_PER_S * 100:4.1f} %  (b) 64 KiB reads {b * 1e6:4.2f} us "
                  f"{b * FRAMES_PER_S * 100:4.1f} %  (c) per-frame reads {c * 1e6:4.2f} us "
                  f"{c * FRAMES_PER_S * 100:4.1f} %")


def skb_figures(pages: int, name: str, cfg: Settings) -> tuple[float, float, float]:
    """(a), (b), (c) of one policy on a machine of ``pages``, seconds per frame."""
    mm = MemoryManager(pages, policy=name)
    dev = mm.register_netdev("eth0", 1500)
    sk = mm.sock_create("bench")
    sk.set_memalloc()
    alloc, filt, kfree = mm.netdev_alloc_skb, mm.sk_filter, mm.kfree_skb
    queue, consume = sk.queue_rcv, sk.consume

    def dropped(n: int) -> None:
        for _ in range(n):
            skb = alloc(dev, 1514)
            filt(skb, sk, ETH_P_IP)
            kfree(skb)

    def read64k(n: int) -> None:
        batch = 45                      # 45 x 1448 bytes ~ one 64 KiB recv()
        for _ in range(n // batch):
            for _ in range(batch):
                skb = alloc(dev, 1514)
                filt(skb, sk, ETH_P_IP)
                queue(skb, 1448)
            consume(1448 * batch)

    def read1(n: int) -> None:
        for _ in range(n):
            skb = alloc(dev, 1514)
            filt(skb, sk, ETH_P_IP)
            queue(skb, 1448)
            consume(1448)

    got = tuple(best(fn, cfg.frames, cfg.repeats) for fn in (dropped, read64k, read1))
    assert not mm.check_invariants(), mm.check_invariants()
    return got


def bench_page_cache(sizes: list[int], cfg: Settings) -> None:
    data = pattern_bytes(1, 1, 0, 64 << 10)
    print("page cache, us per page: (i) written in memory (64 KiB writes, half the machine, "
          "no writeback); (ii) a Machine writing twice its memory to a LocalDisk, per page "
          "written back")
    with tempfile.TemporaryDirectory() as tmp:
        for pages in sizes:
            half = (pages // 2) * 4096 if not cfg.quick else min(pages // 2, 2048) * 4096
            disk = LocalDisk(os.path.join(tmp, f"disk-{pages}"), 2 * pages * 4096 + (64 << 20))
            try:
                per_page = []
                for _ in range(min(cfg.repeats, 3)):
                    mm = MemoryManager(pages, policy="none")
                    pc = PageCache(mm, disk, DirtyThrottle(mm, dirty_ratio=100))
                    inode = pc.create("bench")
                    t = time.perf_counter()
                    for off in range(0, half, len(data)):
                        pc.write(inode, off, data, throttle=False)
                    per_page.append((time.perf_counter() - t) / (half // 4096))
                through = machine_through(pages, disk, cfg)
            finally:
                disk.close()
            print(f"  {pages:>7,} pages ({mib(pages):>3} MiB): (i) {min(per_page) * 1e6:.2f} us "
                  f"({4096 / min(per_page) / 2**20:,.0f} MiB/s)  (ii) {through}")


def machine_through(pages: int, disk: LocalDisk, cfg: Settings) -> str:
    """A Machine of ``pages`` writing twice its memory through to ``disk``: its figures."""
    total_mb = 2 * mib(pages) if not cfg.quick else 16
    mc = MachineConfig(memory_mb=mib(pages),
                       workloads=[WorkloadConfig(kind="writer", total_mb=total_mb, files=2)])
    with Machine(mc, disk) as m:
        out = m.wait(600)
    if out.verdict != "completed" or not out.bytes_written_back:
        return f"{total_mb} MiB: {out.verdict} after {out.t:.1f} s ({out.detail})"
    per = out.t / (out.bytes_written_back // 4096)
    return (f"{per * 1e6:.2f} us per page written back: {total_mb} MiB in {out.t:.2f} s = "
            f"{out.bytes_written_back / 2**20 / out.t:,.0f} MiB/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--pages", default=",".join(map(str, DEFAULT_PAGES)),
                    help="machine sizes in 4 KiB pages, comma-separated (each at least 1024)")
    ap.add_argument("--quick", action="store_true", help="fewer frames and repeats (a smoke test)")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.pages.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--pages {args.pages!r}: expected page counts, e.g. 8192,65536")
    if not sizes or min(sizes) < 1024:
        ap.error(f"--pages {args.pages!r}: give page counts of at least 1024 (4 MiB)")
    cfg = Settings(args.quick)
    print("== bench_mm: emulated memory manager, by machine size")
    bench_pages(sizes, cfg)
    bench_skb(sizes, cfg)
    bench_page_cache(sizes, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
