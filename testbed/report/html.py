"""``report.html``: the summary and the plots of a run, or of runs side by side.

Plain HTML with the PNGs beside it (relative links), readable offline and printable.
Everything shown that comes from a folder (labels, values, the summary) is escaped here;
callers pass plain text, never markup.
"""

from __future__ import annotations

import html
import json
from typing import Any, Optional

from ..results import Table
from ..validation import NOTE, Validation, footnote_lines

STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.completed{color:#1a7f37}.lockup{color:#cf222e}.degraded{color:#9a6700}
img{max-width:100%}pre{background:#f6f8fa;padding:1em;overflow:auto}"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>{body}</body></html>\n")


def verdict_cell(v: Any) -> str:
    return f"<b class='{_esc(v)}'>{_esc(v)}</b>"


def run_page(summary: dict[str, Any], evidence: list[str], images: list[str]) -> str:
    rows = [("verdict", verdict_cell(summary.get("verdict"))),
            ("expected", _esc(summary.get("expected"))),
            ("policy", _esc(summary.get("policy"))),
            *policy_file_rows(summary.get("policy_file")),
            ("status", _esc(summary.get("status"))),
            ("duration", f"{_esc(summary.get('duration_s'))} s")]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    ev = "".join(f"<li>{_esc(line)}</li>" for line in evidence)
    imgs = "".join(f"<p><img src='{_esc(i)}' alt='{_esc(i)}'></p>" for i in images)
    raw = _esc(json.dumps(summary, indent=2))
    return page(f"{summary.get('scenario')}: {summary.get('verdict')}",
                f"<table>{table}</table><h2>Evidence</h2><ul>{ev}</ul>{cycle_section(summary)}"
                f"<h2>Plots</h2>{imgs}<h2>summary.json</h2><pre>{raw}</pre>")


def policy_file_rows(pf: Any) -> list[tuple[str, str]]:
    """A policy file's row (lab 6): the copy the run kept, and its SHA-256."""
    if not isinstance(pf, dict):
        return []
    sha = f"<code>{_esc(pf.get('sha256'))}</code>"
    return [("policy file", f"{_esc(pf.get('path'))}, sha256 {sha}")]


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def cycle_section(summary: dict[str, Any]) -> str:
    """A lockup's wait-for cycle, one row per edge with its counter ('' when none)."""
    lk = summary.get("lockup") or {}
    edges = (lk.get("cycle") or {}).get("edges") or []
    if not edges:
        return ""
    rows = "".join(f"<tr><td>{_esc(e['waiter'])}</td><td>{_esc(e['waits_for'])}</td>"
                   f"<td>{_esc(_count(e['counter']))} {_esc(e['unit'])}</td>"
                   f"<td>{_esc(e.get('note', ''))}</td></tr>" for e in edges)
    return ("<h2>Wait-for cycle</h2><p>What holds the machine, from the emulated state at "
            f"t={_esc(lk.get('t'))} s (stuck for {_esc(lk.get('stuck_for_s'))} s):</p>"
            "<table><tr><th>waiter</th><th>waits for</th><th>counter</th><th>note</th></tr>"
            f"{rows}</table>")


def table_html(table: Table) -> str:
    """The comparison table, every cell escaped; the verdict cell coloured."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(table, i, c)}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in table.rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(table: Table, column: int, text: str) -> str:
    return verdict_cell(text) if column == table.verdict_column else _esc(text)


def compare_page(title: str, table: Table, images: list[str],
                 links: list[tuple[str, str]], stats: Optional[Table] = None,
                 stats_note: str = "", checked: Optional[Validation] = None,
                 sweep: Optional[Table] = None) -> str:
    imgs = "".join(f"<p><img src='{_esc(i)}' alt='{_esc(i)}'></p>" for i in images)
    lk = "".join(f"<li><a href='{_esc(h)}'>{_esc(t)}</a></li>" for t, h in links)
    by_point = "" if sweep is None else f"<h2>By grid point</h2>{table_html(sweep)}"
    return page(title, f"{table_html(table)}{by_point}{validation_section(checked)}"
                       f"{stats_section(stats, stats_note)}{imgs}<h2>Runs</h2><ul>{lk}</ul>")


def validation_section(checked: Optional[Validation]) -> str:
    """The model against the kernel (``compare --clients``), with its footnotes."""
    if checked is None:
        return ""
    notes = "".join(f"<li>{_esc(line)}</li>" for line in footnote_lines(checked))
    return (f"<h2>The model against the kernel</h2><p>{_esc(NOTE)}</p>"
            f"{table_html(checked.table)}<ul>{notes}</ul>")


def stats_section(stats: Optional[Table], note: str) -> str:
    """The statistics of repeated runs (``stats.json``), when the batch has them."""
    if stats is None:
        return ""
    return (f"<h2>Statistics</h2><p>{_esc(note)} (also in <a href='stats.json'>stats.json</a>)"
            f"</p>{table_html(stats)}")
