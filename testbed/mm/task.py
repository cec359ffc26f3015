"""``current``: the task an allocation runs on behalf of.

The kernel decides much by looking at the calling task: ``PF_MEMALLOC`` lets
it use the reserves (kswapd, the flusher, direct reclaim), ``PF_MEMALLOC_NOIO``
strips ``__GFP_IO|__GFP_FS`` from its requests, ``PF_KTHREAD`` exempts it from
``throttle_direct_reclaim``. Here every Python thread has one
:class:`TaskStruct`, created on first use, reached through :func:`current` -
a thread-local, as ``current`` is a per-CPU pointer in the kernel.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from enum import IntFlag
from typing import Iterator

from .gfp import Gfp


class PF(IntFlag):
    """Task flags: ``PF.MEMALLOC`` is ``PF_MEMALLOC`` and so on (include/linux/sched.h)."""

    MEMALLOC = 0x800            # PF_MEMALLOC: allocations may ignore the watermarks
    KSWAPD = 0x20000            # PF_KSWAPD: this is kswapd
    MEMALLOC_NOIO = 0x80000     # PF_MEMALLOC_NOIO: every request behaves as GFP_NOIO
    KTHREAD = 0x200000          # PF_KTHREAD: a kernel thread (not throttled in reclaim)


class TaskStruct:
    """The part of ``struct task_struct`` the memory manager looks at."""

    __slots__ = ("comm", "flags", "nr_dirtied")

    def __init__(self, comm: str) -> None:
        self.comm = comm
        self.flags = PF(0)
        self.nr_dirtied = 0     # pages dirtied since the last balance_dirty_pages()

    def __repr__(self) -> str:
        return f"<task {self.comm} flags={self.flags!r}>"


_tls = threading.local()


def current() -> TaskStruct:
    """The calling thread's task, created on first use with no flags."""
    task = getattr(_tls, "task", None)
    if task is None:
        task = _tls.task = TaskStruct(threading.current_thread().name)
    return task


@contextmanager
def task_flags(flags: PF) -> Iterator[TaskStruct]:
    """Set ``flags`` on the current task for the block, then restore the old ones.

    ``with task_flags(PF.MEMALLOC):`` is ``memalloc_noreclaim_save()`` /
    ``memalloc_noreclaim_restore()``.
    """
    task = current()
    saved = task.flags
    task.flags = saved | flags
    try:
        yield task
    finally:
        task.flags = saved


def current_gfp_context(gfp: Gfp, task: TaskStruct) -> Gfp:
    """Apply the task's scoped constraints to a request (``PF_MEMALLOC_NOIO``)."""
    if task.flags & PF.MEMALLOC_NOIO:
        return gfp & ~(Gfp.IO | Gfp.FS)
    return gfp
