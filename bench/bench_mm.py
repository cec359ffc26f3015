#!/usr/bin/env python3
"""Benchmark of the emulated memory manager: prints figures, asserts nothing.

1. ``alloc_pages(1, GFP_KERNEL)`` + ``free_pages(1)`` pairs per second (fast path).
2. The memory manager's share of an skb's life, per policy, in microseconds per
   frame and as a percentage of one core at 83,000 frames a second (1 Gbit/s of
   1500-byte frames): (a) ``netdev_alloc_skb`` + ``sk_filter`` + ``kfree_skb``
   (a dropped frame, or one no socket keeps); (b) ``netdev_alloc_skb`` +
   ``sk_filter`` + ``queue_rcv``, with the reader's ``consume`` after each 64 KiB
   ``recv`` (a delivered frame, the common case); (c) as (b) but one ``consume``
   per frame (a reader that reads every segment on its own: the worst case).
   The target is under 10 % of a core, about 1.2 us per frame.
3. Page-cache write throughput in memory (pages dirtied, no writeback), and a
   whole Machine writing 128 MiB through 64 MiB of memory to a LocalDisk.

Each figure is the best of several repeats, measured side by side in one run.
"""

from __future__ import annotations

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
REPEATS = 9


def best(fn, n: int) -> float:
    """Best time per iteration (seconds) of ``fn(n)`` over REPEATS runs."""
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - t) / n)
    return min(times)


def bench_pages() -> None:
    mm = MemoryManager(65536, policy="none")
    alloc, free = mm.alloc_pages, mm.free_pages

    def run(n: int) -> None:
        for _ in range(n):
            alloc(1, GFP_KERNEL)
            free(1)

    per = best(run, 200_000)
    print(f"alloc_pages+free_pages (1 page, GFP_KERNEL fast path): {1 / per:,.0f} pairs/s "
          f"({per * 1e6:.2f} us/pair)")


def bench_skb() -> None:
    print(f"skb life in mm per frame (1514-byte frames; % of one core at {FRAMES_PER_S:,} frames/s):")
    for name in POLICIES:
        mm = MemoryManager(65536, policy=name)
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

        a = best(dropped, 45_000)
        b = best(read64k, 45_000)
        c = best(read1, 45_000)
        assert not mm.check_invariants(), mm.check_invariants()
        print(f"  {name:24s} (a) drop {a * 1e6:4.2f} us {a * FRAMES_PER_S * 100:4.1f} %  "
              f"(b) 64 KiB reads {b * 1e6:4.2f} us {b * FRAMES_PER_S * 100:4.1f} %  "
              f"(c) per-frame reads {c * 1e6:4.2f} us {c * FRAMES_PER_S * 100:4.1f} %")


def bench_page_cache() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mib = 64
        disk = LocalDisk(os.path.join(tmp, "disk"), 256 << 20)
        try:
            data = pattern_bytes(1, 1, 0, 64 << 10)
            rates = []
            for rep in range(3):
                mm = MemoryManager(256 * 256, policy="none")      # 256 MiB: no reclaim
                pc = PageCache(mm, disk, DirtyThrottle(mm, dirty_ratio=100))
                inode = pc.create("bench")
                t = time.perf_counter()
                for off in range(0, mib << 20, len(data)):
                    pc.write(inode, off, data, throttle=False)
                rates.append(mib / (time.perf_counter() - t))
            print(f"page-cache write in memory (64 KiB writes, pages dirtied, no writeback): "
                  f"{max(rates):,.0f} MiB/s")
        finally:
            disk.close()
        disk = LocalDisk(os.path.join(tmp, "disk2"), 256 << 20)
        try:
            cfg = MachineConfig(memory_mb=64, workloads=[WorkloadConfig(kind="writer", total_mb=128, files=2)])
            with Machine(cfg, disk) as m:
                out = m.wait(120)
            print(f"Machine: 128 MiB through 64 MiB of memory to a LocalDisk: {out.verdict} in {out.t:.2f} s "
                  f"= {128 / out.t:,.0f} MiB/s written back")
        finally:
            disk.close()


def main() -> int:
    print("== bench_mm: emulated memory manager")
    bench_pages()
    bench_skb()
    bench_page_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
