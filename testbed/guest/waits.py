"""The kernel client's wait-for cycle, read from the kernel's own evidence.

The emulated client's detector knows its model's state and names the cycle that holds
a lockup (testbed/mm/lockup.py). A real kernel names none; but at a lockup the guest's
agent records what the kernel shows (nodes/kernel_client/guest_agent.py, ``evidence``):
every task in uninterruptible sleep with its kernel stack, the iSCSI session's state,
free memory against the min watermark, and how long no sector reached the LUN, which
is at least the kernel's recovery horizon (the SCSI command timeout or the no-op pings,
then open-iscsi's replacement timeout; testbed/guest/node.py, ``kernel_horizon``).

The cycle of the article is three waits, and each is read from the stacks by the
kernel function a task sleeps in (the innermost frame that names a wait):

- **writeback waits for the storage connection**: pages dirty or under writeback and
  no sector written for the whole horizon, the session's state beside it;
- **the connection's work waits for memory**: free memory at or below min, and a task
  asleep in the allocator's slow path or a socket's memory wait
  (:data:`MEMORY_WAITS`);
- **memory waits for writeback**: a task asleep until pages are written back
  (:data:`WRITEBACK_WAITS`).

All three seen, past the horizon: the lockup is proven, with that cycle. A wait that
is missing is named, and the run stays ``degraded``: a kernel stuck that long without
one of them is stuck on something else (a dead target, say), which the summary says.
"""

from __future__ import annotations

from typing import Any, Optional

# where a task sleeps until pages are written back (Linux 6.1's names)
WRITEBACK_WAITS = {
    "balance_dirty_pages": "the dirty limits",
    "folio_wait_writeback": "a page under writeback",
    "wait_on_page_writeback": "a page under writeback",
    "__filemap_fdatawait_range": "writeback of a range (fsync)",
    "blk_mq_get_tag": "a free request, all held by writeback",
    "rq_qos_wait": "writeback throttling",
}
# where a task sleeps until memory is freed
MEMORY_WAITS = {
    "__alloc_pages_slowpath": "the page allocator's slow path",
    "throttle_direct_reclaim": "direct reclaim, throttled at the pfmemalloc reserve",
    "reclaim_throttle": "reclaim, throttled",
    "try_to_free_pages": "direct reclaim",
    "sk_stream_wait_memory": "socket memory",
    "mempool_alloc": "a memory pool",
}


def wait_of(task: dict[str, Any]) -> Optional[tuple[str, str]]:
    """("writeback" or "memory", function) of the innermost frame of ``task``'s kernel
    stack (or its wchan) that names one of the waits; None when none does."""
    for fn in list(task.get("stack") or []) + [task.get("wchan") or ""]:
        if fn in WRITEBACK_WAITS:
            return "writeback", fn
        if fn in MEMORY_WAITS:
            return "memory", fn
    return None


def _tasks_text(tasks: list[tuple[dict[str, Any], str]], table: dict[str, str]) -> str:
    return ", ".join(f"{t['comm']} ({t['pid']}) in {fn} ({table[fn]})" for t, fn in tasks[:4]) \
        + (f" and {len(tasks) - 4} more" if len(tasks) > 4 else "")


def kernel_cycle(lk: dict[str, Any]) -> tuple[Optional[dict[str, Any]], str]:
    """The wait-for cycle of the guest's lockup evidence ``lk``, or (None, why not)."""
    horizon = (lk.get("horizon") or {}).get("seconds")
    stalled = lk.get("stalled_for_s") or 0.0
    if not horizon or stalled < horizon:
        return None, ("the guest was stopped there, before the kernel's recovery horizon"
                      + (f" ({horizon:g}s)" if horizon else "") + " passed")
    if "tasks" not in lk:
        return None, "the guest recorded no blocked tasks"
    waits: dict[str, list[tuple[dict[str, Any], str]]] = {"writeback": [], "memory": []}
    for task in lk["tasks"]:
        got = wait_of(task)
        if got:
            waits[got[0]].append((task, got[1]))
    free, low = lk.get("free"), lk.get("wmark_min")
    missing = []
    if free is None or low is None or free > low:
        missing.append(f"free memory ({free} pages) is above the min watermark ({low})")
    if not waits["memory"]:
        missing.append("no task waits for memory")
    if not waits["writeback"]:
        missing.append("no task waits for writeback")
    if missing:
        return None, (f"stuck past the kernel's recovery horizon ({horizon:g}s), but the "
                      f"kernel shows no cycle: {'; '.join(missing)}")
    states = ", ".join(f"{k} {v}" for k, v in (lk.get("iscsi") or {}).items()) or "no session"
    text = [f"writeback waits for the storage connection: {lk.get('dirty')} dirty and "
            f"{lk.get('writeback')} under-writeback pages, no sector written to the LUN for "
            f"{stalled:.1f}s (iSCSI: {states})",
            f"the connection's work waits for memory: free {free} pages at or below min "
            f"{low}; {_tasks_text(waits['memory'], MEMORY_WAITS)}",
            f"memory waits for writeback: it is held by pages dirty or under writeback, "
            f"and {_tasks_text(waits['writeback'], WRITEBACK_WAITS)}"]
    return {"text": text, "source": "the kernel's stacks (/proc/PID/stack)"}, ""
