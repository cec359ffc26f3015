"""PNG plots of a run (and of several runs side by side), from the client's metrics.

- ``memory.png``: free, dirty and under-writeback memory with the min and low
  watermarks, the bytes written back so far, and the reserve in use, over time; a
  red line marks the lockup;
- ``drops.png``: received frames dropped so far, per flow class (storage = memalloc
  flows, other) and per reason;
- ``goodput.png``: each bulk flow's goodput (stream bytes the client received, once each).

Each plot of a run marks the scenario's faults (a dashed vertical line at the time a
fault started, labelled with its kind; a dotted one where it ended) and the initiator's
recovery episodes (a shaded band from the connection's loss to the reinstatement).

Samples are in 4 KiB pages; the plots show MiB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..results import RunOutcome, param_values
from .summary import host_bytes


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, imported when a plot is drawn: the import
    takes about 0.3 s, which every ``testbed`` command that draws nothing would pay."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

PAGE_MIB = 4096 / 2**20
COLOURS = {"free": "tab:green", "dirty": "tab:orange", "writeback": "tab:purple"}


def series(samples: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [s.get(key, 0) * scale for s in samples]


def reserve_used(s: dict[str, Any]) -> int:
    r = s.get("reserve") or {}
    return sum(r.values()) if isinstance(r, dict) else int(r)


def rx_dropped(s: dict[str, Any], cls: str) -> int:
    net = s.get("net") or {}
    try:
        return net["rx"]["classes"][cls]["dropped"]["frames"]
    except (KeyError, TypeError):
        return 0


Marker = tuple[float, str, str]     # (t, label, line style)


def fault_markers(summary: dict[str, Any]) -> list[Marker]:
    """The faults of a run's summary as markers: each start, and each end it reached."""
    out: list[Marker] = []
    for f in summary.get("faults") or []:
        if f.get("t") is not None:
            out.append((f["t"], f"{f['kind']}", "--"))
        if f.get("end_t") is not None:
            out.append((f["end_t"], f"{f['kind']} ends", ":"))
    return out


def recovery_spans(summary: dict[str, Any]) -> list[tuple[float, float]]:
    """(lost, reinstated) of each recovery episode that ended in a reinstatement."""
    return [(r["lost_t"], r["reinstated_t"]) for r in summary.get("recoveries") or []
            if r.get("reinstated_t") is not None]


def mark(axes: Any, markers: list[Marker], spans: list[tuple[float, float]]) -> None:
    """Faults as vertical lines (labelled on the first axes), recoveries as bands."""
    axes = list(axes)
    for a in axes:
        for t, _, style in markers:
            a.axvline(t, color="black", ls=style, lw=1)
        for lost, back in spans:
            a.axvspan(lost, back, color="tab:red", alpha=0.12, lw=0)
    if not axes:
        return
    top = axes[0]
    for t, label, style in markers:
        if style == "--":
            top.annotate(f" {label}", (t, 1.0), xycoords=("data", "axes fraction"),
                         va="top", ha="left", fontsize=8, rotation=90)
    for lost, _ in spans:
        top.annotate(" iSCSI recovery", (lost, 0.0), xycoords=("data", "axes fraction"),
                     va="bottom", ha="left", fontsize=8, color="tab:red")


def memory_plot(samples: list[dict[str, Any]], path: Path, title: str,
                lockup_t: Optional[float] = None, markers: Optional[list[Marker]] = None,
                spans: Optional[list[tuple[float, float]]] = None) -> None:
    plt = pyplot()
    t = series(samples, "t")
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.4, 1.4]})
    ax = axes[0]
    for key in ("free", "dirty", "writeback"):
        ax.plot(t, series(samples, key, PAGE_MIB), label=key, color=COLOURS[key])
    for key, style in (("wmark_min", ":"), ("wmark_low", "--")):
        ax.plot(t, series(samples, key, PAGE_MIB), style, color="grey", label=key.replace("wmark_", "") + " watermark")
    ax.set_ylabel("MiB")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    axes[1].plot(t, series(samples, "writeback_bytes", 1 / 2**20), color="tab:blue")
    axes[1].set_ylabel("written back\n(MiB)")
    axes[2].plot(t, [reserve_used(s) for s in samples], color="tab:purple", label="rx_reserve_used")
    axes[2].plot(t, series(samples, "skb"), color="tab:brown", label="skb pages")
    axes[2].set_ylabel("reserve /\nskb pages")
    axes[2].legend(loc="upper right", fontsize=8)
    axes[2].set_xlabel("time (s)")
    for a in axes:
        a.grid(alpha=0.3)
        if lockup_t is not None:
            a.axvline(lockup_t, color="red", lw=1.5)
    if lockup_t is not None:
        axes[0].annotate("lockup ", (lockup_t, axes[0].get_ylim()[1] * 0.5), color="red",
                         ha="right", fontsize=10, fontweight="bold")
    mark(axes, markers or [], spans or [])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def drops_plot(samples: list[dict[str, Any]], final_drops: dict[str, Any], path: Path,
               title: str, markers: Optional[list[Marker]] = None,
               spans: Optional[list[tuple[float, float]]] = None) -> None:
    plt = pyplot()
    t = series(samples, "t")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for cls, label, colour in (("memalloc", "storage (memalloc)", "tab:blue"),
                               ("other", "other traffic", "tab:orange")):
        ax.plot(t, [rx_dropped(s, cls) for s in samples], label=label, color=colour)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("received frames dropped (cumulative)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    mark([ax], markers or [], spans or [])
    reasons = sorted({r for c in ("memalloc", "other") for r in final_drops.get(c, {}) if r != "total"})
    x = range(len(reasons))
    for i, (cls, colour) in enumerate((("memalloc", "tab:blue"), ("other", "tab:orange"))):
        bx.bar([k + 0.4 * i for k in x], [final_drops.get(cls, {}).get(r, 0) for r in reasons],
               width=0.4, color=colour, label=cls)
    bx.set_xticks([k + 0.2 for k in x], reasons, rotation=30, fontsize=8)
    bx.set_title("by reason")
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def goodput_series(samples: list[dict[str, Any]], hosts: dict[str, str],
                   window_s: float = 1.0) -> dict[str, tuple[list[float], list[float]]]:
    """Per bulk host: (times, Mbit/s) from the charged bytes of its flows."""
    out = {}
    for name, pts in host_bytes(samples, hosts).items():
        ts, rates, j = [], [], 0
        for i, (ti, bi) in enumerate(pts):
            while pts[j][0] < ti - window_s:
                j += 1
            if i > j:
                ts.append(ti)
                rates.append((bi - pts[j][1]) * 8 / (ti - pts[j][0]) / 1e6)
        out[name] = (ts, rates)
    return out


def goodput_plot(samples: list[dict[str, Any]], hosts: dict[str, str], path: Path,
                 title: str, markers: Optional[list[Marker]] = None,
                 spans: Optional[list[tuple[float, float]]] = None) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name, (ts, rates) in sorted(goodput_series(samples, hosts).items()):
        ax.plot(ts, rates, label=name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no bulk downloads in this run", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    mark([ax], markers or [], spans or [])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare_plot(runs: list[tuple[RunOutcome, list[dict[str, Any]]]], path: Path) -> None:
    """Several runs side by side: free memory, written back, and other-traffic drops."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for run, samples in runs:
        t = series(samples, "t")
        line, = axes[0].plot(t, series(samples, "free", PAGE_MIB), label=f"{run.label}: {run.verdict}")
        axes[1].plot(t, series(samples, "writeback_bytes", 1 / 2**20), color=line.get_color())
        axes[2].plot(t, [rx_dropped(s, "other") for s in samples], color=line.get_color())
        if run.lockup_t is not None:
            for a in axes:
                a.axvline(run.lockup_t, color=line.get_color(), ls=":", lw=1)
    axes[0].set_ylabel("free (MiB)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("written back (MiB)")
    axes[2].set_ylabel("other traffic\ndropped (frames)")
    axes[2].set_xlabel("time (s)")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


VERDICT_COLOURS = {"completed": "tab:green", "lockup": "tab:red", "degraded": "tab:orange", None: "grey"}


def sweep_plot(runs: list[RunOutcome], keys: list[str], path: Path) -> None:
    """One parameter: time to lockup/completion against its values, coloured by verdict.
    Two: a grid of cells coloured by verdict, each with its time.

    Values and times are the results reader's (``runs.json`` params, ``RunOutcome.time_s``);
    a run that recorded no time gets a bar of height 0.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(keys) == 1:
        for i, run in enumerate(runs):
            t = run.time_s or 0.0
            ax.bar(i, t, color=VERDICT_COLOURS.get(run.verdict, "grey"))
            ax.text(i, t, str(run.verdict), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(runs)), [run.params.get(keys[0], "?") for run in runs])
        ax.set_xlabel(keys[0])
        ax.set_ylabel("time to lockup / completion (s)")
    else:
        xs, ys = param_values(runs, keys[0]), param_values(runs, keys[1])
        for run in runs:
            if keys[0] not in run.params or keys[1] not in run.params:
                continue          # not a point of this grid
            x, y = xs.index(run.params[keys[0]]), ys.index(run.params[keys[1]])
            ax.add_patch(plt.Rectangle((x - 0.45, y - 0.45), 0.9, 0.9,
                                       color=VERDICT_COLOURS.get(run.verdict, "grey"), alpha=0.7))
            ax.text(x, y, f"{run.verdict}\n{run.time_s or 0.0:.1f}s", ha="center", va="center",
                    fontsize=8)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_ylim(-0.5, len(ys) - 0.5)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1])
    ax.set_title("sweep: verdict and time to lockup / completion")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def sweep_time_plot(runs: list[RunOutcome], keys: list[str], path: Path) -> None:
    """The cost and the outcome against the first swept key (a series' knob: memory):
    each run's wall time (start to summary) above, its time to the verdict below, one
    line per value of the second key (the policy, say), each point coloured by its
    verdict and hollow when the run was invalid (past a fidelity bound)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    xs = param_values(runs, keys[0])
    lines = param_values(runs, keys[1]) if len(keys) > 1 else [None]
    for line in lines:
        mine = [r for r in runs if keys[0] in r.params
                and (line is None or r.params.get(keys[1]) == line)]
        for ax, figure in zip(axes, (lambda r: r.duration_s, lambda r: r.time_s)):
            pts = [(xs.index(r.params[keys[0]]), figure(r), r) for r in mine]
            pts = [(x, y, r) for x, y, r in pts if y is not None]
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], lw=1,
                             label=f"{keys[1]}={line}" if line is not None else None)
            for x, y, r in pts:
                colour = VERDICT_COLOURS.get(r.verdict, "grey")
                ax.scatter([x], [y], s=45, zorder=3, edgecolors=colour,
                           facecolors="none" if r.invalid else colour)
    axes[0].set_ylabel("run's wall time (s)")
    axes[1].set_ylabel("time to verdict (s)")
    axes[1].set_xticks(range(len(xs)), xs)
    axes[1].set_xlabel(keys[0])
    if lines != [None]:
        axes[0].legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
    axes[0].set_title("cost and verdict against " + keys[0] + " (green completed, red "
                      "lockup, orange degraded; hollow: invalid)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
