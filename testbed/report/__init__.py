"""Outcomes of runs: the summary and verdict, plots, and an HTML report.

``build_report(run_dir)`` (re)builds the plots and ``report.html`` of one run folder from
what is in it (``summary.json`` and the metric streams), so ``testbed report DIR`` can
redo it at any time; ``build_compare_report`` puts several runs side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from . import html, plots
from .summary import evidence, read_json, read_ndjson, until_end


def build_report(run_dir: Path) -> Path:
    """Plots and report.html of one run folder; returns the report's path."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    if summary is None:
        raise ConfigError(f"{run_dir}: no summary.json: not a run folder (or the run never started)")
    samples = until_end(list(read_ndjson(run_dir / "client.ndjson")), summary)
    hosts = read_json(run_dir / "hosts.json") or {}
    title = f"{summary['scenario']} ({summary['policy']})"
    lockup_t = (summary.get("lockup") or {}).get("t")
    images = []
    if samples:
        plots.memory_plot(samples, run_dir / "memory.png", title, lockup_t)
        plots.drops_plot(samples, summary["drops"], run_dir / "drops.png", title)
        plots.goodput_plot(samples, hosts, run_dir / "goodput.png", title)
        images = ["memory.png", "drops.png", "goodput.png"]
    out = run_dir / "report.html"
    out.write_text(html.run_page(summary, evidence(summary), images))
    return out


def table_rows(summaries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table: policy, verdict, time to lockup or completion, drops."""
    header = ["run", "policy", "verdict", "expected", "time to lockup / completion (s)",
              "written back (MiB)", "storage drops", "other drops", "mismatches"]
    rows = []
    for s in summaries:
        lk = s.get("lockup")
        when = lk["t"] if s.get("verdict") == "lockup" and lk else s["writeback"]["time_s"]
        rows.append([s.get("label", s["scenario"]), s["policy"], html.verdict_cell(s.get("verdict")),
                     str(s["expected"]), f"{when:.1f}" if when else "-",
                     f"{s['writeback']['bytes'] / 2**20:.1f}",
                     str(s["drops"]["memalloc"]["total"]), str(s["drops"]["other"]["total"]),
                     str(s["integrity"].get("mismatches", 0))])
    return header, rows


def build_compare_report(out_dir: Path, run_dirs: Sequence[Path], labels: Sequence[str],
                         title: str) -> Path:
    """A report of several runs: one table, combined plots, links to each run's report."""
    out_dir = Path(out_dir)
    runs, summaries = [], []
    for label, d in zip(labels, run_dirs):
        s = read_json(Path(d) / "summary.json")
        if s is None:
            continue
        s["label"] = label
        summaries.append(s)
        runs.append((label, until_end(list(read_ndjson(Path(d) / "client.ndjson")), s), s))
    plots.compare_plot(runs, out_dir / "compare.png")
    header, rows = table_rows(summaries)
    links = [(lab, f"{Path(d).resolve().relative_to(out_dir.resolve())}/report.html")
             for lab, d in zip(labels, run_dirs) if (Path(d) / "report.html").exists()]
    (out_dir / "summaries.json").write_text(json.dumps(summaries, indent=2))
    images = [i for i in ("sweep.png", "compare.png") if (out_dir / i).exists()]
    out = out_dir / "report.html"
    out.write_text(html.compare_page(title, header, rows, images, links))
    return out
