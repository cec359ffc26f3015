"""``testbed results``: query, export and rebuild the results store (:mod:`testbed.store`).

- ``testbed results [--scenario S] [--policy P] [--param KEY=VALUE ...] [--since DATE]
  [--verdict V] [--command C]``: the runs that match, oldest first, as a plain table.
- ``--export out.csv`` / ``--export out.parquet``: the same runs, one row each with
  every parameter, figure and timing as a column (Parquet needs pyarrow).
- ``--rebuild``: regenerate the database from the run folders (the unit of truth).
- ``--db FILE``: another database than ``runs/results.db`` (or ``$TESTBED_RESULTS_DB``).

Errors (a bad filter, a database of another schema version) are one line naming the
option or the file.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .. import store
from ..errors import ConfigError
from ..results import Table, verdict_shown
from .run import print_columns

EXPORTERS = {".csv": store.export_csv, ".parquet": store.export_parquet}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="query, export or rebuild the results database",
                       description="Query, export (CSV, Parquet) or rebuild the database "
                                   "that records every run (docs/results.md).")
    p.add_argument("--db", type=Path, help=f"the database (default: ${store.ENV}, else "
                                           f"runs/{store.DB_NAME})")
    p.add_argument("--scenario", help="the scenario's name, e.g. contention")
    p.add_argument("--policy", help="e.g. gorman-3.6")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a swept parameter's value as given to sweep (repeatable: all must match)")
    p.add_argument("--since", metavar="DATE",
                   help="runs started at or after DATE (ISO 8601: 2026-11-29 or "
                        "2026-11-29T08:00; local time unless it says its zone)")
    p.add_argument("--verdict", help="completed, lockup, degraded, or none (no verdict)")
    p.add_argument("--command", choices=store.COMMANDS, help="the command that made the runs")
    p.add_argument("--validity", choices=("valid", "invalid"),
                   help="runs within their fidelity bounds, or past one (docs/results.md)")
    p.add_argument("--export", type=Path, metavar="FILE",
                   help="write the runs to FILE.csv or FILE.parquet instead of printing them")
    p.add_argument("--rebuild", action="store_true",
                   help="regenerate the database from the run folders first")
    p.set_defaults(func=cmd_results)


def parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"--param {text!r}: expected KEY=VALUE, e.g. client.reserve_pages=100")
    return key.strip(), value.strip()


def parse_since(text: str) -> str:
    """DATE as the store's UTC text; a date or time without a zone is local time."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected an ISO 8601 date or time, e.g. "
                          f"2026-11-29 or 2026-11-29T08:00") from None
    if t.tzinfo is None:
        t = t.astimezone()          # local time, as the user's clock shows it
    return t.astimezone(timezone.utc).strftime(store.TIME_FORMAT)


def query_of(args: argparse.Namespace) -> store.Query:
    return store.Query(scenario=args.scenario, policy=args.policy,
                       params=dict(parse_param(p) for p in args.param),
                       since=parse_since(args.since) if args.since else None,
                       verdict=args.verdict, command=args.command,
                       validity=args.validity)


def cmd_results(args: argparse.Namespace) -> int:
    q = query_of(args)                      # a bad filter is reported before any work
    db: Path = args.db or store.default_path()
    if args.export is not None and args.export.suffix not in EXPORTERS:
        raise ConfigError(f"--export {args.export}: the name must end in .csv or .parquet")
    if args.rebuild:
        done = store.rebuild(db)
        if done.kept_old is not None:
            print(f"the old database was of another version: kept as {done.kept_old}")
        print(f"rebuilt {done.path}: {done.runs} runs from "
              f"{', '.join(str(r) for r in done.roots)}")
    with store.Store.open(db, create=False) as st:
        recs = st.query(q)
    if args.export is not None:
        EXPORTERS[args.export.suffix](recs, args.export)
        print(f"exported {len(recs)} runs to {args.export}")
        return 0
    print_columns(table(recs))
    print(f"{len(recs)} runs in {db}")
    return 0


HEADER = ["started (UTC)", "command", "scenario", "policy", "params", "verdict",
          "time (s)", "storage drops", "other drops", "folder"]


def table(recs: list[store.Record]) -> Table:
    """The runs as plain columns (the figures the comparison table shows)."""
    return Table(list(HEADER), [_row(r) for r in recs], HEADER.index("verdict"))


def _row(r: store.Record) -> list[str]:
    t: Optional[float] = r.figures.get("time_s")
    return [(r.started or "-").replace("T", " ").rstrip("Z"), r.command or "-",
            str(r.scenario), str(r.policy),
            " ".join(f"{k}={v}" for k, v in r.params.items()) or "-",
            verdict_shown(r.verdict or "none", r.validity == "invalid"),
            f"{t:.1f}" if t is not None else "-",
            _int(r.figures.get("rx_storage_drops")), _int(r.figures.get("rx_other_drops")),
            _shown(r.path)]


def _int(v: Optional[float]) -> str:
    return "-" if v is None else str(int(v))


def _shown(path: str) -> str:
    """A folder under the working directory relative to it, others absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel

