"""Outcomes of runs: the summary and verdict, plots, and an HTML report.

``build_report(run_dir)`` (re)builds the plots and ``report.html`` of one run folder from
what is in it (``summary.json`` and the metric streams), so ``testbed report DIR`` can
redo it at any time; ``build_compare_report(batch_dir)`` puts the runs of a compare or
sweep folder side by side (a sweep also by grid point: verdict, time to it, the run's
wall time and validity, drawn against the first key), with the statistics of its groups
(``stats.json``) and, for
a batch that ran the model and the kernel, the validation table. Folders
are read through :mod:`testbed.results`; this package only draws and writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import results, validation
from . import html, plots
from .summary import evidence


def build_report(run_dir: Path) -> Path:
    """Plots and report.html of one run folder; returns the report's path."""
    run = results.open_run(Path(run_dir))
    samples = run.samples()
    title = f"{run.scenario} ({run.policy})"
    images = []
    if samples:
        marks = {"markers": plots.fault_markers(run.summary),
                 "spans": plots.recovery_spans(run.summary)}
        plots.memory_plot(samples, run.path / "memory.png", title, run.lockup_t, **marks)
        plots.drops_plot(samples, run.summary["drops"], run.path / "drops.png", title, **marks)
        plots.goodput_plot(samples, run.hosts(), run.path / "goodput.png", title, **marks)
        images = ["memory.png", "drops.png", "goodput.png"]
    out = run.path / "report.html"
    out.write_text(html.run_page(run.summary, evidence(run.summary), images))
    return out


def build_compare_report(batch_dir: Path) -> Path:
    """A report of a compare or sweep folder (its runs.json): one table, combined plots
    (and the sweep's grid when the runs have parameters), links to each run's report.

    Runs listed without a summary.json (not started, or still running) are left out.
    """
    batch = results.open_batch(Path(batch_dir))
    runs = batch.runs()
    plots.compare_plot([(r, r.samples()) for r in runs], batch.path / "compare.png")
    sweep = None
    if batch.is_sweep:
        plots.sweep_plot(runs, batch.param_keys, batch.path / "sweep.png")
        plots.sweep_time_plot(runs, batch.param_keys, batch.path / "sweep-time.png")
        sweep = results.sweep_table(runs, batch.param_keys)
    # summaries.json: each summary with its label, for students and scripts (the labs cat it)
    (batch.path / "summaries.json").write_text(
        json.dumps([{**r.summary, "label": r.label} for r in runs], indent=2))
    links = [(e.label, f"{e.dir}/report.html") for e in batch.entries
             if (batch.run_path(e) / "report.html").exists()]
    images = [i for i in ("sweep.png", "sweep-time.png", "compare.png")
              if (batch.path / i).exists()]
    groups = results.batch_groups(batch, runs)
    results.write_stats(batch, runs, groups)     # per policy or point: medians, intervals
    stats = results.stats_table(groups, runs)
    checked = validation.validation(runs) if validation.is_validation(runs) else None
    out = batch.path / "report.html"
    out.write_text(html.compare_page(batch.title, results.table(runs), images, links,
                                     stats, results.STATS_NOTE, checked, sweep))
    return out
