"""The OOM killer: ``out_of_memory()``, ``select_bad_process()`` and the era's badness.

The allocator calls :meth:`OomKiller.out_of_memory` when direct reclaim made no
progress for a ``__GFP_FS`` request that may retry (``__alloc_pages`` in 2.6.13,
``__alloc_pages_may_oom`` in 3.6; what counts as progress is the era's
``try_to_free_pages``). It picks the user process with the most points and kills
it:

* 2.6.13 ``badness()``: the process's ``total_vm`` (its whole address space,
  resident or not). Its divisors are 1 here: ``int_sqrt(cpu_time)`` with CPU time
  in units of 8 s is below 2 for less than 32 s of CPU, ``int_sqrt(int_sqrt(run_time))``
  with run time in units of 1024 s is 0 for younger processes; no workload is niced,
  root, ``CAP_SYS_RAWIO`` or has an ``oomkilladj``; none has children.
* 3.6 ``oom_badness()``: resident pages + page-table pages + swap entries (no
  swap here); no root bonus, ``oom_score_adj`` 0.

Ties go to the oldest process (the task list is walked from ``init``). While a
victim is still exiting (``TIF_MEMDIE``) nobody else is killed
(``select_bad_process`` returns -1), and the caller sleeps a jiffy
(``schedule_timeout(1)``) to let it die.

The processes are the machine's workloads (:meth:`OomKiller.register`). Each
says how much memory it has (:class:`Victim`): the program itself (text,
libraries, stack) is the same for every workload and is left out - it cannot change
the ranking - so what counts is its buffers and, for an mmap writer, its mapping.
Killing one sets its task's ``oom_killed`` (every wait of the memory manager then
raises :class:`~testbed.mm.task.TaskKilled` in it), frees what the process held in
the emulated memory (a downloader's socket receive queue) and wakes it from
blocking I/O. Each kill is an :class:`OomKill` in :attr:`OomKiller.kills` and counts
in ``oom_kill`` (/proc/vmstat).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol

from .gfp import Gfp
from .task import TaskStruct

if TYPE_CHECKING:
    from .manager import MemoryManager

PTRS_PER_PTE = 512          # pages one page-table page maps (x86-64)
OOM_NAP_S = 0.004           # schedule_timeout(1) at HZ=250 (2.6.13's new default, and 3.6's)


class Victim(Protocol):
    """A user process the OOM killer may choose."""

    name: str
    kind: str

    def oom_alive(self) -> bool:
        """Running, not yet exited."""

    def oom_dying(self) -> bool:
        """Killed and still exiting (``TIF_MEMDIE``)."""

    def total_vm_pages(self) -> int:
        """Its address space, in pages (``mm->total_vm``)."""

    def rss_pages(self) -> int:
        """Its resident pages (``get_mm_rss``)."""

    def oom_kill(self) -> int:
        """SIGKILL: stop it, free what it holds; the pages freed."""

    def oom_freeable_pages(self) -> int:
        """What :meth:`oom_kill` would free now, in pages (the lockup detector asks)."""


@dataclass
class OomKill:
    """One kill: whom, why, and what it gave back."""

    t: float                    # seconds since the machine started
    victim: str
    kind: str
    points: int
    heuristic: str              # badness (2.6.13) | oom_badness (3.6)
    pages_freed: int
    trigger: str                # the task whose allocation failed
    gfp: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def badness(total_vm: int) -> int:
    """2.6.13 ``badness()``: the address space's size (see the module docstring)."""
    return total_vm


def oom_badness(rss: int, total_vm: int, swapents: int = 0) -> int:
    """3.6 ``oom_badness()``: rss + page tables + swap entries, never 0 for a candidate."""
    nr_ptes = -(-total_vm // PTRS_PER_PTE)
    return max(rss + nr_ptes + swapents, 1)


class OomKiller:
    """The machine's OOM killer; the era (``mm.era.oom_killer``) picks the heuristic."""

    def __init__(self, mm: "MemoryManager") -> None:
        self.mm = mm
        self.tasks: list[Victim] = []
        self.kills: list[OomKill] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()       # one OOM kill at a time (try_set_zonelist_oom)

    def register(self, victim: Victim) -> None:
        """A user process, in creation order."""
        self.tasks.append(victim)

    @property
    def heuristic(self) -> str:
        return "badness" if self.mm.era.oom_killer == "2.6.13" else "oom_badness"

    def points(self, victim: Victim) -> int:
        if self.mm.era.oom_killer == "2.6.13":
            return badness(victim.total_vm_pages())
        return oom_badness(victim.rss_pages(), victim.total_vm_pages())

    def select_bad_process(self) -> tuple[Optional[Victim], int, bool]:
        """(victim, points, abort): abort while an earlier victim is still exiting."""
        chosen: Optional[Victim] = None
        chosen_points = 0
        for victim in self.tasks:
            if not victim.oom_alive():
                continue
            if victim.oom_dying():
                return None, 0, True
            points = self.points(victim)
            if chosen is None or points > chosen_points:
                chosen, chosen_points = victim, points
        return chosen, chosen_points, False

    def out_of_memory(self, gfp: Gfp, task: TaskStruct) -> Optional[OomKill]:
        """Kill the worst process (unless one is dying already); the kill, if any."""
        kill = None
        with self._lock:
            if not task.oom_killed:         # a dying caller just goes on dying
                victim, points, abort = self.select_bad_process()
                if victim is not None and not abort:
                    kill = self._kill(victim, points, gfp, task)
        self.mm.wait_stopping(OOM_NAP_S)    # give the victim a chance to exit
        return kill

    def _kill(self, victim: Victim, points: int, gfp: Gfp, task: TaskStruct) -> OomKill:
        freed = victim.oom_kill()
        kill = OomKill(t=round(time.monotonic() - self.started, 3), victim=victim.name,
                       kind=victim.kind, points=points, heuristic=self.heuristic,
                       pages_freed=freed, trigger=task.comm, gfp=repr(gfp))
        mm = self.mm
        with mm.lock:
            mm.vm.oom_kill += 1
            self.kills.append(kill)
        return kill

    def snapshot(self) -> list[dict[str, Any]]:
        """Every kill so far, as dicts (metrics, outcome)."""
        with self.mm.lock:
            return [k.to_dict() for k in self.kills]
