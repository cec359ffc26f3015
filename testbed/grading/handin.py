"""Verified hand-ins: ``testbed lab submit`` packs a work folder, ``testbed lab grade``
checks the archive and grades it.

What is packed (:func:`submit`): the student's ``answers.yaml``, ``predictions.json``
when the student recorded predictions (:mod:`.predictions`: each with the time it was
recorded, which the grader compares with the runs' own start times), and the folders the
lab's grader reads, which are the ``--out`` folders of the handout's commands (a compare or
sweep folder with its runs, or one run folder), into one ``.tar.gz``. Each run folder
goes in as the run left it, less the target's disk image (``lun.img``: hundreds of MiB,
read by no grader) and the plots and pages the report draws from the other files. The
archive's ``handin.json`` (:class:`Manifest`) lists every file with its SHA-256, and per
run folder its run id (``client-config.json``), the fingerprint of its metric stream
(the SHA-256 of ``client.ndjson``), and the code version and machine its
``provenance.json`` recorded; and when it was packed.

The manifest proves only that nothing changed after packing: the student wrote it. So
grading trusts no summary. Every run folder is summarised again from its own records
(:func:`check_run`: :func:`testbed.report.summary.summarize`, the function that wrote
``summary.json`` in the first place), and a folder whose ``summary.json`` disagrees on any
figure a grader reads is refused, naming the file and the figure. The client's own
account (``client-outcome.json``), from which the summary takes the verdict, is checked
against the metric stream in turn: a lockup needs samples that show it, and the bytes
written back and the drop counters must lie within what the stream recorded (the
counters only grow, so the outcome's lie between the sample before it and the last).

:func:`unpack` opens an archive into a temporary folder that is always removed; a
broken archive, a member that is not a plain file, a missing, added or changed file is a
:class:`HandinError` naming the archive and the file. :func:`grade_batch` grades a
folder of archives and flags run folders handed in twice: the same run id or the same
stream fingerprint in two submissions (or twice in one); :func:`ta_rows` gives every
verified hand-in's short answers, with the rubric, for a TA (:mod:`.shortanswers`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from .. import results, scenario as scenario_mod
from ..errors import ConfigError, TestbedError
from ..report.summary import drops_by_reason, summarize
from ..store import code_version, utc
from . import shortanswers
from .course import ANSWERS, Lab, get_lab, graded_folders
from .errors import CheckFailed, LabError
from .predictions import RECORD as PREDICTIONS
from .readers import Answers
from .runner import GRADE_TIMEOUT_S, Grade, check

MANIFEST = "handin.json"
FORMAT = 1
SUFFIX = ".tar.gz"
STREAM = "client.ndjson"             # the client's metric stream: the run's fingerprint
OUTCOME = "client-outcome.json"      # the client's own account of its outcome
RUN_CONFIG = "client-config.json"    # holds the run id
SCENARIO = "scenario.yaml"           # the scenario as run
EXCLUDED_NAMES = {"lun.img"}         # the target's disk image: large, read by no grader
EXCLUDED_SUFFIXES = {".png", ".html"}  # drawn by the report from the other files
MAX_UNPACKED_BYTES = 1 << 30         # an archive that unpacks to more is refused
LOCKUP_SAMPLE_SLACK_S = 1.0          # the first sample showing a lockup follows the proof
# summary.json's figures that graders read (through testbed.results and RunFolder);
# duration_s, detail and timings are wall-clock facts of the run, not recomputable
GRADED_KEYS = ("scenario", "policy", "expected", "verdict", "status", "reasons", "lockup",
               "stalls", "integrity", "writeback", "drops", "goodput", "client_verdict",
               "end_t", "faults", "recoveries")
# of those, the ones every summary has had: the verdict and the figures testbed.results
# reads. The others came later (faults, recoveries, ...): a run made by an older code
# version lacks them, and graders then read them as empty, so only their values are checked
REQUIRED_KEYS = ("scenario", "policy", "expected", "verdict", "status", "lockup",
                 "integrity", "writeback", "drops", "goodput", "end_t")


class HandinError(LabError):
    """A hand-in cannot be packed, or an archive cannot be trusted (the message names the
    archive and the file)."""


# -- the manifest ------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRecord:
    """One run folder of a hand-in, as the manifest records it."""

    path: str                  # inside the archive, e.g. runs/none/none-1
    run_id: str
    fingerprint: str           # SHA-256 of its client.ndjson
    code_version: str
    machine: str

    @classmethod
    def of(cls, run_dir: Path, rel: str) -> "RunRecord":
        config = results.read_json(run_dir / RUN_CONFIG) or {}
        prov = results.read_json(run_dir / results.PROVENANCE) or {}
        machine = (f"{prov['hostname']} ({prov.get('kernel')}, {prov.get('cpus')} CPUs)"
                   if prov.get("hostname") else "not recorded")
        return cls(rel, str(config.get("run_id") or "not recorded"),
                   sha256(run_dir / STREAM) if (run_dir / STREAM).is_file() else "",
                   str(prov.get("code_version") or "not recorded"), machine)


@dataclass
class Manifest:
    lab: int
    packed_at: str             # UTC, testbed.store's TIME_FORMAT
    code_version: str          # of the project that packed it
    files: dict[str, str]      # path in the archive -> SHA-256
    runs: list[RunRecord]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "lab": self.lab, "packed_at": self.packed_at,
                "code_version": self.code_version, "files": self.files,
                "runs": [r.__dict__ for r in self.runs]}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Manifest":
        bad = HandinError(f"{where}: {MANIFEST} is not a hand-in manifest (pack it again "
                          f"with `testbed lab submit`)")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise bad
        files, runs = data.get("files"), data.get("runs")
        if (not isinstance(data.get("lab"), int) or not isinstance(files, dict)
                or not isinstance(runs, list)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise bad
        try:
            records = [RunRecord(**{k: str(r[k]) for k in RunRecord.__dataclass_fields__})
                       for r in runs]
        except (TypeError, KeyError):
            raise bad
        return cls(data["lab"], str(data.get("packed_at")), str(data.get("code_version")),
                   dict(files), records)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- what a lab's grader reads -------------------------------------------------------------

def run_folders(folder: Path) -> list[Path]:
    """The run folders of a compare or sweep folder (those runs.json lists), or the
    folder itself when it is one run."""
    batch = results.read_batch(folder)
    if batch is None:
        return [folder]
    return [batch.run_path(e) for e in batch.entries]


def _packed(path: Path) -> bool:
    return path.name not in EXCLUDED_NAMES and path.suffix not in EXCLUDED_SUFFIXES


# -- packing -------------------------------------------------------------------------------

def submit(lab: Lab, work: Path, out: Optional[Path] = None) -> tuple[Path, Manifest]:
    """Pack the answers and the run folders of ``work`` into one archive; return it and
    its manifest. Every run folder is checked first (:func:`check_run`), so a student
    learns of a folder the grader would refuse now rather than from the grade."""
    work = Path(work)
    out = Path(out) if out else work / f"lab{lab.number}-handin{SUFFIX}"
    if not (work / ANSWERS).is_file():
        raise HandinError(f"{work / ANSWERS}: missing: it came with the lab (testbed lab "
                          f"start {lab.number}); answer it, then submit")
    files = [work / ANSWERS]
    if (work / PREDICTIONS).is_file():     # the predictions and when each was recorded
        files.append(work / PREDICTIONS)
    runs: list[RunRecord] = []
    for name in graded_folders(lab):
        folder = work / name
        if not folder.is_dir():
            raise HandinError(f"{folder}: missing: run the step of the handout that makes "
                              f"it (with --out {name}) before you submit")
        for run_dir in run_folders(folder):
            if not run_dir.resolve().is_relative_to(folder.resolve()):
                raise HandinError(f"{folder / results.INDEX}: lists {run_dir}, which is "
                                  f"not inside {name}")
            rel = run_dir.relative_to(work).as_posix()
            check_run(run_dir, rel)
            runs.append(RunRecord.of(run_dir, rel))
        files += sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                        and _packed(p))
    manifest = Manifest(lab.number, utc(time.time()), code_version(),
                        {p.relative_to(work).as_posix(): sha256(p) for p in files}, runs)
    _write_archive(out, work, files, manifest)
    return out, manifest


def _write_archive(out: Path, work: Path, files: list[Path], manifest: Manifest) -> None:
    """Write the archive beside ``out`` and rename it there: no half archive is left,
    also on Ctrl-C."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".handin-", suffix=SUFFIX, dir=out.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            data = json.dumps(manifest.to_json(), indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            for p in files:
                tar.add(p, arcname=p.relative_to(work).as_posix(), recursive=False)
        os.chmod(tmp, 0o644)              # mkstemp's 0600 would hide it from a TA
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


# -- unpacking and verifying -----------------------------------------------------------------

@dataclass
class Submission:
    """An unpacked archive: its folder (a work folder for the grader) and manifest."""

    archive: Path
    root: Path
    manifest: Manifest

    @property
    def student(self) -> str:
        return student_name(self.archive)


def student_name(archive: Path) -> str:
    """``alice.tar.gz`` -> ``alice``: the archive's name is the student's."""
    name = Path(archive).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(archive).stem


@contextmanager
def unpack(archive: Path) -> Iterator[Submission]:
    """Unpack ``archive`` into a temporary folder (removed on leaving) and read its
    manifest; nothing is verified yet (:func:`verify`)."""
    archive = Path(archive)
    if not archive.is_file():
        raise HandinError(f"{archive}: no such hand-in archive")
    with tempfile.TemporaryDirectory(prefix="testbed-handin-") as tmp:
        root = Path(tmp)
        _extract(archive, root)
        try:
            data = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise HandinError(f"{archive}: has no {MANIFEST}: it was not packed by "
                              f"`testbed lab submit`")
        except ValueError as exc:
            raise HandinError(f"{archive}: {MANIFEST} is not valid JSON ({exc})")
        yield Submission(archive, root, Manifest.from_json(data, str(archive)))


def _extract(archive: Path, root: Path) -> None:
    """Plain files and folders only, each inside ``root``; nothing else is written."""
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                rel = PurePosixPath(m.name)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise HandinError(f"{archive}: member {m.name!r} points outside the archive")
                if m.isdir():
                    continue
                if not m.isfile():
                    raise HandinError(f"{archive}: member {m.name} is not a plain file")
                total += m.size
                if total > MAX_UNPACKED_BYTES:
                    raise HandinError(f"{archive}: unpacks to more than "
                                      f"{MAX_UNPACKED_BYTES >> 20} MiB")
                dest = root.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None              # a regular file always has its data
                with src, open(dest, "wb") as f:
                    while block := src.read(1 << 20):
                        f.write(block)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise HandinError(f"{archive}: not a readable hand-in archive ({exc or type(exc).__name__})")


def verify(sub: Submission) -> None:
    """Every listed file there and unchanged, nothing added, and every run folder's
    summary recomputed from its own records (:func:`check_run`)."""
    where = str(sub.archive)
    have = {p.relative_to(sub.root).as_posix() for p in sub.root.rglob("*") if p.is_file()}
    have.discard(MANIFEST)
    for rel, digest in sorted(sub.manifest.files.items()):
        if rel not in have:
            raise HandinError(f"{where}: {rel} is listed in {MANIFEST} but missing from "
                              f"the archive")
        if sha256(sub.root / rel) != digest:
            raise HandinError(f"{where}: {rel} was changed after packing (its SHA-256 is "
                              f"not the one {MANIFEST} records)")
    added = sorted(have - set(sub.manifest.files))
    if added:
        raise HandinError(f"{where}: {added[0]} is not listed in {MANIFEST} (added after "
                          f"packing)")
    if ANSWERS not in have:
        raise HandinError(f"{where}: has no {ANSWERS}")
    listed = {r.path for r in sub.manifest.runs}
    found = {p.parent.relative_to(sub.root).as_posix() for p in sub.root.rglob(results.SUMMARY)}
    unlisted = sorted(found - listed)
    if unlisted:
        raise HandinError(f"{where}: the run folder {unlisted[0]} is not listed in {MANIFEST}")
    for record in sub.manifest.runs:
        if record.path not in found:          # also a path that leads out of the archive
            raise HandinError(f"{where}: the run folder {record.path} is missing")
        run_dir = sub.root / record.path
        check_run(run_dir, f"{where}: {record.path}")
        got = RunRecord.of(run_dir, record.path)
        for key in ("run_id", "fingerprint"):
            if getattr(got, key) != getattr(record, key):
                raise HandinError(f"{where}: {record.path}: the {key.replace('_', ' ')} in "
                                  f"{MANIFEST} is not the run folder's")


# -- one run folder, recomputed ---------------------------------------------------------------

def check_run(run_dir: Path, where: str) -> None:
    """Refuse a run folder whose summary.json is not what its own records give.

    ``where`` names the folder in messages. A run that did not finish claims no verdict
    (graders give it nothing) and is only checked for that.
    """
    stored = results.read_json(run_dir / results.SUMMARY)
    if stored is None:
        raise HandinError(f"{where}/{results.SUMMARY}: missing or not a JSON object")
    if stored.get("status") != "finished":
        if stored.get("verdict") is not None:
            raise HandinError(f"{where}/{results.SUMMARY}: a run that did not finish "
                              f"(status {stored.get('status')}) claims a verdict")
        return
    try:
        scenario = scenario_mod.load(run_dir / SCENARIO)
    except ConfigError as exc:
        raise HandinError(f"{where}/{SCENARIO}: not the scenario as run ({exc})")
    samples = list(results.read_ndjson(run_dir / STREAM))
    if not samples:
        raise HandinError(f"{where}/{STREAM}: missing or empty: the run's metric stream "
                          f"is what its figures are recomputed from")
    outcome = results.read_json(run_dir / OUTCOME)
    if outcome is None:
        raise HandinError(f"{where}/{OUTCOME}: missing or not a JSON object")
    check_outcome(outcome, samples, f"{where}/{OUTCOME}")
    again = json.loads(json.dumps(summarize(run_dir, scenario, float(stored.get("duration_s") or 0))))
    for key in GRADED_KEYS:
        if key not in stored and key not in REQUIRED_KEYS:
            continue
        if key not in stored:
            raise HandinError(f"{where}/{results.SUMMARY}: has no {key}: the summary was "
                              f"not written by the run")
        diff = first_difference(stored[key], again.get(key), key)
        if diff is not None:
            figure, said, got = diff
            raise HandinError(f"{where}/{results.SUMMARY}: {figure} is {said!r} there but "
                              f"{got!r} from the run's own records: the summary was not "
                              f"written by the run{_version_note(run_dir)}")


def _version_note(run_dir: Path) -> str:
    """Why a genuine summary may disagree: the run was made by another code version,
    whose rules (a lockup's proof, a bound) this one does not apply."""
    made = (results.read_json(run_dir / results.PROVENANCE) or {}).get("code_version")
    ours = code_version()
    if not made or made == ours:
        return ""
    return (f", or by code version {made}, whose rules this grader's {ours} does not "
            f"share: grade a course's runs with the version its students ran")


def check_outcome(outcome: dict[str, Any], samples: list[dict[str, Any]], where: str) -> None:
    """The client's account against its metric stream (see the module docstring)."""
    t = outcome.get("t")
    shown = [s["t"] for s in samples if s.get("lockup") is True and isinstance(s.get("t"), (int, float))]
    lockup_t = (outcome.get("lockup") or {}).get("t")
    if outcome.get("verdict") == "lockup":
        if not shown:
            raise HandinError(f"{where}: verdict is a lockup, but no sample of {STREAM} "
                              f"shows one")
        if lockup_t is None or not lockup_t - 1e-3 <= shown[0] <= lockup_t + LOCKUP_SAMPLE_SLACK_S:
            raise HandinError(f"{where}: lockup.t is not when {STREAM} first shows the lockup")
    elif shown:
        raise HandinError(f"{where}: verdict is {outcome.get('verdict')}, but {STREAM} shows "
                          f"a lockup at t={shown[0]:g}s")
    wb = max((s.get("writeback_bytes") or 0) for s in samples)
    if (outcome.get("bytes_written_back") or 0) > wb:
        raise HandinError(f"{where}: bytes_written_back is more than {STREAM} ever recorded")
    net = [s for s in samples if s.get("net")]
    if outcome.get("net") and net and isinstance(t, (int, float)):
        before = [s for s in net if s.get("t", 0) <= t]
        low = drops_by_reason(before[-1]["net"]) if before else {}
        said, high = drops_by_reason(outcome["net"]), drops_by_reason(net[-1]["net"])
        bad = _outside(said, low, high, "drops")
        if bad:
            raise HandinError(f"{where}: net counters give {bad}, which lies outside what "
                              f"{STREAM} recorded before and after the outcome")


def _outside(said: Any, low: Any, high: Any, name: str) -> Optional[str]:
    """The first counter of ``said`` not between ``low`` and ``high`` (its dotted name)."""
    if isinstance(said, dict):
        for k, v in said.items():
            got = _outside(v, (low or {}).get(k, 0) if isinstance(low, dict) else 0,
                           high.get(k, 0) if isinstance(high, dict) else 0, f"{name}.{k}")
            if got:
                return got
        return None
    return None if low <= said <= high else f"{name} = {said}"


def first_difference(said: Any, got: Any, name: str) -> Optional[tuple[str, Any, Any]]:
    """The first figure (its dotted name) where two JSON values differ, or None."""
    if isinstance(said, dict) and isinstance(got, dict):
        # a key only the recomputed summary has is a figure added since the run's code
        # version wrote it: graders treat it as absent either way
        for k in sorted(said, key=str):
            d = first_difference(said.get(k), got.get(k), f"{name}.{k}")
            if d:
                return d
        return None
    if isinstance(said, list) and isinstance(got, list) and len(said) == len(got):
        for i, (a, b) in enumerate(zip(said, got)):
            d = first_difference(a, b, f"{name}[{i}]")
            if d:
                return d
        return None
    return None if said == got else (name, said, got)


# -- grading ---------------------------------------------------------------------------------

@dataclass
class Graded:
    """One archive graded: its grade, or why it was refused; and the batch's flags."""

    archive: Path
    manifest: Optional[Manifest] = None
    grade: Optional[Grade] = None
    refused: str = ""
    flags: list[str] = field(default_factory=list)
    verified: bool = False     # its manifest's run records can be believed
    lab: Optional[Lab] = None  # the lab it was graded as
    answers: dict[str, Any] = field(default_factory=dict)   # its answers.yaml, verified

    @property
    def student(self) -> str:
        return student_name(self.archive)

    @property
    def points(self) -> float:
        return self.grade.score if self.grade else 0.0

    @property
    def max_points(self) -> Optional[float]:
        return self.grade.max_score if self.grade else None

    def line(self) -> str:
        if self.grade is None:
            return f"{self.student}: refused: {self.refused}"
        ok = sum(c.passed for c in self.grade.graded)
        return (f"{self.student}: lab {self.grade.lab.number}, {self.points:g} of "
                f"{self.grade.max_score:g} points ({ok} of {len(self.grade.graded)} checks)")

    def gradescope(self, show_values: bool = False) -> dict[str, Any]:
        """Gradescope's results.json; a refused archive scores 0 and says why."""
        if self.grade is None:
            return {"score": 0, "output": f"hand-in refused: {self.refused}",
                    "visibility": "visible", "stdout_visibility": "hidden", "tests": []}
        got = self.grade.gradescope(show_values)
        if self.flags:
            got["output"] += "\n" + "\n".join(f"flag: {f}" for f in self.flags)
        return got


def grade_submission(archive: Path, lab: Optional[Lab] = None,
                     timeout: float = GRADE_TIMEOUT_S) -> Graded:
    """Unpack, verify and grade one archive; a refusal is returned, not raised."""
    got = Graded(Path(archive))
    try:
        with unpack(archive) as sub:
            got.manifest = sub.manifest
            verify(sub)
            got.verified = True
            use = lab or get_lab(sub.manifest.lab)
            if use.number != sub.manifest.lab:
                raise HandinError(f"{archive}: a hand-in of lab {sub.manifest.lab}, not "
                                  f"lab {use.number}")
            got.lab = use
            try:
                got.answers = Answers.load(sub.root / ANSWERS).data
            except CheckFailed:                 # the grader's checks say what is wrong
                got.answers = {}
            got.grade = check(use, sub.root, timeout)
    except TestbedError as exc:       # HandinError, LabError, the grader's timeout
        got.refused = str(exc)
    return got


def grade_batch(folder: Path, lab: Optional[Lab] = None,
                timeout: float = GRADE_TIMEOUT_S) -> list[Graded]:
    """Grade every ``*.tar.gz`` of ``folder`` and flag runs handed in more than once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HandinError(f"{folder}: no such folder of hand-ins")
    archives = sorted(folder.glob(f"*{SUFFIX}"))
    if not archives:
        raise HandinError(f"{folder}: holds no hand-in archives (*{SUFFIX})")
    graded = [grade_submission(a, lab, timeout) for a in archives]
    flag_shared_runs(graded)
    return graded


def flag_shared_runs(graded: list[Graded]) -> None:
    """Flag each run folder whose run id or stream fingerprint is in another hand-in
    (or twice in the same one). Only verified hand-ins count: the manifest of a refused
    one could name anybody's runs."""
    verified = [g for g in graded if g.verified and g.manifest]
    seen: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for g in verified:
        for r in g.manifest.runs:
            for kind, value in (("run id", r.run_id), ("stream", r.fingerprint)):
                if value and value != "not recorded":
                    seen.setdefault((kind, value), []).append((g.student, r.path))
    for g in verified:
        for r in g.manifest.runs:
            for kind, value in (("run id", r.run_id), ("stream", r.fingerprint)):
                others = [f"{s}:{p}" for s, p in seen.get((kind, value), [])
                          if (s, p) != (g.student, r.path)]
                if others:
                    what = "the same run id" if kind == "run id" else "the same metric stream"
                    g.flags.append(f"{r.path} has {what} as {', '.join(others)}")


def ta_rows(graded: list[Graded]) -> list[dict[str, str]]:
    """The short answers of every hand-in, for the TA (:mod:`.shortanswers`): those of a
    refused hand-in are not read (its files cannot be believed), its rows say why."""
    out: list[dict[str, str]] = []
    for g in graded:
        lab = g.lab
        if lab is None and g.manifest is not None:
            try:
                lab = get_lab(g.manifest.lab)
            except LabError:
                lab = None
        status = "graded" if g.grade else f"refused: {g.refused}"
        out += shortanswers.rows(g.student, lab, g.answers if g.grade else {}, status)
    return out


CSV_COLUMNS = ("student", "lab", "points", "max_points", "status", "runs", "machines",
               "code_versions", "packed_at", "flags")


def write_csv(graded: list[Graded], path: Path) -> None:
    """One row per hand-in (:data:`CSV_COLUMNS`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for g in graded:
            m = g.manifest
            runs = m.runs if m else []
            w.writerow([g.student, m.lab if m else "", f"{g.points:g}",
                        "" if g.max_points is None else f"{g.max_points:g}",
                        "graded" if g.grade else f"refused: {g.refused}", len(runs),
                        "; ".join(sorted({r.machine for r in runs})),
                        "; ".join(sorted({r.code_version for r in runs})),
                        m.packed_at if m else "", "; ".join(g.flags)])
