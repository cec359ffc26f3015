"""The results store: one SQLite database that indexes every run.

A run folder is the unit of truth; the database is an index over run folders, so that a
campaign of hundreds of runs can be filtered and exported without walking the folders.
Every run of ``testbed run``, ``compare``, ``sweep`` and ``claims`` is recorded when it
ends (:func:`record_run`): scenario, policy, the batch's parameters, verdict, the
figures of :data:`testbed.results.FIGURES` (and each bulk host's goodput) and of its
own fidelity (:data:`testbed.results.FIDELITY_FIGURES`), its ``validity`` (``invalid``:
past a fidelity bound, :mod:`testbed.fidelity`), the
orchestrator's step timings, the run folder's path, the code version and the machine.
Everything recorded is read from the folder through :mod:`testbed.results`, the one
reader of run folders; what the folder did not hold yet (the command, the code version
and the machine) is first written into it as ``provenance.json``. So
:func:`rebuild` regenerates the same database from the folders alone.

Where: ``runs/results.db`` beside the default run folders (relative to the working
directory, as ``runs/`` is), or the file ``$TESTBED_RESULTS_DB`` names. A run written
elsewhere with ``--out`` is indexed there too, by its absolute path.

Schema: three tables. ``runs`` has one row per run folder (``path`` is unique: recording
a folder again replaces its row); ``params``, ``figures`` and ``timings`` hold a run's
(key, value) pairs, one row each, so that a new figure or a sweep over a new key needs
no new column. The schema's version is SQLite's ``PRAGMA user_version``. A database of
an older version is upgraded by the written steps of :data:`MIGRATIONS`; one of a newer
or unknown version, or a file that is not this store, is refused with a
:class:`StoreError` that names the file. It is never read as if it were this version.

Recording must never break a run: a database that is locked (another process writing
for longer than :data:`LOCK_TIMEOUT_S`), unwritable or refused costs one warning line on
stderr, and the run's folder and verdict stand; ``testbed results --rebuild`` indexes
the folder later.
"""

from __future__ import annotations

import csv
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from . import __version__, results
from .errors import ConfigError, TestbedError

ENV = "TESTBED_RESULTS_DB"
DB_NAME = "results.db"
SCHEMA_VERSION = 2
LOCK_TIMEOUT_S = 5.0      # how long a writer waits for another process's transaction
COMMANDS = ("run", "compare", "sweep", "claims", "stress")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"   # UTC, fixed width: text order is time order

SCHEMA_V1 = """
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    path         TEXT NOT NULL UNIQUE,   -- the run folder, absolute
    batch        TEXT,                   -- its compare/sweep/claims folder, absolute
    command      TEXT,                   -- run, compare, sweep, claims, stress (NULL: unknown)
    label        TEXT NOT NULL,          -- the batch's name for the run (runs.json)
    scenario     TEXT,
    policy       TEXT,
    verdict      TEXT,                   -- completed, lockup, degraded (NULL: none reached)
    expected     TEXT,
    status       TEXT,                   -- finished, interrupted, error
    detail       TEXT,
    started      TEXT,                   -- UTC, TIME_FORMAT
    ended        TEXT,
    duration_s   REAL,
    code_version TEXT,
    hostname     TEXT,
    kernel       TEXT,
    cpus         INTEGER,
    recorded     TEXT                    -- when this row was written
);
CREATE INDEX runs_started ON runs (started);
CREATE TABLE params (run_id INTEGER NOT NULL REFERENCES runs (id), key TEXT NOT NULL,
                     value TEXT NOT NULL, PRIMARY KEY (run_id, key));
CREATE TABLE figures (run_id INTEGER NOT NULL REFERENCES runs (id), key TEXT NOT NULL,
                      value NUMERIC NOT NULL, PRIMARY KEY (run_id, key));
CREATE TABLE timings (run_id INTEGER NOT NULL REFERENCES runs (id), step TEXT NOT NULL,
                      seconds NUMERIC NOT NULL, PRIMARY KEY (run_id, step));
"""

# Upgrades, by the version they start from: MIGRATIONS[n] takes a database of version n
# to n + 1. A change of schema raises SCHEMA_VERSION and writes its step here.
MIGRATIONS: dict[int, str] = {
    # 1 -> 2: each run's validity (testbed.fidelity: valid, invalid; NULL for a run
    # summarised before runs measured their fidelity, and for the rows of version 1,
    # until `testbed results --rebuild` reads their folders again)
    1: "ALTER TABLE runs ADD COLUMN validity TEXT",
}

RUN_COLUMNS = ("path", "batch", "command", "label", "scenario", "policy", "verdict",
               "expected", "status", "detail", "started", "ended", "duration_s",
               "code_version", "hostname", "kernel", "cpus", "recorded", "validity")


class StoreError(TestbedError):
    """The results database cannot be used as it is (its version, its file)."""


def default_path() -> Path:
    """``$TESTBED_RESULTS_DB``, else ``runs/results.db``."""
    return Path(os.environ.get(ENV) or Path("runs") / DB_NAME)


# -- what a run carries besides its summary ------------------------------------------------

@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe`` of the project's checkout (``-dirty`` with local changes), or
    the package's version when it is not a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        got = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty",
                              "--tags"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return __version__
    out = got.stdout.strip()
    return out if got.returncode == 0 and out else __version__


def machine() -> dict[str, Any]:
    """This machine: hostname, kernel release, number of CPUs."""
    return {"hostname": socket.gethostname(), "kernel": platform.release(),
            "cpus": os.cpu_count()}


def utc(t: float) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(t))


def provenance(command: str) -> dict[str, Any]:
    """What ``provenance.json`` holds: the command, the code, the machine, and when."""
    return {"command": command, "code_version": code_version(), **machine(),
            "recorded": utc(time.time())}


# -- one record --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One row of the store, with its parameters, figures and timings."""

    fields: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name in RUN_COLUMNS:
            return self.fields.get(name)
        raise AttributeError(name)


def infer_command(batch: Optional[results.Batch]) -> str:
    """The command of a folder recorded before provenance.json existed: a batch with
    parameters is a sweep, one with claims.json a claims batch, another a compare."""
    if batch is None:
        return "run"
    if batch.is_sweep:
        return "sweep"
    from .commands.claims import CLAIMS     # the CLI module: imported only when needed
    return "claims" if (batch.path / CLAIMS).exists() else "compare"


def run_times(run: results.RunOutcome, recorded_only: bool = False) -> tuple[Optional[str], Optional[str]]:
    """When a run started and ended (UTC, :data:`TIME_FORMAT`): ``ended`` of its
    provenance.json (else when its summary.json was written, unless ``recorded_only``:
    a file's time does not survive a copy or an archive), ``started`` that less the
    summary's ``duration_s`` (None without a duration)."""
    ended = run.provenance.get("ended") or (None if recorded_only else utc(run.summarized_at))
    if not isinstance(ended, str) or run.duration_s is None:
        return None, ended if isinstance(ended, str) else None
    try:
        end_t = datetime.strptime(ended, TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None, None
    return utc(end_t.timestamp() - run.duration_s), ended


def to_record(run: results.RunOutcome, batch: Optional[results.Batch] = None,
              command: Optional[str] = None) -> Record:
    """A run folder as the store keeps it (everything from :mod:`testbed.results`)."""
    prov = run.provenance
    started, ended = run_times(run)
    figs = {f.key: f.value(run) for f in (*results.figures([run]), *results.FIDELITY_FIGURES)}
    return Record(
        {"path": str(run.path.resolve()),
         "batch": str(batch.path.resolve()) if batch is not None else None,
         "command": command or prov.get("command") or infer_command(batch),
         "label": run.label, "scenario": run.scenario, "policy": run.policy,
         "verdict": run.verdict, "expected": run.expected, "status": run.status,
         "detail": run.detail, "started": started, "ended": ended,
         "duration_s": run.duration_s, "code_version": prov.get("code_version"),
         "hostname": prov.get("hostname"), "kernel": prov.get("kernel"),
         "cpus": prov.get("cpus"), "recorded": utc(time.time()), "validity": run.validity},
        dict(run.params), {k: v for k, v in figs.items() if v is not None},
        run.timings)


# -- the database --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """Which runs: every field None or empty matches all. ``verdict`` ``"none"`` asks for
    runs that reached no verdict; ``since`` is a UTC time in :data:`TIME_FORMAT`."""

    scenario: Optional[str] = None
    policy: Optional[str] = None
    params: dict[str, str] = field(default_factory=dict)
    since: Optional[str] = None
    verdict: Optional[str] = None
    command: Optional[str] = None
    validity: Optional[str] = None      # valid | invalid (testbed.fidelity)

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition on ``runs`` and its arguments."""
        cond, args = ["1"], []
        for col in ("scenario", "policy", "command", "validity"):
            if getattr(self, col) is not None:
                cond.append(f"{col} = ?")
                args.append(getattr(self, col))
        if self.verdict == "none":
            cond.append("verdict IS NULL")
        elif self.verdict is not None:
            cond.append("verdict = ?")
            args.append(self.verdict)
        if self.since is not None:
            cond.append("started >= ?")
            args.append(self.since)
        for k, v in self.params.items():
            cond.append("EXISTS (SELECT 1 FROM params p WHERE p.run_id = runs.id "
                        "AND p.key = ? AND p.value = ?)")
            args += [k, v]
        return " AND ".join(cond), args


class Store:
    """An open results database (a context manager). :meth:`open` checks its version."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: Optional[Path] = None, create: bool = True) -> "Store":
        """Open (or, with ``create``, make) the database; upgrade an older schema.
        StoreError: a file of another version or not this store's; one that does not
        exist when ``create`` is false."""
        path = Path(path or default_path())
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: no results database yet (it is made by the first "
                                 f"run, or by `testbed results --rebuild`)")
            path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: every write below is in an explicit BEGIN IMMEDIATE, which
        # takes the write lock first, so concurrent writers wait their turn (up to
        # LOCK_TIMEOUT_S) instead of failing half-way through a transaction
        conn = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S, isolation_level=None)
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- writing -------------------------------------------------------------------------------

    def put(self, rec: Record) -> None:
        """Insert ``rec``, replacing the row of the same run folder."""
        with transaction(self.conn):
            self._delete("path = ?", [rec.path])
            cols = ", ".join(RUN_COLUMNS)
            cur = self.conn.execute(
                f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                [rec.fields.get(c) for c in RUN_COLUMNS])
            rid = cur.lastrowid
            self.conn.executemany("INSERT INTO params VALUES (?, ?, ?)",
                                  [(rid, k, v) for k, v in rec.params.items()])
            self.conn.executemany("INSERT INTO figures VALUES (?, ?, ?)",
                                  [(rid, k, v) for k, v in rec.figures.items()])
            self.conn.executemany("INSERT INTO timings VALUES (?, ?, ?)",
                                  [(rid, k, v) for k, v in rec.timings.items()])

    def _delete(self, cond: str, args: list[Any]) -> None:
        ids = f"SELECT id FROM runs WHERE {cond}"
        for table in ("params", "figures", "timings"):
            self.conn.execute(f"DELETE FROM {table} WHERE run_id IN ({ids})", args)
        self.conn.execute(f"DELETE FROM runs WHERE {cond}", args)

    def moved(self, old: Path, new: Path) -> int:
        """A folder was renamed: rewrite the paths of the runs in it; how many."""
        o, n = str(Path(old).resolve()), str(Path(new).resolve())
        with transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE runs SET path = ? || substr(path, ?) WHERE path = ? OR path LIKE ? "
                "ESCAPE '\\'", [n, len(o) + 1, o, _like_prefix(o)])
            self.conn.execute(
                "UPDATE runs SET batch = ? || substr(batch, ?) WHERE batch = ? OR batch LIKE ? "
                "ESCAPE '\\'", [n, len(o) + 1, o, _like_prefix(o)])
        return cur.rowcount

    # -- reading -------------------------------------------------------------------------------

    def query(self, q: Query = Query()) -> list[Record]:
        """The runs that match ``q``, oldest first."""
        where, args = q.where()
        rows = self.conn.execute(
            f"SELECT id, {', '.join(RUN_COLUMNS)} FROM runs WHERE {where} "
            f"ORDER BY started, id", args).fetchall()
        ids = [r[0] for r in rows]
        extra = {t: self._pairs(t, ids) for t in ("params", "figures", "timings")}
        return [Record(dict(zip(RUN_COLUMNS, r[1:])), extra["params"].get(r[0], {}),
                       extra["figures"].get(r[0], {}), extra["timings"].get(r[0], {}))
                for r in rows]

    def _pairs(self, table: str, ids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk in range(0, len(ids), 500):       # SQLite's limit on ? per statement
            part = ids[chunk:chunk + 500]
            for rid, k, v in self.conn.execute(
                    f"SELECT * FROM {table} WHERE run_id IN ({', '.join('?' * len(part))}) "
                    f"ORDER BY rowid", part):
                out.setdefault(rid, {})[k] = v
        return out

    def paths(self) -> list[Path]:
        """Every run folder and batch folder the store names."""
        got = self.conn.execute("SELECT path FROM runs UNION SELECT batch FROM runs "
                                "WHERE batch IS NOT NULL").fetchall()
        return [Path(p) for (p,) in got]


def _like_prefix(path: str) -> str:
    esc = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return esc + "/%"


def _upgradable(version: int) -> bool:
    """Is there a written step from ``version`` to each next one, up to this one?"""
    return 0 < version < SCHEMA_VERSION and all(v in MIGRATIONS
                                                for v in range(version, SCHEMA_VERSION))


def _execute_all(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` inside the caller's transaction (executescript
    would commit it first)."""
    for stmt in script.split(";"):
        if stmt.strip():
            conn.execute(stmt)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _version(conn: sqlite3.Connection, path: Path) -> tuple[int, bool]:
    """(user_version, has tables); StoreError when the file is not a database."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            raise
        raise StoreError(f"{path}: not a results database ({exc}); move it away, or "
                         f"regenerate it with `testbed results --rebuild`") from None
    return int(version), bool(tables)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file, upgrade an older one, refuse any other.
    The version is read again inside the write transaction: another process may have
    created or upgraded the file meanwhile."""
    version, has_tables = _version(conn, path)
    if version == SCHEMA_VERSION:
        return
    if (version == 0 and not has_tables) or _upgradable(version):
        with transaction(conn):
            version, has_tables = _version(conn, path)
            if version == 0 and not has_tables:
                _execute_all(conn, SCHEMA_V1)
                version = 1
            if _upgradable(version):
                for v in range(version, SCHEMA_VERSION):
                    _execute_all(conn, MIGRATIONS[v])
                version = SCHEMA_VERSION
            conn.execute(f"PRAGMA user_version = {version}")
        if version == SCHEMA_VERSION:
            return
    what = ("has tables but no schema version: not a results database" if version == 0
            else f"has schema version {version}, and this testbed reads version "
                 f"{SCHEMA_VERSION}" + (" (it was written by a newer testbed)"
                                        if version > SCHEMA_VERSION else
                                        " with no upgrade written from it"))
    raise StoreError(f"{path}: {what}; it is not read. `testbed results --rebuild` "
                     f"regenerates it from the run folders (the old file is kept beside it)")


# -- recording, which never breaks a run ---------------------------------------------------------

_warned: set[str] = set()


def _warn(db: Path, run_dir: Path, exc: BaseException) -> None:
    """One line on stderr per database and cause, however many runs a batch makes."""
    why = str(exc) if isinstance(exc, (TestbedError, sqlite3.Error, OSError)) \
        else f"{type(exc).__name__}: {exc}"
    key = f"{db}\0{why}"
    if key in _warned:
        return
    _warned.add(key)
    print(f"testbed: warning: {run_dir} not recorded in the results database {db} ({why}); "
          f"the run and its folder stand, `testbed results --rebuild` indexes it later",
          file=sys.stderr, flush=True)


def record_run(run_dir: Path, command: str, label: Optional[str] = None,
               params: Optional[results.Params] = None, batch: Optional[Path] = None,
               db: Optional[Path] = None) -> bool:
    """Record the run folder ``run_dir`` (``label`` and ``params`` as its batch's
    runs.json has them): write its provenance.json if it has none, then its row.
    False, with one warning line, when that could not be done; never raises."""
    db = Path(db or default_path())
    try:
        run = results.read_run(run_dir, label, params)
        if run is None:
            return False            # never started: nothing to index (no summary.json)
        ensure_provenance(run, command)
        got = results.read_batch(batch) if batch is not None else None
        rec = to_record(run, got, command)
        with Store.open(db) as st:
            st.put(rec)
        return True
    except Exception as exc:     # noqa: BLE001 - recording must never break a run
        _warn(db, Path(run_dir), exc)
        return False


def ensure_provenance(run: results.RunOutcome, command: str) -> None:
    """Write the run folder's provenance.json (this machine, this code) if it has none:
    by the machine that made the run (a cluster's worker writes it before sending the
    folder back, testbed.cluster), else when the run is first recorded."""
    if not run.provenance:
        doc = provenance(command)
        doc["ended"] = utc(run.summarized_at)
        results.write_provenance(run.path, doc)


def record_moved(old: Path, new: Path, db: Optional[Path] = None) -> None:
    """A folder was moved aside (``--force``): its rows follow it; never raises."""
    db = Path(db or default_path())
    if not db.exists():
        return
    try:
        with Store.open(db, create=False) as st:
            st.moved(old, new)
    except Exception as exc:     # noqa: BLE001 - as for record_run
        _warn(db, Path(old), exc)


# -- rebuilding from the folders -----------------------------------------------------------------

def scan(root: Path) -> Iterator[tuple[results.RunOutcome, Optional[results.Batch]]]:
    """Every run folder under ``root`` (``root`` itself included), with its batch when it
    is listed in a runs.json: a batch's runs are read through its runs.json (their labels
    and parameters), other folders with a summary.json as runs of their own."""
    seen: set[Path] = set()
    for dirpath, dirnames, _files in os.walk(root):
        d = Path(dirpath)
        dirnames.sort()
        batch = results.read_batch(d) if results.is_batch(d) else None
        if batch is not None:
            for run in batch.runs():
                seen.add(run.path.resolve())
                yield run, batch
            continue
        if d.resolve() in seen:
            dirnames[:] = []
            continue
        run = results.read_run(d)
        if run is not None:
            seen.add(d.resolve())
            dirnames[:] = []           # a run folder holds no other runs
            yield run, None


@dataclass
class Rebuilt:
    """What :func:`rebuild` did."""

    path: Path
    runs: int
    roots: list[Path]
    kept_old: Optional[Path] = None


def rebuild(db: Optional[Path] = None, extra_roots: Sequence[Path] = ()) -> Rebuilt:
    """Regenerate the database from the folders: the runs folder it lives in, the
    folders outside it that the old database named (when it is readable), and
    ``extra_roots``. Written to a new file that then replaces the old one; an old file
    of another version is kept beside it (``results.db.old-<time>``)."""
    db = Path(db or default_path())
    roots = [db.parent] + [Path(r) for r in extra_roots]
    kept = None
    if db.exists():
        try:
            with Store.open(db, create=False) as old:
                roots += _outside(old.paths(), db.parent)
        except StoreError:
            kept = db.with_name(f"{db.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    roots = [r for r in dict.fromkeys(r.resolve() for r in roots) if r.exists()]
    tmp = db.with_name(f"{db.name}.rebuild-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    n = 0
    try:
        with Store.open(tmp) as st:
            for root in roots:
                for run, batch in scan(root):
                    st.put(to_record(run, batch))
                    n += 1
        if kept is not None:
            os.replace(db, kept)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)
    return Rebuilt(db, n, roots, kept)


def _outside(paths: Iterable[Path], runs_dir: Path) -> list[Path]:
    """The folders (batches, or runs of their own) not under ``runs_dir``."""
    base = runs_dir.resolve()
    return [p for p in paths if not p.resolve().is_relative_to(base)]


# -- export ------------------------------------------------------------------------------------

EXPORT_COLUMNS = tuple(c for c in RUN_COLUMNS if c != "detail") + ("detail",)


def table_columns(recs: Sequence[Record]) -> list[str]:
    """The export's columns: the run's, then ``param.KEY`` for every swept key, every
    figure (results.FIGURES' order, then per-host goodput), ``timing.STEP``."""
    params = dict.fromkeys(k for r in recs for k in r.params)
    figs = dict.fromkeys([f.key for f in results.FIGURES]
                         + [k for r in recs for k in r.figures])
    steps = dict.fromkeys(k for r in recs for k in r.timings)
    return (list(EXPORT_COLUMNS) + [f"param.{k}" for k in params] + list(figs)
            + [f"timing.{k}" for k in steps])


def flat(rec: Record, columns: Sequence[str]) -> dict[str, Any]:
    """One record as the export's row (None where a run has no such value)."""
    out: dict[str, Any] = {}
    for c in columns:
        if c in RUN_COLUMNS:
            out[c] = rec.fields.get(c)
        elif c.startswith("param."):
            out[c] = rec.params.get(c[len("param."):])
        elif c.startswith("timing."):
            out[c] = rec.timings.get(c[len("timing."):])
        else:
            out[c] = rec.figures.get(c)
    return out


def export_csv(recs: Sequence[Record], out: Path) -> None:
    """One row per run; an empty cell for None."""
    cols = table_columns(recs)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in recs:
            w.writerow({k: ("" if v is None else v) for k, v in flat(r, cols).items()})


PARQUET_HINT = (".venv/bin/pip install 'pyarrow>=14' (or the project's extra: "
                ".venv/bin/pip install -e '.[results]')")


def export_parquet(recs: Sequence[Record], out: Path) -> None:
    """The same table as Parquet, with typed columns (text, integer, float)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"--export {out}: Parquet needs pyarrow, which is not installed: "
                          f"{PARQUET_HINT}; or export CSV") from None
    cols = table_columns(recs)
    rows = [flat(r, cols) for r in recs]
    types = {c: _arrow_type(pa, c) for c in cols}
    table = pa.table({c: pa.array([r[c] for r in rows], type=types[c]) for c in cols})
    pq.write_table(table, str(out))


def _arrow_type(pa: Any, column: str) -> Any:
    if column == "cpus":
        return pa.int64()
    if column in RUN_COLUMNS and column != "duration_s":
        return pa.string()
    if column.startswith("param."):
        return pa.string()      # as given on the command line, like runs.json
    return pa.float64()
