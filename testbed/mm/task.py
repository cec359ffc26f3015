"""``current``: the task an allocation runs on behalf of.

The kernel decides much by looking at the calling task: ``PF_MEMALLOC`` lets
it use the reserves (kswapd, the flusher, direct reclaim), ``PF_MEMALLOC_NOIO``
strips ``__GFP_IO|__GFP_FS`` from its requests, ``PF_KTHREAD`` exempts it from
``throttle_direct_reclaim``. Here every Python thread has one
:class:`TaskStruct`, created on first use, reached through :func:`current` -
a thread-local, as ``current`` is a per-CPU pointer in the kernel.

A task the OOM killer chose has ``oom_killed`` set (``TIF_MEMDIE`` with a
``SIGKILL`` pending, ``fatal_signal_pending()``): every wait in the memory
manager then raises :class:`TaskKilled` in that task, so it unwinds and exits.
``backing_dev_info`` is set while a task is inside ``write()`` to the page
cache (``current->backing_dev_info``, which 2.6.13's ``may_write_to_queue()``
reads).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from enum import IntFlag
from typing import Iterator

from .errors import MachineStopped
from .gfp import Gfp


class PF(IntFlag):
    """Task flags: ``PF.MEMALLOC`` is ``PF_MEMALLOC`` and so on (include/linux/sched.h)."""

    MEMALLOC = 0x800            # PF_MEMALLOC: allocations may ignore the watermarks
    KSWAPD = 0x20000            # PF_KSWAPD: this is kswapd
    MEMALLOC_NOIO = 0x80000     # PF_MEMALLOC_NOIO: every request behaves as GFP_NOIO
    KTHREAD = 0x200000          # PF_KTHREAD: a kernel thread (not throttled in reclaim)


class TaskKilled(MachineStopped):
    """The current task was killed (by the OOM killer): it gives up its wait and exits."""


class TaskStruct:
    """The part of ``struct task_struct`` the memory manager looks at."""

    __slots__ = ("comm", "flags", "nr_dirtied", "oom_killed", "backing_dev_info", "may_oom")

    def __init__(self, comm: str) -> None:
        self.comm = comm
        self.flags = PF(0)
        self.nr_dirtied = 0     # pages dirtied since the last balance_dirty_pages()
        self.oom_killed = False         # TIF_MEMDIE + SIGKILL: fatal_signal_pending()
        self.backing_dev_info: object = None    # the device written to, inside write()
        # in the allocator's slow path with a request that calls out_of_memory() when
        # reclaim makes no progress (__GFP_FS, no __GFP_NORETRY): the lockup detector asks
        self.may_oom = False

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
