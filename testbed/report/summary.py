"""From a run folder to ``summary.json``: the verdict and the figures behind it.

A run folder holds what the nodes wrote: ``client-outcome.json`` (the storage client's
own account: completed, lockup or deadline, with the lockup detector's evidence and the
read-back result), ``client.ndjson`` (memory and packet-handler samples every 100 ms),
``bulk*.ndjson`` and ``target.ndjson`` (what the servers sent and served) and
``hosts.json`` (name -> address), and for a scenario with faults ``faults.ndjson`` (each
fault's start and end, :mod:`testbed.faults`). This module reads them and decides the
verdict:

- ``lockup``: the client's lockup detector proved the state stuck past the recovery
  horizon and named the wait-for cycle that holds it (``lockup.cycle``); a lockup
  reported without a cycle is not one;
- ``completed``: everything written was written back and flushed, the read-back through
  the initiator matched, and the scenario's bounds (longest writeback stall, drops of
  other traffic, goodput) were kept;
- ``degraded``: it finished, but a bound was missed, or the deadline came first without
  a lockup, or a stall stayed stuck past the horizon with no cycle (the reason is
  given), or a proven lockup recovered after all, or the read-back found mismatches.

``stalls`` lists the client's stall episodes: when each began, how long it lasted and
what ended it.

Faults and recovery: ``faults`` lists each injected fault (kind, when it started and
ended, its parameters and outcome, and the bytes written back before and after it), and
``recoveries`` each recovery episode of the initiator, from the client's events (the
connection lost, the session reinstated, the commands re-issued, and when writeback
made progress again). A fault that could not be done makes the run ``degraded``.
After a ``client_restart``, ``integrity.journal`` holds the read-back of the write
journal (restarts, pages and bytes checked, mismatches), which count like the
manifest's.

``fidelity`` holds the run's own fidelity figures (the client's wake-up lag, the
bottleneck link's achieved rate, the host's CPU pressure; :mod:`testbed.fidelity`) and
``validity``: ``invalid`` when one is past the scenario's bounds. The verdict is kept as
measured; the claims and the statistics leave an invalid run out.

A run of a policy file (``client.policy: ./mypolicy.py``, lab 6) names the policy by
the file's name, and ``policy_file`` says which file: its copy in the run folder
(``policy/<name>``, which the storage client loaded) and that copy's SHA-256.

An interrupted run, or one whose client failed, has no verdict (``null``) and says why
in ``status`` and ``detail``.

A kernel client's run (``client.kind: kernel``, ``client.kind`` in the summary) differs
in two places. It has no packet handler, so nothing counts its drops per flow class:
``drops.counted`` is false and the class totals are not figures (they read as n/a, not
0; the kernel's own ``PFMemallocDrop`` is in its samples). And its lockup is the guest's
detector's (``lockup.detector: kernel``): writeback pending and the LUN's written
sectors still for ``lockup_after_s`` and the kernel's recovery horizon, with free memory
at or below the min watermark or a hung-task warning. A real kernel names no wait-for
cycle, so the cycle is read from the kernel's evidence, the stacks of its blocked tasks
(:mod:`testbed.guest.waits`): with all three waits seen it is a proven ``lockup``;
otherwise (or when the guest was judged before the horizon, from its console) the run
is ``degraded``, and its reason says what the guest saw and what it did not prove.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

# the file readers are testbed.results' (the one reader of run folders); until_end is
# imported here too so that older ``report.summary`` imports of it keep working
from ..results import read_json, read_ndjson, until_end  # noqa: F401
from .. import fidelity
from ..guest.waits import kernel_cycle
from ..mm.policy.loader import RUN_FOLDER_DIR, is_policy_file, label as policy_label

CLASSES = ("memalloc", "other")
# why a kernel client's drops per class are n/a (the summary's drops.note)
NO_HANDLER = ("no packet handler: the guest's NIC is the kernel's virtio-net, whose drops "
              "per flow class nothing counts (the kernel's PFMemallocDrop is counted)")


def is_kernel(summary: dict[str, Any]) -> bool:
    """Was the run's storage client the real kernel (``client.kind: kernel``)?"""
    return (summary.get("client") or {}).get("kind") == "kernel"


def rx_drops(net: Optional[dict[str, Any]]) -> dict[str, int]:
    """Received frames dropped per flow class, from the handler's counters."""
    out = {c: 0 for c in CLASSES}
    if not net or "rx" not in net:
        return out
    for c in CLASSES:
        out[c] = net["rx"]["classes"][c]["dropped"]["frames"]
    return out


def drops_by_reason(net: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Dropped frames with their non-zero reasons: received ``{memalloc: {total, REASON:
    frames}, other: {...}}``, and transmitted ``tx: {total, REASON: frames, memalloc:
    {...}, other: {...}}`` (by class too: a client ACK of a download dropped for want of
    memory stalls that download; a storage frame's is the writeback's)."""
    out: dict[str, Any] = {}
    if not net or "rx" not in net:
        return {**{c: {"total": 0} for c in CLASSES},
                "tx": {"total": 0, **{c: {"total": 0} for c in CLASSES}}}
    for c in CLASSES:
        out[c] = _dropped(net["rx"]["classes"][c])
    tx = net.get("tx", {})
    out["tx"] = {**_dropped(tx), **{c: _dropped(tx.get("classes", {}).get(c, {}))
                                    for c in CLASSES}}
    return out


def _dropped(block: dict[str, Any]) -> dict[str, int]:
    """``{total, REASON: frames}`` of one counters block (non-zero reasons)."""
    return {"total": block.get("dropped", {}).get("frames", 0),
            **{r: v["frames"] for r, v in block.get("reasons", {}).items() if v["frames"]}}


def goodput(samples: list[dict[str, Any]], hosts: dict[str, str]) -> dict[str, Any]:
    """Per bulk host: bytes of its flows' streams the client received (each once), and Mbit/s.

    The rate is over the time the flow was registered (first to last sample it was in).
    """
    by_ip = {ip: name for name, ip in hosts.items() if name.startswith("bulk")}
    seen: dict[str, tuple[float, float, int]] = {}
    for s in samples:
        for f in (s.get("net") or {}).get("flows", []):
            remote_ip = f["flow"].split("<->")[-1].rsplit(":", 1)[0]
            name = by_ip.get(remote_ip)
            if name is None:
                continue
            first, _, total = seen.get(name, (s["t"], s["t"], 0))
            seen[name] = (first, s["t"], max(total, f["charged_bytes"]))
    out = {}
    for name in sorted(by_ip.values(), key=_host_order):
        first, last, total = seen.get(name, (0.0, 0.0, 0))
        span = last - first
        out[name] = {"bytes": total, "mbit_s": round(total * 8 / span / 1e6, 3) if span > 0 else 0.0}
    return out


def bulk_flows(run_dir: Path, samples: list[dict[str, Any]], hosts: dict[str, str],
               end_t: Optional[float]) -> dict[str, Any]:
    """Per bulk host, what its user feels: :func:`goodput`, the longest stall
    (:func:`longest_stalls`) and the server's retransmissions (:func:`bulk_tcp`)."""
    out = goodput(samples, hosts)
    stalls = longest_stalls(samples, hosts, end_t)
    tcp = bulk_tcp(run_dir, out)
    for name, g in out.items():
        g["longest_stall_s"] = stalls.get(name)
        g.update(tcp[name])
    return out


def host_bytes(samples: list[dict[str, Any]], hosts: dict[str, str]
                ) -> dict[str, list[tuple[float, int]]]:
    """Per bulk host: (t, stream bytes of its flows charged so far) at each sample."""
    by_ip = {ip: name for name, ip in hosts.items() if name.startswith("bulk")}
    out: dict[str, list[tuple[float, int]]] = {}
    for s in samples:
        per: dict[str, int] = {}
        for f in (s.get("net") or {}).get("flows", []):
            name = by_ip.get(f["flow"].split("<->")[-1].rsplit(":", 1)[0])
            if name is not None:
                per[name] = per.get(name, 0) + f["charged_bytes"]
        for name, b in per.items():
            out.setdefault(name, []).append((s["t"], b))
    return out


def longest_stalls(samples: list[dict[str, Any]], hosts: dict[str, str],
                   end_t: Optional[float]) -> dict[str, float]:
    """Per bulk host: the longest time its flows went without a new byte, from the
    flow's first sample to its last progress before the outcome (``end_t``).

    Whatever stopped the flow counts: frames dropped, or its reader blocked by the dirty
    limits until the window closed. Resolution: the sample interval (100 ms). A flow
    that never moves again is not
    counted past its last progress: a finished download looks the same, and a run that
    locked up is measured by its lockup.
    """
    out = {}
    for name, pts in host_bytes(samples, hosts).items():
        pts = [p for p in pts if end_t is None or p[0] <= end_t]
        if not pts:
            continue
        progress, most = [pts[0][0]], pts[0][1]
        for t, b in pts[1:]:
            if b > most:
                progress.append(t)
                most = b
        out[name] = round(max((b - a for a, b in zip(progress, progress[1:])), default=0.0), 3)
    return out


TCP_FIGURES = ("retrans", "rto", "rto_ms")    # per flow in bulk*.ndjson (nodes.bulk_source)


def bulk_tcp(run_dir: Path, hosts: Any) -> dict[str, dict[str, Any]]:
    """Per bulk host: its server's TCP_INFO counts over its flows, from ``<host>.ndjson``:
    ``retrans`` (segments retransmitted), ``rto`` (retransmission timeouts) and
    ``rto_time_s`` (time in RTO recovery); None where the server did not record them
    (a kernel before 6.7 has no RTO counts)."""
    out = {}
    for name in hosts:
        last: dict[Any, dict[str, Any]] = {}      # each flow's latest report
        for line in read_ndjson(run_dir / f"{name}.ndjson"):
            for f in line.get("flows") or []:
                last[f.get("id")] = f
        sums: dict[str, Any] = {}
        for k in TCP_FIGURES:
            got = [f.get(k) for f in last.values()]
            sums[k] = sum(got) if got and None not in got else None
        ms = sums.pop("rto_ms")
        out[name] = {**sums, "rto_time_s": None if ms is None else round(ms / 1000, 3)}
    return out


def integrity(run_dir: Path) -> dict[str, Any]:
    """The read-back result (integrity.json from nodes/verify), or why there is none."""
    got = read_json(run_dir / "integrity.json")
    if got is None:
        return {"checked": False, "bytes_checked": 0, "mismatches": 0,
                "detail": "no read-back (no manifest, or the check did not run)"}
    if "error" in got:
        return {"checked": False, "bytes_checked": 0, "mismatches": 0, "detail": got["error"]}
    return {"checked": True, **got}


def events(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The client's events, in order (each sample carries those since the one before)."""
    return [e for s in samples for e in s.get("events") or []]


def _written_back_at(samples: list[dict[str, Any]], t: float) -> int:
    """Bytes written back by time ``t`` (the last sample at or before it)."""
    got = 0
    for s in samples:
        if s.get("t", 0.0) > t:
            break
        got = s.get("writeback_bytes", got)
    return got


def _resumed_after(samples: list[dict[str, Any]], t: float) -> Optional[float]:
    """The first sample after ``t`` whose written-back bytes grew past their value at
    ``t``: when writeback made progress again (None: never, in this stream)."""
    base = _written_back_at(samples, t)
    for s in samples:
        if s.get("t", 0.0) > t and s.get("writeback_bytes", 0) > base:
            return s["t"]
    return None


def recoveries(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The initiator's recovery episodes: ``lost_t`` and ``cause``, then ``reinstated_t``
    and ``reissued`` (or ``failed``), ``writeback_resumed_t`` and ``resumed_after_s``
    (from the loss to writeback's first progress after the reinstatement)."""
    out: list[dict[str, Any]] = []
    for e in events(samples):
        kind = e.get("event")
        if kind == "iscsi_connection_lost":
            out.append({"lost_t": e["t"], "cause": e.get("cause", ""), "reinstated_t": None,
                        "reissued": 0, "failed": False, "writeback_resumed_t": None,
                        "resumed_after_s": None})
        elif kind in ("iscsi_reinstated", "iscsi_recovery_failed") and out \
                and out[-1]["reinstated_t"] is None and not out[-1]["failed"]:
            ep = out[-1]
            if kind == "iscsi_recovery_failed":
                ep["failed"] = True
                continue
            ep.update(reinstated_t=e["t"], reissued=e.get("reissued", 0))
            resumed = _resumed_after(samples, e["t"])
            if resumed is not None:
                ep.update(writeback_resumed_t=resumed,
                          resumed_after_s=round(resumed - ep["lost_t"], 3))
    return out


def faults(run_dir: Path, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each injected fault from ``faults.ndjson``: ``kind``, ``at_s``/``when`` as asked,
    ``t`` it started and ``end_t`` it ended (None: it has no end, or none was reached),
    ``params``, ``outcome`` (of its start, and ``end_outcome``), and the bytes written
    back before it started and after (so the read-back is seen to cover both)."""
    by_index: dict[int, dict[str, Any]] = {}
    for line in read_ndjson(run_dir / "faults.ndjson"):
        i = line.get("index")
        if line.get("phase") == "start":
            by_index[i] = {"index": i, "kind": line.get("kind"), "at_s": line.get("at_s"),
                           "when": line.get("when"), "t": line.get("t"), "end_t": None,
                           "params": line.get("params", {}), "outcome": line.get("outcome"),
                           "end_outcome": None}
        elif line.get("phase") == "end" and i in by_index:
            by_index[i].update(end_t=line.get("t"), end_outcome=line.get("outcome"))
        elif line.get("phase") == "skipped":      # never started: no time, its reason
            by_index[i] = {"index": i, "kind": line.get("kind"), "at_s": line.get("at_s"),
                           "when": line.get("when"), "t": None, "end_t": None,
                           "params": line.get("params", {}), "outcome": line.get("outcome"),
                           "end_outcome": None}
    samples = run_written_back(samples)
    total = samples[-1].get("writeback_bytes", 0) if samples else 0
    for f in by_index.values():
        before = None if f["t"] is None else _written_back_at(samples, f["t"])
        f.update(written_back_before_bytes=before,
                 written_back_after_bytes=None if before is None else total - before)
    return [by_index[i] for i in sorted(by_index)]


def run_written_back(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples with ``writeback_bytes`` counted over the whole run: a restarted client
    (client_restart) counts again from 0, so each fall adds the count before it."""
    base, last, out = 0, 0, []
    for s in samples:
        got = s.get("writeback_bytes", last)
        if got < last:
            base += last
        last = got
        out.append({**s, "writeback_bytes": base + got})
    return out


def _failed(text: Optional[str]) -> bool:
    return bool(text) and str(text).startswith("failed")


def _host_order(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def policy_file(run_dir: Path, policy: str) -> dict[str, Any]:
    """The policy file a run used: its copy in the run folder and that copy's SHA-256
    (null when the copy is missing: nothing then says which file ran)."""
    rel = f"{RUN_FOLDER_DIR}/{Path(policy).name}"
    try:
        digest: Optional[str] = hashlib.sha256((Path(run_dir) / rel).read_bytes()).hexdigest()
    except OSError:
        digest = None
    return {"name": Path(policy).name, "path": rel, "sha256": digest}


def summarize(run_dir: Path, scenario: Any, duration_s: float,
              interrupted: bool = False) -> dict[str, Any]:
    """The summary of a run folder (see the module docstring)."""
    run_dir = Path(run_dir)
    outcome = read_json(run_dir / "client-outcome.json") or {}
    samples = list(read_ndjson(run_dir / "client.ndjson"))
    hosts = read_json(run_dir / "hosts.json") or {}
    last = samples[-1] if samples else {}
    net = outcome.get("net") or last.get("net")
    written_back = outcome.get("bytes_written_back", last.get("writeback_bytes", 0)) or 0
    wb_time = outcome.get("t") or last.get("t") or 0.0
    kernel = scenario.client.kind == "kernel"
    drops = drops_by_reason(net)
    if kernel:                   # no handler counted them: the zeros are not figures
        drops.update(counted=False, note=NO_HANDLER)
    lockup = outcome.get("lockup")
    if kernel and lockup:
        lockup = _kernel_lockup(lockup)
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "policy": policy_label(scenario.client.policy),
        "client": {"kind": scenario.client.kind},
        "expected": scenario.expected,
        "verdict": None,
        "status": "interrupted" if interrupted else "finished",
        "reasons": [],
        "detail": outcome.get("detail", ""),
        "duration_s": round(duration_s, 2),
        "lockup": lockup,
        "stalls": outcome.get("stalls") or [],
        "integrity": integrity(run_dir),
        "writeback": {"bytes": written_back,
                      "mb_s": round(written_back / 2**20 / wb_time, 3) if wb_time else 0.0,
                      "bytes_written": outcome.get("bytes_written", last.get("workload_bytes", 0)),
                      "longest_stall_s": outcome.get("longest_stall_s", last.get("stalled_for_s")),
                      "time_s": wb_time},
        "drops": drops,
        "goodput": bulk_flows(run_dir, samples, hosts, outcome.get("t")),
        "client_verdict": outcome.get("verdict"),
        "end_t": outcome.get("t"),     # the client's clock when its outcome was decided
        "faults": faults(run_dir, samples),
        "recoveries": recoveries(samples),
    }
    if is_policy_file(scenario.client.policy):
        summary["policy_file"] = policy_file(run_dir, scenario.client.policy)
    if not interrupted:
        _decide(summary, outcome, scenario)
    # the run's own fidelity (testbed.fidelity): a run past a bound keeps its verdict but
    # is ``invalid``, and nothing counts it
    summary["fidelity"] = fidelity.measure(samples, scenario,
                                           read_json(run_dir / fidelity.PRESSURE_FILE))
    summary["validity"] = summary["fidelity"]["validity"]
    return summary


def _decide(summary: dict[str, Any], outcome: dict[str, Any], scenario: Any) -> None:
    client = outcome.get("verdict")
    bounds = scenario.bounds
    reasons = summary["reasons"]
    if client is None or client == "error":
        summary["status"] = "error"
        summary["detail"] = outcome.get("detail") or "the storage client left no outcome; see client.log"
        return
    lockup = summary.get("lockup") or {}
    # a lockup is proven past the recovery horizon with its cycle; the kernel client's
    # detector proves neither (see the module docstring), so its stall is degraded
    if client == "lockup" and lockup.get("cycle"):
        summary["verdict"] = "lockup"
        return
    reasons.extend(_stuck_reasons(client, lockup, summary["stalls"]))
    if client != "completed":
        reasons.append(f"writeback did not finish: {client} ({outcome.get('detail', '')})")
    for f in summary.get("faults", []):
        for text in (f["outcome"], f["end_outcome"]):
            if _failed(text):
                reasons.append(f"fault {f['index']} ({f['kind']}) {text}")
    checked = summary["integrity"]
    journal = checked.get("journal") or {}
    if checked.get("mismatches"):
        reasons.append(f"read-back found {checked['mismatches']} mismatched pages")
    if journal.get("mismatches"):
        reasons.append(f"read-back of the write journal found {journal['mismatches']} "
                       f"mismatched pages")
    elif not checked.get("checked"):
        reasons.append(f"integrity not verified: {checked.get('detail')}")
    stall = summary["writeback"]["longest_stall_s"] or 0.0
    if stall > bounds.max_stall_s:
        reasons.append(f"writeback stalled for {stall:.1f}s (bound {bounds.max_stall_s:g}s)")
    other = summary["drops"]["other"]["total"]
    if bounds.max_other_drops is not None and summary["drops"].get("counted") is False:
        reasons.append(f"bounds.max_other_drops not checked: {NO_HANDLER}")
    elif bounds.max_other_drops is not None and other > bounds.max_other_drops:
        reasons.append(f"{other} frames of other traffic dropped (bound {bounds.max_other_drops})")
    if bounds.min_goodput_mbit is not None:
        for name, g in summary["goodput"].items():
            if g["mbit_s"] < bounds.min_goodput_mbit:
                reasons.append(f"{name} goodput {g['mbit_s']:.2f} Mbit/s "
                               f"(bound {bounds.min_goodput_mbit:g})")
    summary["verdict"] = "degraded" if reasons else "completed"


def _stuck_reasons(client: Optional[str], lockup: dict[str, Any],
                   stalls: list[dict[str, Any]]) -> list[str]:
    """Why a run that is no lockup was still stuck: a lockup without a cycle, a stall
    stuck past the horizon without one, a stall that never ended but came unstuck before
    each horizon, a proven lockup that recovered."""
    out = []
    if client == "lockup" and lockup.get("detector") == "kernel":
        out.append(kernel_lockup_line(lockup))
    elif client == "lockup":
        out.append("the client reported a lockup without a wait-for cycle: not proven")
    elif lockup.get("recovered_at") is not None:
        out.append(f"the lockup proven at t={lockup['t']:.1f}s recovered at "
                   f"t={lockup['recovered_at']:.1f}s ({lockup.get('recovered_by')})")
    for st in stalls:
        if st.get("lockup"):
            continue
        if st.get("not_lockup"):
            # the stuck clock restarts at a break, so the judgement keeps its own start
            # (an outcome written before that field: the clock's, if still running)
            since = st.get("not_lockup_since", st.get("stuck_since"))
            at = f"from t={since:.1f}s " if since is not None else ""
            out.append(f"stuck {at}past the recovery horizon without a wait-for cycle: "
                       f"{st['not_lockup']}")
        elif st.get("breaks") and st.get("ended_by") is None:
            first = st["breaks"][0]
            out.append(f"the stall from t={st['began_at']:.1f}s never ended, but came unstuck "
                       f"{len(st['breaks'])} times before a recovery horizon passed (first at "
                       f"t={first['t']:.1f}s: {first['detail']}): no lockup proven")
    return out


def cycle_lines(summary: dict[str, Any]) -> list[str]:
    """The wait-for cycle of a lockup as lines (empty when there is none)."""
    lk = summary.get("lockup") or {}
    text = (lk.get("cycle") or {}).get("text") or []
    if not text:
        return []
    horizon = (lk.get("horizon") or {}).get("seconds")
    head = (f"wait-for cycle (stuck {lk.get('stuck_for_s', 0):.1f}s from t={lk.get('stuck_since', 0):.1f}s"
            + (f", recovery horizon {horizon:g}s" if horizon else "") + "):")
    oom = (lk.get("oom") or {}).get("text")
    return [head] + [f"  {line}" for line in text] + ([oom] if oom else [])


def stall_lines(summary: dict[str, Any]) -> list[str]:
    """One line per recorded stall: when, how long, what ended it."""
    out = []
    for st in summary.get("stalls") or []:
        end = st.get("ended_by") or "still stalled at the end"
        dur = st.get("duration_s")
        out.append(f"stall from t={st['began_at']:.1f}s, {'?' if dur is None else f'{dur:.1f}'}s: {end}"
                   + (" (the lockup)" if st.get("lockup") else ""))
    return out


def evidence(summary: dict[str, Any]) -> list[str]:
    """The verdict's evidence as lines a person reads (printed after a run)."""
    v = summary.get("verdict")
    lines = []
    if summary.get("status") != "finished":
        lines.append(f"no verdict: run {summary.get('status')}: {summary.get('detail', '')}")
        return lines
    if v == "lockup" and summary.get("lockup"):
        lk = summary["lockup"]
        lines.append(f"lockup at t={lk['t']:.1f}s: no writeback progress for "
                     f"{lk['stalled_for_s']:.1f}s with {lk['dirty']} dirty and {lk['writeback']} "
                     f"under-writeback pages, {lk['free']} free pages (min watermark "
                     f"{lk['wmark_min']}), reserve in use {lk.get('reserve')}; stuck for "
                     f"{lk.get('stuck_for_s', 0):.1f}s, past the recovery horizon")
    elif v == "completed":
        i = summary["integrity"]
        lines.append(f"completed in {summary['writeback']['time_s']:.1f}s: "
                     f"{summary['writeback']['bytes'] / 2**20:.1f} MiB written back "
                     f"({summary['writeback']['mb_s']:.2f} MiB/s), read-back checked "
                     f"{i.get('bytes_checked', 0) / 2**20:.1f} MiB, {i.get('mismatches', 0)} mismatches")
    lines += fault_lines(summary)
    lines += fidelity.lines(summary)
    for r in summary.get("reasons", []):
        lines.append(f"degraded: {r}")
    lines += stall_lines(summary)
    d = summary["drops"]
    if d.get("counted") is False:
        lines.append(f"drops per flow class: n/a ({d.get('note', NO_HANDLER)})")
        return lines
    lines.append(f"drops: storage {d['memalloc']['total']}, other {d['other']['total']} "
                 f"({', '.join(f'{k} {v}' for k, v in d['other'].items() if k != 'total') or 'none'})")
    return lines


def _kernel_lockup(lk: dict[str, Any]) -> dict[str, Any]:
    """The guest's lockup with the cycle its evidence proves (testbed.guest.waits), or
    with the reason it proves none (``not_proven``)."""
    cycle, why_not = kernel_cycle(lk)
    out = {**lk, "detector": "kernel"}
    if cycle is None:
        return {**out, "not_proven": why_not}
    stuck = lk.get("stalled_for_s") or 0.0
    return {**out, "cycle": cycle, "stuck_for_s": stuck,
            "stuck_since": round((lk.get("t") or 0.0) - stuck, 2)}


def kernel_lockup_line(lk: dict[str, Any]) -> str:
    """What a kernel client's detector saw - a stall past ``lockup_after_s`` with free
    memory at or below min, or a hung-task warning - and what it did not prove (the reason
    of a degraded run: the recovery horizon not waited out, or no cycle in the kernel's
    evidence)."""
    hung = lk.get("hung_task_messages") or []
    free, low = lk.get("free"), lk.get("wmark_min")
    why = []
    if free is not None and low is not None and free <= low:
        why.append(f"free memory {free} pages at or below the min watermark {low}")
    if hung:
        why.append(f"{len(hung)} hung-task warnings from the kernel (last: {hung[-1]})")
    counters = lk.get("counters") or {}
    seen = ", ".join(f"{k} {v}" for k, v in counters.items() if v is not None)
    return (f"stuck at t={lk.get('t') or 0.0:.1f}s, by the guest's detector: no writeback "
            f"to the LUN for {lk.get('stalled_for_s') or 0.0:.1f}s with {lk.get('dirty')} "
            f"dirty and {lk.get('writeback')} under-writeback pages, "
            f"{' and '.join(why) or f'{free} free pages (min watermark {low})'}"
            + (f"; counters: {seen}" if seen else "")
            + f"; not a proven lockup: {lk.get('not_proven') or 'no wait-for cycle'}")


def fault_lines(summary: dict[str, Any]) -> list[str]:
    """The faults and the initiator's recovery episodes, one line each."""
    lines = []
    for f in summary.get("faults") or []:
        if f["t"] is None:
            lines.append(f"fault {f['index']} {f['kind']}: {f['outcome']}")
            continue
        params = ", ".join(f"{k} {v}" for k, v in f["params"].items() if v is not None)
        end = f"; ended t={f['end_t']:.1f}s: {f['end_outcome']}" if f["end_t"] is not None else ""
        lines.append(f"fault {f['index']} {f['kind']} at t={f['t']:.1f}s ({params or 'no parameters'})"
                     f": {f['outcome']}{end}; written back before it "
                     f"{f['written_back_before_bytes'] / 2**20:.1f} MiB, after "
                     f"{f['written_back_after_bytes'] / 2**20:.1f} MiB")
    journal = (summary.get("integrity") or {}).get("journal")
    if journal:
        lines.append(journal_line(journal))
    for r in summary.get("recoveries") or []:
        if r["failed"]:
            lines.append(f"iSCSI connection lost at t={r['lost_t']:.1f}s ({r['cause']}): "
                         f"not recovered")
        elif r["reinstated_t"] is None:
            lines.append(f"iSCSI connection lost at t={r['lost_t']:.1f}s ({r['cause']}): "
                         f"still recovering at the end")
        else:
            resumed = (f", writeback resumed {r['resumed_after_s']:.1f}s after the loss"
                       if r["resumed_after_s"] is not None else ", writeback never resumed")
            lines.append(f"iSCSI connection lost at t={r['lost_t']:.1f}s, session reinstated at "
                         f"t={r['reinstated_t']:.1f}s, {r['reissued']} commands re-issued{resumed}")
    return lines


def journal_line(j: dict[str, Any]) -> str:
    """The write journal's read-back (a client_restart run: testbed.journal) as a line."""
    notes = "".join(f"; {n}" for n in j.get("notes") or [])
    return (f"write journal: {j.get('restarts', 0)} client restarts, {j.get('acked_writes', 0)} "
            f"writes acknowledged ({j.get('acked_after_restart', 0)} after a restart), "
            f"{j.get('pages_checked', 0)} pages ({j.get('bytes_checked', 0) / 2**20:.1f} MiB) "
            f"checked on the LUN, {j.get('mismatches', 0)} mismatches, "
            f"{j.get('pages_with_write_in_flight', 0)} pages with a write in flight allowed"
            + notes)
