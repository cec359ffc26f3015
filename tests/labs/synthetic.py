"""Synthetic hand-ins: run, compare and sweep folders written as the testbed writes them,
with figures the test chooses, so that graders can be tested without root or Mininet.

A run folder gets the files graders read: ``summary.json`` (verdict, lockup evidence,
drops by class and reason, writeback), ``client.ndjson`` (a sample every 100 ms: free,
skb, dirty, written-back bytes, min watermark, reserve pages, throttle counters),
``scenario.yaml``, ``provenance.json`` (when the run ended: its start is that less
``duration_s``, as :func:`testbed.store.run_times` reads it) and, for the spoof runs,
``client-outcome.json``. A batch folder gets
``runs.json`` and the ``stats.json`` that :mod:`testbed.results` writes, both through
the testbed's own writers. :data:`HANDINS` makes lab N's runs as its handout asks for
them (lab 6: the reference policy as the student's file), with ``scale`` changing every
measured figure (two hand-ins whose figures differ)
and ``verdicts`` the outcomes a student's machine happened to give.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from testbed import results, store


@dataclass
class Run:
    """One synthetic run's figures."""

    policy: str
    verdict: str = "completed"
    t_end: float = 8.0
    free_floor: int = 48
    wmark_min: int = 128
    skb: int = 1200
    dirty: int = 2600
    reserve_pages: int = 0
    storage_drops: int = 0
    tx_storage_drops: Optional[int] = None      # None: no transmit drops by class recorded
    tx_other_nomem: int = 0                     # other frames sent NOMEM (with tx_storage_drops)
    other: dict[str, int] = field(default_factory=dict)     # reason -> frames
    lockup_reserve: int = 0
    throttle_t: Optional[float] = None
    throttles: int = 0
    scenario: dict[str, Any] = field(default_factory=dict)
    outcome: Optional[dict[str, Any]] = None
    started: Optional[float] = None      # seconds since the epoch; None: when written
    recoveries: list[dict[str, Any]] = field(default_factory=list)   # the initiator's episodes
    pages_checked: Optional[int] = None  # the read-back's (None: no integrity recorded)
    policy_file: Optional[Path] = None   # a policy file the run ran (lab 6): kept in policy/
    reserve: int = 0                     # receive buffers from the reserve out in one sample
    kind: str = "emulated"               # the client: emulated (the model) or kernel (a guest)
    counters: dict[str, int] = field(default_factory=dict)   # a cumulative counter -> its rise
    reclaimable: int = 0                 # clean page cache in every sample
    hung_tasks: int = 0                  # the guest's hung-task warnings by the last sample


SETUP_S = 15.0       # a run's wall-clock time beyond the client's own (bring-up, read-back)


def samples(r: Run) -> list[dict[str, Any]]:
    out = []
    n = int(round(r.t_end * 10))
    stop = n // 4 if r.verdict == "lockup" else n          # writeback goes flat at 1/4
    for i in range(n + 1):
        t = round(i / 10, 1)
        free = max(r.free_floor, 2000 - 100 * i)
        throttled = r.throttles if r.throttle_t is not None and t >= r.throttle_t else 0
        out.append({"t": t, "free": free, "skb": r.skb, "dirty": r.dirty,
                    "writeback_bytes": 65536 * min(i, stop), "wmark_min": r.wmark_min,
                    "reserve_pages": {"client-eth0": r.reserve_pages},
                    "reserve": {"client-eth0": r.reserve if i == n // 2 else 0},
                    "pgscan_direct_throttle": throttled, "nr_throttled_reclaim": 0})
        if r.kind == "kernel":        # a guest's counters count from its boot, not from 0
            out[-1].update({k: 1000 + rise * i // n for k, rise in r.counters.items()},
                           reclaimable=r.reclaimable, thresh=r.dirty + 50,
                           hung_tasks=r.hung_tasks if i == n else 0)
        elif r.counters or r.reclaimable:
            out[-1].update({k: rise * i // n for k, rise in r.counters.items()},
                           reclaimable=r.reclaimable)
    return out


def write_run(path: Path, r: Run) -> Path:
    path.mkdir(parents=True)
    other = {"total": sum(r.other.values()), **r.other}
    summary: dict[str, Any] = {
        "scenario": "synthetic", "policy": r.policy, "expected": "completed",
        "verdict": r.verdict, "status": "finished", "end_t": r.t_end,
        "drops": {"memalloc": {"total": r.storage_drops, "NOMEM": r.storage_drops},
                  "other": other},
        "writeback": {"bytes": 2**24, "time_s": r.t_end, "mb_s": 2.0},
        "duration_s": r.t_end + SETUP_S, "client": {"kind": r.kind},
    }
    if r.tx_storage_drops is not None:
        n = r.tx_storage_drops
        o = r.tx_other_nomem
        summary["drops"]["tx"] = {"total": n + o, "NOMEM": n + o,
                                  "memalloc": {"total": n, "NOMEM": n},
                                  "other": {"total": o, "NOMEM": o}}
    if r.recoveries:
        summary["recoveries"] = r.recoveries
    if r.pages_checked is not None:
        summary["integrity"] = {"checked": True, "pages_checked": r.pages_checked,
                                "bytes_checked": 4096 * r.pages_checked, "mismatches": 0}
    if r.policy_file is not None:
        summary["policy_file"] = keep_policy(path, r.policy_file)
    if r.verdict == "lockup":
        summary["lockup"] = {"t": r.t_end, "free": r.free_floor, "wmark_min": r.wmark_min,
                             "dirty": r.dirty, "reserve": {"client-eth0": r.lockup_reserve},
                             "alloc_fail": {"kernel": 0, "atomic": 40 + r.storage_drops}}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "client.ndjson").write_text("".join(json.dumps(s) + "\n" for s in samples(r)))
    (path / "scenario.yaml").write_text(yaml.safe_dump(r.scenario or {"name": "synthetic"}))
    started = time.time() if r.started is None else r.started
    results.write_provenance(path, {"command": "compare",
                                    "ended": store.utc(started + summary["duration_s"])})
    if r.outcome is not None:
        (path / "client-outcome.json").write_text(json.dumps(r.outcome))
    return path


def keep_policy(path: Path, policy: Path) -> dict[str, str]:
    """The copy of a policy file a run keeps in ``policy/``, and its summary's entry."""
    (path / "policy").mkdir()
    (path / "policy" / policy.name).write_bytes(policy.read_bytes())
    return {"name": policy.name, "path": f"policy/{policy.name}",
            "sha256": hashlib.sha256(policy.read_bytes()).hexdigest()}


def write_batch(path: Path, runs: list[tuple[str, dict[str, str], Run]]) -> Path:
    """A compare/sweep folder: each (label, params, run), runs.json and stats.json."""
    path.mkdir(parents=True, exist_ok=True)
    entries = []
    for label, params, r in runs:
        d = label.replace("#", "_").replace(" ", "_").replace("=", "_")
        write_run(path / d, r)
        entries.append(results.BatchEntry(label, d, dict(params)))
    results.write_index(path, "synthetic", entries)
    batch = results.open_batch(path)
    outcomes = batch.runs()
    results.write_stats(batch, outcomes, results.batch_groups(batch, outcomes))
    return path


def compare(path: Path, policies: dict[str, list[Run]]) -> Path:
    """Interleaved as ``compare --repeat`` makes them: a_1, b_1, a_2, b_2, ..."""
    n = max(len(v) for v in policies.values())
    runs = [(f"{p}#{k + 1}", {}, rs[k]) for k in range(n) for p, rs in policies.items()
            if k < len(rs)]
    return write_batch(path, runs)


def lab1(work: Path, scale: float = 1.0, verdicts: tuple[str, ...] = ("lockup",) * 5) -> None:
    runs = [Run("none", v, t_end=round(3.8 * scale + 0.1 * k, 1), free_floor=int(48 * scale),
                skb=int(1200 * scale), dirty=int(2600 * scale),
                storage_drops=int(45 * scale) + k)
            for k, v in enumerate(verdicts)]
    compare(work / "runs/none", {"none": runs})


LINK = {"topology": {"client_bw_mbit": 40, "delay_ms": 20}}


def lab2(work: Path, scale: float = 1.0, unclean: tuple[tuple[int, int], ...] = ()) -> None:
    """The sweep twice over (``--repeat 2``): the storage flow loses received frames and,
    more, its ACKs on transmit below the clean reserve; ``unclean``: (reserve, hosts) grid
    points whose second run drops one ACK all the same."""
    runs = []
    for reserve in (0, 100, 200, 400, 800):
        for hosts in (1, 3):
            for k in (1, 2):
                clean = reserve >= (200 if hosts == 1 else 400)
                drops = 0 if clean else int((30 + hosts * 10) * scale) + reserve // 100 + k
                tx = 0 if clean else 3 * drops
                if k == 2 and (reserve, hosts) in unclean:
                    tx += 1
                r = Run("phillips-2005", "completed", storage_drops=drops,
                        tx_storage_drops=tx, scenario=LINK)
                runs.append((f"client.reserve_pages={reserve} topology.bulk_hosts={hosts}#{k}",
                             {"client.reserve_pages": str(reserve),
                              "topology.bulk_hosts": str(hosts)}, r))
    write_batch(work / "runs/sweep", runs)


def net(rx: int, tx: int) -> dict[str, Any]:
    def direction(n: int) -> dict[str, Any]:
        return {"classes": {"memalloc": {"received": {"frames": n}}}}
    return {"net": {"rx": direction(rx), "tx": direction(tx)}}


def lab3(work: Path, scale: float = 1.0, verdicts: tuple[str, ...] = ("lockup",) * 5) -> None:
    ro = [Run("reserve-only", v, t_end=5.0 + k / 10, lockup_reserve=int(100 * scale) + k,
              storage_drops=int(24 * scale) + k) for k, v in enumerate(verdicts)]
    ph = [Run("phillips-2005", "completed", other={"NOT_MEMALLOC": int(75 * scale) + 3 * k,
                                                   "NOMEM": 4})
          for k in range(5)]
    compare(work / "runs/compare", {"reserve-only": ro, "phillips-2005": ph})
    spoof = {"bulk": {"mode": "spoof"}}
    forged = int(21880 * scale)
    write_batch(work / "runs/spoof", [
        ("topology.bulk_hosts=0", {"topology.bulk_hosts": "0"},
         Run("phillips-2005", scenario=spoof, outcome=net(3000, 2500))),
        ("topology.bulk_hosts=2", {"topology.bulk_hosts": "2"},
         Run("phillips-2005", scenario=spoof, outcome=net(3000 + forged, 2500 + forged - 200))),
    ])


def lab4(work: Path, scale: float = 1.0, overlap: bool = False) -> None:
    base = {0: (280, 78), 0.5: (92, 41), 1: (20, 1)}
    if overlap:                       # a machine where threshold 1 shows no trade
        base[1] = (280, 78)
    runs = []
    for k in range(4):
        for t, (drops, free) in base.items():
            r = Run("phillips-2005-threshold", t_end=8.5 + k / 10, free_floor=int(free * scale) + k,
                    other={"NOT_MEMALLOC": int(drops * scale) + 5 * k},
                    storage_drops=1 if (t == 1 and k == 0 and not overlap) else 0)
            runs.append((f"client.threshold={t:g}#{k + 1}", {"client.threshold": f"{t:g}"}, r))
    write_batch(work / "runs/threshold", runs)


def lab5(work: Path, scale: float = 1.0,
         gorman_verdicts: tuple[str, ...] = ("completed",) * 5) -> None:
    ph = [Run("phillips-2005", t_end=round(8.1 * scale + k / 10, 1), wmark_min=181,
              reserve_pages=53, other={"NOT_MEMALLOC": int(88 * scale) + k}) for k in range(5)]
    go = [Run("gorman-3.6", v, t_end=round(8.2 * scale + k / 10, 1), wmark_min=128,
              other={"PFMEMALLOC": int(120 * scale) + k},
              throttle_t=None if k == 0 else round(0.8 * scale, 1), throttles=2)
          for k, v in enumerate(gorman_verdicts)]
    compare(work / "runs/compare", {"phillips-2005": ph, "gorman-3.6": go})


FIVE_CLEAN = (0,) * 5


def lab6(work: Path, scale: float = 1.0, storage_drops: tuple[int, ...] = FIVE_CLEAN,
         tx_storage_drops: tuple[int, ...] = FIVE_CLEAN,
         spoof_reserve: tuple[int, ...] = FIVE_CLEAN,
         flood_verdicts: tuple[str, ...] = ("completed",) * 5) -> None:
    """The reference policy as the student's mypolicy.py, and its two batches of
    ``compare --policies ./mypolicy.py --repeat N`` (N: the tuples' length): per flood
    run the storage frames dropped on receive and on transmit and its verdict, per
    spoofed run the reserve buffers out at its peak."""
    lab = Path(__file__).resolve().parents[2] / "instructor/labs/06-your-own-policy"
    policy = work / "mypolicy.py"
    policy.write_bytes((lab / "reference_policy.py").read_bytes())
    flood = [Run(policy.name, v, t_end=round(20 * scale + k / 10, 1), storage_drops=rx,
                 tx_storage_drops=tx, other={"NOT_MEMALLOC": int(7 * scale) + k},
                 policy_file=policy)
             for k, (v, rx, tx) in enumerate(zip(flood_verdicts, storage_drops, tx_storage_drops))]
    spoof = [Run(policy.name, t_end=round(40 * scale + k / 10, 1), reserve=n, policy_file=policy)
             for k, n in enumerate(spoof_reserve)]
    compare(work / "runs/flood", {policy.name: flood})
    compare(work / "runs/spoof", {policy.name: spoof})


def episode(lost_t: float, after_s: Optional[float], reissued: int = 8) -> dict[str, Any]:
    """One recovery episode as summary.json has it (``after_s`` None: never reinstated)."""
    back = None if after_s is None else round(lost_t + after_s, 3)
    return {"lost_t": lost_t, "cause": "target closed the connection", "reinstated_t": back,
            "reissued": 0 if back is None else reissued, "failed": False,
            "writeback_resumed_t": back, "resumed_after_s": after_s}


GORMAN_STUCK = ("lockup", "lockup", "degraded", "lockup", "degraded")


def lab7(work: Path, scale: float = 1.0,
         phillips_verdicts: tuple[str, ...] = ("lockup",) * 5,
         gorman_reinstates: bool = True) -> None:
    """Step 1: phillips-2005 never reinstates (unless its verdict says completed);
    gorman-3.6 reinstates after about 2 s, or (``gorman_reinstates`` False, as the model
    has it since 9f7b463) never: its new SYN is sent NOMEM in the other class, no storage
    frame is dropped, and the runs lock up or are degraded at the deadline. Step 2: both
    reinstate."""
    ph = [Run("phillips-2005", v, t_end=round(24 * scale + k / 10, 1), wmark_min=181,
              tx_storage_drops=int(10 * scale) + k, pages_checked=int(272 * scale),
              recoveries=[episode(1.0, None if v == "lockup" else round(2.1 * scale, 2))])
          for k, v in enumerate(phillips_verdicts)]
    go = [Run("gorman-3.6", t_end=round(12 * scale + k / 10, 1),
              pages_checked=int(9152 * scale) + k,
              recoveries=[episode(2.3, round(2.0 * scale + k / 100, 3), 8 + k)])
          for k in range(5)]
    if not gorman_reinstates:
        go = [Run("gorman-3.6", v, t_end=round(30 * scale + k / 10, 1), wmark_min=128,
                  tx_storage_drops=0, tx_other_nomem=int(30 * scale) + k,
                  pages_checked=int(848 * scale) + k, recoveries=[episode(2.3, None)])
              for k, v in enumerate(GORMAN_STUCK)]
    compare(work / "runs/pressure", {"phillips-2005": ph, "gorman-3.6": go})
    calm = {p: [Run(p, t_end=8.4 * scale, pages_checked=int(3584 * scale),
                    recoveries=[episode(5.2, round(2.0 * scale + 0.05 * i, 3))])]
            for i, p in enumerate(("phillips-2005", "gorman-3.6"))}
    compare(work / "runs/calm", calm)


def lab8(work: Path, scale: float = 1.0) -> None:
    """Step 1: the 2005 model locks up 5 of 5. Step 2 (``compare --clients
    emulated:gorman-3.6,kernel``): both complete; the kernel reclaims directly, its
    clock runs slower (TCG), its load's memory is close to the model's."""
    old = [Run("none", "lockup", t_end=round(19.5 * scale + k / 10, 1), free_floor=56,
               wmark_min=150) for k in range(5)]
    compare(work / "runs/2005", {"emulated:none": old})
    model = [Run("gorman-3.6", t_end=round(9.5 * scale + k / 10, 1), free_floor=201,
                 wmark_min=150, reclaimable=int(3500 * scale),
                 counters={"allocstall": 0, "PFMemallocDrop": 0,
                           "pgscan_direct_throttle": 0}) for k in range(5)]
    kernel = [Run("gorman-3.6", t_end=round(17.8 * scale + k / 5, 1), kind="kernel",
                  free_floor=int(1036 * scale) + k, wmark_min=267,
                  reclaimable=int(3470 * scale),
                  counters={"allocstall": int(51 * scale) + 10 * k, "PFMemallocDrop": 0,
                            "pgscan_direct_throttle": 0}) for k in range(5)]
    compare(work / "runs/modern", {"emulated:gorman-3.6": model, "kernel": kernel})


HANDINS: dict[int, Callable[..., None]] = {1: lab1, 2: lab2, 3: lab3, 4: lab4, 5: lab5, 6: lab6,
                                           7: lab7, 8: lab8}
