"""The storage client's emulated memory manager and writeback agent.

One zone of 4 KiB pages with the kernel's watermarks; gfp and task flags; a page
allocator with kswapd, direct reclaim and (per policy) ``throttle_direct_reclaim``;
a page cache over any block device with dirty accounting, ``balance_dirty_pages``
and a ``PF_MEMALLOC`` flusher; the five historical policies for network memory
(``testbed.mm.policy``); the skb/socket API the packet handler calls per frame;
workloads; a lockup detector; NDJSON metrics; and :class:`Machine`, which composes
them. See docs/architecture.md, "Memory manager", for the contract.
"""

from .config import MachineConfig, WorkloadConfig
from .errors import MachineStopped, MMError, NoSpace
from .gfp import GFP_ATOMIC, GFP_KERNEL, GFP_NOFS, GFP_NOIO, GFP_NOWAIT, Gfp

from .lockup import LockupEvidence
from ..integrity import VerifyResult
from .machine import Machine, Outcome
from .manager import MemoryManager
from .policy import POLICIES, Policy, make_policy
from .skbuff import DropReason, NetDev, Skb, estimate_skb_pages
from .sock import Sock
from .task import PF, current, task_flags
from .vmstat import Use
from .zone import PAGE_SIZE, Watermarks, calculate_min_free_kbytes, compute_watermarks

__all__ = [
    "MachineConfig", "WorkloadConfig", "MachineStopped", "MMError", "NoSpace",
    "GFP_ATOMIC", "GFP_KERNEL", "GFP_NOFS", "GFP_NOIO", "GFP_NOWAIT", "Gfp",
    "LockupEvidence", "Machine", "Outcome", "VerifyResult", "MemoryManager",
    "POLICIES", "Policy", "make_policy", "DropReason", "NetDev", "Skb", "estimate_skb_pages",
    "Sock", "PF", "current", "task_flags", "Use", "PAGE_SIZE", "Watermarks",
    "calculate_min_free_kbytes", "compute_watermarks",
]
