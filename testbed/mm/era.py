"""Era profiles: which kernel mechanisms each policy's kernel had, each with its source.

A policy names a kernel (``none``, ``reserve-only`` and both ``phillips-2005`` policies
are 2.6.12/2.6.13 of 2005; ``gorman-3.6`` is Linux 3.6). Its :class:`EraProfile`
switches the memory manager's mechanisms on or off, so that each policy gets its own
kernel's mechanisms and no more. The mechanisms themselves live once, in the memory
manager (``page_alloc``, ``vmscan``, ``flusher``, ``page_writeback``, ``pagecache``,
``skbuff``, ``sock``, ``oom_kill``); they read the profile (``mm.era``), they never
test a policy's name.

Every switch carries a :class:`Citation` per kernel (:data:`CITATIONS`): version, file
and function, so that a reader can hold the code next to the kernel source.
``docs/kernels.md`` shows the same table for people (:func:`markdown_table` writes it;
``python -m testbed.mm.kernels_doc`` puts it there); ``tests/mm/test_era.py`` keeps the
two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Mapping


@dataclass(frozen=True)
class Citation:
    """Where a behaviour is in the kernel: ``2.6.13 mm/pdflush.c __pdflush``."""

    kernel: str
    file: str
    function: str
    note: str = ""

    def __str__(self) -> str:
        return f"{self.kernel} {self.file} {self.function}"


ReclaimPageout = Literal["kswapd+direct", "kswapd", "off"]
TryToFreePages = Literal["2.6.13", "3.6"]
DirtyThrottle = Literal["2.6.13", "3.2"]
OomKiller = Literal["2.6.13", "3.6", "off"]
Truesize = Literal["page", "frag"]
TcpMem = Literal["2.6.13", "3.6"]
MemallocMark = Literal["created", "connected"]


@dataclass(frozen=True)
class EraProfile:
    """The mechanisms of one kernel, as named switches (see each field's citation)."""

    kernel: str
    # the socket mark: does sk_set_memalloc() give the socket's transmit allocations
    # (skbs, PDU buffers) access below the watermarks (__GFP_MEMALLOC in sk_allocation)?
    sk_memalloc_tx: bool
    # PF_MEMALLOC on the flusher thread (pdflush / the bdi flusher)
    flusher_pf_memalloc: bool
    # writeback started by reclaim (pageout() from kswapd / direct reclaim), under PF_MEMALLOC
    reclaim_pageout: ReclaimPageout
    # try_to_free_pages(): what counts as progress (and so when out_of_memory() may run)
    try_to_free_pages: TryToFreePages
    # zone->all_unreclaimable once pages_scanned reaches this many times the LRU pages
    all_unreclaimable_ratio: int
    # balance_dirty_pages(): 2.6.13's get_dirty_limits + writer writes back itself and
    # blk_congestion_wait, or 3.2's IO-less pauses
    dirty_throttle: DirtyThrottle
    # shared-mmap dirtying counted and throttled at once (2.6.19 on), else only seen
    # by reclaim or msync
    mmap_dirty_throttled: bool
    # out_of_memory(): when it fires and whom it picks
    oom_killer: OomKiller
    # kswapd_failures counted per balance_pgdat() run (4.11 on)
    kswapd_failures: bool
    # --- receive ring, skb truesize, Phillips' counter (part b) ---------------------
    # skb truesize: a page per 1500-byte frame (2005), page fragments (later)
    skb_truesize: Truesize
    # posted receive buffers per NIC ring: e1000's RxDescriptors default
    rx_ring: int = 256
    # build_skb() marks an skb whose head is a fragment of a pfmemalloc page (4.0 on):
    # with False, only __alloc_skb's kmalloc_reserve() and paged fragments mark skbs
    rx_frag_pfmemalloc: bool = False
    # --- socket memory: TCP's global limit (net.ipv4.tcp_mem) ----------------------------
    # how tcp_init() sizes tcp_mem from the machine's memory (sock.tcp_mem_limits)
    tcp_mem: TcpMem = "2.6.13"
    # sk_rmem_schedule() lets a pfmemalloc skb past the limit (3.6 on)
    rmem_pfmemalloc_exempt: bool = False
    # tcp_win_from_space(): the share of truesize TCP counts as window; tcp_collapse()
    # copies a refused socket's queue from the first skb it calls bloated (Sock.collapse_locked)
    tcp_adv_win_scale: int = 2
    # --- the storage socket's mark ---------------------------------------------------
    # when the block driver makes its socket SOCK_MEMALLOC: as the I/O task creates it,
    # before its SYN ("created"), or once user space has connected it and handed it to
    # the driver ("connected": the handshake runs on a plain socket). No era clears the
    # mark when the socket is released (Sock.close).
    sk_memalloc_mark: MemallocMark = "created"

    def switches(self) -> dict[str, object]:
        """The switches by name (for the docs table and the summary)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kernel"}


LINUX_2_6_13 = EraProfile(
    kernel="2.6.13", sk_memalloc_tx=False, flusher_pf_memalloc=False,
    reclaim_pageout="kswapd+direct", try_to_free_pages="2.6.13", all_unreclaimable_ratio=4,
    dirty_throttle="2.6.13", mmap_dirty_throttled=False, oom_killer="2.6.13",
    kswapd_failures=False, skb_truesize="page", tcp_mem="2.6.13", rmem_pfmemalloc_exempt=False)

LINUX_3_6 = EraProfile(
    kernel="3.6", sk_memalloc_tx=True, flusher_pf_memalloc=False,
    reclaim_pageout="kswapd", try_to_free_pages="3.6", all_unreclaimable_ratio=6,
    dirty_throttle="3.2", mmap_dirty_throttled=True, oom_killer="3.6",
    kswapd_failures=False, skb_truesize="frag", tcp_mem="3.6", rmem_pfmemalloc_exempt=True,
    tcp_adv_win_scale=1, sk_memalloc_mark="connected")

PROFILES: dict[str, EraProfile] = {p.kernel: p for p in (LINUX_2_6_13, LINUX_3_6)}


def _c(kernel: str, file: str, function: str, note: str) -> Citation:
    return Citation(kernel, file, function, note)


# CITATIONS[switch][kernel]: where the kernel does what the switch says.
CITATIONS: dict[str, dict[str, Citation]] = {
    "sk_memalloc_tx": {
        "2.6.13": _c("2.6.13", "drivers/block/nbd.c", "sock_xmit",
                     "sk_allocation = GFP_NOIO: no socket may transmit from the reserves; a "
                     "sender gets them only through its own PF_MEMALLOC (Phillips' 2005 "
                     "SOCK_MEMALLOC is a receive-side mark)"),
        "3.6": _c("3.6", "net/core/sock.c", "sk_set_memalloc",
                  "sk->sk_allocation |= __GFP_MEMALLOC (7cb0240492ca)"),
    },
    "flusher_pf_memalloc": {
        "2.6.13": _c("2.6.13", "mm/pdflush.c", "__pdflush",
                     "current->flags |= PF_FLUSHER: pdflush allocates with the watermarks"),
        "3.6": _c("3.6", "fs/fs-writeback.c", "bdi_writeback_thread",
                  "current->flags |= PF_SWAPWRITE: no PF_MEMALLOC"),
    },
    "reclaim_pageout": {
        "2.6.13": _c("2.6.13", "mm/vmscan.c", "shrink_list",
                     "kswapd (PF_MEMALLOC|PF_KSWAPD) and direct reclaim (__alloc_pages sets "
                     "PF_MEMALLOC around try_to_free_pages) call pageout() on dirty pages when "
                     "__GFP_FS; may_write_to_queue(): kswapd always, others only to an "
                     "uncongested queue or their own (current->backing_dev_info)"),
        "3.6": _c("3.6", "mm/vmscan.c", "shrink_page_list",
                  "file pages: direct reclaim never (ee72886d8ed5, 3.2), kswapd only at "
                  "priority < DEF_PRIORITY - 2; the others are marked PageReclaim"),
    },
    "try_to_free_pages": {
        "2.6.13": _c("2.6.13", "mm/vmscan.c", "try_to_free_pages",
                     "priorities DEF_PRIORITY..0, blk_congestion_wait(WRITE, HZ/10) below "
                     "DEF_PRIORITY - 2; progress only if SWAP_CLUSTER_MAX pages were reclaimed"),
        "3.6": _c("3.6", "mm/vmscan.c", "do_try_to_free_pages",
                  "progress if any page was reclaimed, or unless every zone is "
                  "all_unreclaimable"),
    },
    "all_unreclaimable_ratio": {
        "2.6.13": _c("2.6.13", "mm/vmscan.c", "balance_pgdat",
                     "pages_scanned >= (nr_active + nr_inactive) * 4; any page freed "
                     "(free_pages_bulk) clears it"),
        "3.6": _c("3.6", "mm/vmscan.c", "zone_reclaimable",
                  "pages_scanned < zone_reclaimable_pages() * 6; any page freed "
                  "(free_pcppages_bulk) clears it"),
    },
    "dirty_throttle": {
        "2.6.13": _c("2.6.13", "mm/page-writeback.c", "balance_dirty_pages",
                     "get_dirty_limits(): ratios of total_pages, dirty_ratio cut to half the "
                     "unmapped ratio (at least 5); over the limit the writer runs "
                     "writeback_inodes() itself, then blk_congestion_wait(WRITE, HZ/10)"),
        "3.6": _c("3.6", "mm/page-writeback.c", "balance_dirty_pages",
                  "IO-less throttling of 3.2 (143dfe8611a6): pauses from pos_ratio and the "
                  "write bandwidth, limits of dirtyable memory"),
    },
    "mmap_dirty_throttled": {
        "2.6.13": _c("2.6.13", "mm/rmap.c", "try_to_unmap_one",
                     "a store through a shared mapping only sets the pte dirty bit (do_no_page, "
                     "do_wp_page); the page becomes PG_dirty when reclaim unmaps it, or msync or "
                     "munmap moves the bit: no accounting, no balance_dirty_pages"),
        "3.6": _c("3.6", "mm/memory.c", "do_wp_page",
                  "set_page_dirty_balance(): dirtied at the write fault and throttled "
                  "(since 2.6.19, d08b3851da41)"),
    },
    "oom_killer": {
        "2.6.13": _c("2.6.13", "mm/oom_kill.c", "out_of_memory",
                     "called by __alloc_pages when try_to_free_pages made no progress for a "
                     "__GFP_FS request; select_bad_process() by badness(): total_vm"),
        "3.6": _c("3.6", "mm/oom_kill.c", "out_of_memory",
                  "called by __alloc_pages_may_oom when there was no progress; "
                  "select_bad_process() by oom_badness(): rss + nr_ptes + swap entries"),
    },
    "kswapd_failures": {
        "2.6.13": _c("2.6.13", "mm/vmscan.c", "balance_pgdat",
                     "no failure counter: kswapd loops (loop_again) until the zone is balanced"),
        "3.6": _c("3.6", "mm/vmscan.c", "balance_pgdat",
                  "no failure counter (pgdat->kswapd_failures came with 4.11, c73322d098e4)"),
    },
}

# Switches whose citations come with their implementation (part b).
PENDING: frozenset[str] = frozenset({"skb_truesize"})

# Rows of the docs table that part b fills (receive ring, truesize, Phillips' counter,
# threshold); shown as placeholders until their switches exist.
PLACEHOLDER_ROWS: tuple[str, ...] = (
    "receive ring (part b)", "Phillips' rx_reserve counter (part b)",
    "Phillips' threshold (part b)")


def citation(switch: str, kernel: str) -> Citation:
    """The source of ``switch`` in ``kernel`` (KeyError if there is none)."""
    return CITATIONS[switch][kernel]


def markdown_table(policies: Mapping[str, EraProfile]) -> str:
    """docs/kernels.md's table: a row per switch, a column per policy, a source per cell."""
    names = list(policies)
    lines = ["| mechanism | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    switches = list(next(iter(policies.values())).switches())
    for switch in switches:
        cells = []
        for name in names:
            profile = policies[name]
            value = profile.switches()[switch]
            cite = CITATIONS.get(switch, {}).get(profile.kernel)
            source = f"{cite.kernel} `{cite.file}` `{cite.function}`" if cite else "pending (part b)"
            cells.append(f"`{value}`: {source}")
        lines.append(f"| `{switch}` | " + " | ".join(cells) + " |")
    for row in PLACEHOLDER_ROWS:
        lines.append(f"| {row} | " + " | ".join("pending" for _ in names) + " |")
    return "\n".join(lines) + "\n"


def policy_profiles() -> dict[str, EraProfile]:
    """Each policy's profile, by policy name (imported late: policies import this module)."""
    from .policy import POLICIES
    return {name: cls.era for name, cls in POLICIES.items()}


# --- receive ring, skb truesize (part b) ----------------------------------------------
CITATIONS.update({
    "skb_truesize": {
        "2.6.13": _c("2.6.13", "drivers/net/e1000/e1000_main.c", "e1000_alloc_rx_buffers",
                     "dev_alloc_skb(rx_buffer_len 2048 + NET_IP_ALIGN) -> alloc_skb(+16): "
                     "kmalloc(SKB_DATA_ALIGN(2066) + skb_shared_info) is a size-4096 block, a "
                     "page per buffer; truesize = SKB_DATA_ALIGN(size) + sizeof(struct sk_buff) "
                     "(net/core/skbuff.c alloc_skb)"),
        "3.6": _c("3.6", "net/core/skbuff.c", "__netdev_alloc_skb",
                  "e1000 7.3.21 posts rx_buffer_len 1522 (MAXIMUM_ETHERNET_VLAN_SIZE); "
                  "fragsz = SKB_DATA_ALIGN(len + NET_SKB_PAD) + SKB_DATA_ALIGN(shinfo) carved "
                  "by __netdev_alloc_frag from a per-CPU page (two per page); build_skb takes "
                  "the head with GFP_ATOMIC and sets truesize = SKB_TRUESIZE(size)"),
    },
    "rx_ring": {
        "2.6.13": _c("2.6.13", "drivers/net/e1000/e1000_param.c", "e1000_check_options",
                     "RxDescriptors: default 256, 80..4096 (82544+), a multiple of 8; "
                     "e1000_alloc_rx_buffers refills every empty slot after each clean_rx_irq "
                     "and stops at the first failed dev_alloc_skb (\"Better luck next round\")"),
        "3.6": _c("3.6", "drivers/net/ethernet/intel/e1000/e1000.h", "E1000_DEFAULT_RXD",
                  "256 posted buffers; a failed netdev_alloc_skb_ip_align counts "
                  "alloc_rx_buff_failed and leaves the slot empty; the NIC drops a frame "
                  "that finds no buffer (RNBC, rx_no_buffer_count)"),
    },
    "rx_frag_pfmemalloc": {
        "2.6.13": _c("2.6.13", "net/core/skbuff.c", "alloc_skb",
                     "no pfmemalloc mark and no page fragments in 2005"),
        "3.6": _c("3.6", "net/core/skbuff.c", "build_skb",
                  "sets truesize and head_frag, not pfmemalloc: an skb on a fragment of a "
                  "page taken with ALLOC_NO_WATERMARKS is not marked, so sk_filter never "
                  "drops it (c48a11c7ad26 marks only paged frags; build_skb looks at the "
                  "page from 4.0, 79930f5892e1)"),
    },
})
# --- socket memory (tcp_mem) ------------------------------------------------------------
CITATIONS.update({
    "tcp_mem": {
        "2.6.13": _c("2.6.13", "net/ipv4/tcp.c", "tcp_init",
                     "tcp_mem = {768, 1024, 1536} << order, order the pages of the bind hash "
                     "(i386: 8-byte buckets, as many as half the established hash, which "
                     "alloc_large_system_hash sizes at one entry per 32 KiB below 512 MiB); "
                     "net/core/stream.c sk_stream_mem_schedule charges truesize in pages: "
                     "past tcp_mem[2] it fails, and tcp_data_queue drops the segment"),
        "3.6": _c("3.6", "net/ipv4/tcp.c", "tcp_init",
                  "limit = nr_free_buffer_pages() / 8; tcp_mem = {limit / 4 * 3, limit, "
                  "limit / 4 * 3 * 2}; net/core/sock.c __sk_mem_schedule as in 2.6.13"),
    },
    "rmem_pfmemalloc_exempt": {
        "2.6.13": _c("2.6.13", "include/net/sock.h", "sk_stream_rmem_schedule",
                     "no exemption: past the limit the storage socket's segments are dropped "
                     "as any other's"),
        "3.6": _c("3.6", "include/net/sock.h", "sk_rmem_schedule",
                  "... || skb_pfmemalloc(skb) (c76562b6709f, \"netvm: prevent a "
                  "stream-specific deadlock\")"),
    },
    "tcp_adv_win_scale": {
        "2.6.13": _c("2.6.13", "net/ipv4/tcp_input.c", "tcp_collapse",
                     "sysctl_tcp_adv_win_scale = 2; a segment sk_stream_rmem_schedule refuses "
                     "makes tcp_data_queue call tcp_prune_queue, whose tcp_collapse copies the "
                     "receive queue from the first skb that is bloated (tcp_win_from_space("
                     "truesize) > len) or read in part, into alloc_skb(SKB_MAX_ORDER(header, "
                     "0) + header, GFP_ATOMIC) buffers; then the charge is tried again"),
        "3.6": _c("3.6", "net/ipv4/tcp_input.c", "tcp_try_rmem_schedule",
                  "sysctl_tcp_adv_win_scale = 1 (b49960a05e32, 3.4): a full segment in a "
                  "fragment is not bloated, only a queue read in part collapses; the same "
                  "tcp_prune_queue / tcp_collapse, then sk_rmem_schedule again"),
    },
})
# --- the storage socket's mark -----------------------------------------------------------
CITATIONS.update({
    "sk_memalloc_mark": {
        "2.6.13": _c("2.6.13", "include/net/sock.h", "is_memalloc_sock",
                     "Phillips' patches (against 2.6.12.3) add SOCK_MEMALLOC and no caller that "
                     "sets it: 'A memalloc task ... will set the SO_MEMALLOC flag after creating "
                     "the socket' (RFC of 3 Aug 2005, linux-mm "
                     "200508031657.34948.phillips@istop.com), so before its connect; no "
                     "memalloc_socks count exists and nothing clears the flag"),
        "3.6": _c("3.6", "drivers/block/nbd.c", "nbd_do_it",
                  "sk_set_memalloc(nbd->sock->sk) on the socket NBD_SET_SOCK took, which "
                  "nbd-client created and connected in user space; 3.6's "
                  "drivers/scsi/iscsi_tcp.c iscsi_sw_tcp_conn_bind sets sk_allocation = "
                  "GFP_ATOMIC and no mark (the sk_set_memalloc call there is in 3.10's), and "
                  "open-iscsi's iscsid connects before ISCSI_UEVENT_BIND_CONN too (usr/io.c "
                  "iscsi_io_tcp_connect, usr/initiator.c session_conn_poll). Nothing clears "
                  "the mark: nbd.c has no sk_clear_memalloc and net/core/sock.c __sk_free "
                  "does not call it, so the memalloc_socks static key stays raised after the "
                  "socket is gone (Mel Gorman, linux-mm 20120514105604.GB29102@suse.de: 'In "
                  "the NBD case, SOCK_MEMALLOC is left set until the socket is destroyed')"),
    },
})
PENDING = PENDING - {"skb_truesize"}
# The receive path's policy mechanisms (Phillips' counter and threshold, the drop rules)
# belong to policies, not kernels: docs/kernels.md describes them under "The receive path".
PLACEHOLDER_ROWS = ()
