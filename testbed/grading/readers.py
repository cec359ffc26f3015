"""What graders and solutions read: a run folder, a compare or sweep folder, the answers.

Everything that can be missing or wrong raises :class:`~.errors.CheckFailed` with one
sentence a student understands. The folders are read by :mod:`testbed.results` (the
testbed's one reader of run, compare and sweep folders): these classes add the sentences
and the views graders need, and compute nothing that reader already does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import yaml

from .. import results
from .errors import CheckFailed, LabError, NotGradedHere

# -- what graders read -------------------------------------------------------------------

def _where(path: Path, work: Optional[Path]) -> str:
    """A path as the student typed it: relative to the work folder when inside it."""
    if work is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(work).resolve()))
        except ValueError:
            pass
    return str(path)


class RunFolder:
    """One run folder, as ``testbed run`` (or one run of compare/sweep) left it."""

    def __init__(self, path: Path, name: Optional[str] = None):
        self.path = Path(path)
        self.name = name or str(path)
        outcome = results.read_run(self.path)
        if outcome is None:
            raise CheckFailed(f"{self.name} is not a finished run folder (no readable "
                              f"summary.json): run the step that makes it, and let it finish")
        self.outcome: results.RunOutcome = outcome
        self.summary: dict[str, Any] = outcome.summary
        self._samples: Optional[list[dict[str, Any]]] = None
        self._scenario: Optional[dict[str, Any]] = None

    @classmethod
    def open(cls, path: Path, work: Optional[Path] = None) -> "RunFolder":
        path = Path(path)
        name = _where(path, work)
        if not path.is_dir():
            raise CheckFailed(f"there is no run folder {name}: run the step that makes it "
                              f"(with --out {name}) from your work folder")
        return cls(path, name)

    # the summary
    @property
    def verdict(self) -> Optional[str]:
        return self.outcome.verdict

    @property
    def policy(self) -> str:
        return self.outcome.policy

    @property
    def finished(self) -> bool:
        return self.outcome.finished

    @property
    def client(self) -> str:
        """``kernel`` for the kernel client (whose policy is recorded as gorman-3.6 too),
        else the emulated client's policy."""
        return "kernel" if self.outcome.client_kind == "kernel" else self.policy

    def counter_rise(self, name: str) -> int:
        """The rise of a cumulative counter over the load (0 when not recorded)."""
        return self.outcome.counter_rise(name) or 0

    def drops(self, cls: str, reason: Optional[str] = None) -> int:
        """Received frames dropped of class ``memalloc`` (storage) or ``other``."""
        return self.outcome.drops(cls, reason)

    def tx_drops(self, cls: str, reason: Optional[str] = None) -> int:
        """Transmitted frames dropped of class ``memalloc`` or ``other`` (0 for a run
        summarised before they were split by class)."""
        return self.outcome.tx_drops(cls, reason) or 0

    @property
    def time_s(self) -> float:
        """Seconds to the outcome: the lockup, or the completion of writeback (0 if the
        run recorded neither)."""
        return self.outcome.time_s or 0.0

    # the client's metric stream, up to the outcome
    @property
    def samples(self) -> list[dict[str, Any]]:
        if self._samples is None:
            got = self.outcome.samples(until_outcome=False)
            if not got:
                raise CheckFailed(f"{self.name}/client.ndjson is missing or empty: the run "
                                  f"did not record the client's memory (a run that did "
                                  f"not finish?); ask your TA")
            self._samples = results.until_end(got, self.summary)
        return self._samples

    @property
    def all_samples(self) -> list[dict[str, Any]]:
        """Every sample, also those after the outcome (the client shutting down)."""
        self.samples                      # noqa: B018  (raises if there are none)
        return self.outcome.samples(until_outcome=False)

    def series(self, key: str) -> list[tuple[float, Any]]:
        return [(s["t"], s.get(key, 0)) for s in self.samples]

    def reached_min(self) -> bool:
        """Did free memory go down to the sample's own min watermark (a kernel's includes
        its boost) in any sample?"""
        return any(isinstance(s.get("free"), int) and isinstance(s.get("wmark_min"), int)
                   and s["free"] <= s["wmark_min"] for s in self.samples)

    @property
    def hung_tasks(self) -> int:
        """The hung-task warnings a guest counted up to the outcome (its last sample)."""
        return int(self.samples[-1].get("hung_tasks") or 0)

    def peak(self, key: str) -> float:
        return max((s.get(key) or 0) for s in self.samples)

    def first(self, pred: Callable[[dict[str, Any]], bool]) -> Optional[dict[str, Any]]:
        """The first sample for which ``pred`` holds (None if none)."""
        return next((s for s in self.samples if pred(s)), None)

    def last_progress_t(self) -> float:
        """The time of the last sample in which writeback_bytes grew."""
        last_t, last_v = 0.0, None
        for s in self.samples:
            v = s.get("writeback_bytes", 0)
            if last_v is None or v > last_v:
                last_t, last_v = s["t"], v
        return last_t

    # the scenario as run
    @property
    def scenario(self) -> dict[str, Any]:
        if self._scenario is None:
            try:
                self._scenario = yaml.safe_load((self.path / "scenario.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                raise CheckFailed(f"{self.name}/scenario.yaml is missing or unreadable: "
                                  f"hand in the run folder as the run left it")
        return self._scenario

    def setting(self, dotted: str) -> Any:
        """A scenario value by its dotted key (``client.reserve_pages``)."""
        node: Any = self.scenario
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def __repr__(self) -> str:
        return f"<RunFolder {self.name} {self.policy} {self.verdict}>"


@dataclass
class BatchRun:
    label: str
    params: dict[str, str]
    run: RunFolder


class BatchFolder:
    """A ``testbed compare`` or ``testbed sweep`` folder: ``runs.json`` and its runs."""

    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.name = name
        batch = results.read_batch(self.path)
        if batch is None:
            raise CheckFailed(f"{name} has no readable runs.json: it is not a compare or "
                              f"sweep folder, or the command did not finish")
        self.batch: results.Batch = batch
        self.runs: list[BatchRun] = []
        for e in batch.entries:
            where = f"{name}/{e.dir}"
            if not batch.run_path(e).is_dir():
                raise CheckFailed(f"{where} is listed in runs.json but missing: hand in "
                                  f"the folder as the command left it")
            self.runs.append(BatchRun(e.label, dict(e.params), RunFolder(batch.run_path(e), where)))

    @classmethod
    def open(cls, path: Path, work: Optional[Path] = None) -> "BatchFolder":
        name = _where(Path(path), work)
        if not Path(path).is_dir():
            raise CheckFailed(f"there is no folder {name}: run the step that makes it "
                              f"(with --out {name}) from your work folder")
        return cls(Path(path), name)

    def by_policy(self, policy: str) -> RunFolder:
        got = [r.run for r in self.runs if r.run.policy == policy]
        if not got:
            have = ", ".join(sorted({r.run.policy for r in self.runs})) or "none"
            raise CheckFailed(f"{self.name} has no {policy} run (it has: {have}): run the "
                              f"compare step with --policies as the handout gives it")
        return got[0]

    def policy_runs(self, policy: str) -> list[RunFolder]:
        """Every run of ``policy`` (``--repeat N`` makes N), in the order of runs.json."""
        self.by_policy(policy)                  # says which policies there are, if none
        return [r.run for r in self.runs if r.run.policy == policy]

    def values(self, key: str) -> list[str]:
        """The values a sweep took for ``key``, in order of first appearance."""
        return results.param_values(self.runs, key)

    def select(self, key: str, value: Any) -> list[BatchRun]:
        """The runs of a sweep whose parameter ``key`` is ``value`` (numbers compared as such)."""
        return [r for r in self.runs if _same(r.params.get(key), str(value))]


def _same(a: Optional[str], b: str) -> bool:
    if a is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


class Answers:
    """The student's ``answers.yaml``: typed getters whose errors are sentences."""

    def __init__(self, data: dict[str, Any], name: str):
        self.data = data
        self.name = name

    @classmethod
    def load(cls, path: Path, work: Optional[Path] = None) -> "Answers":
        name = _where(path, work)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise CheckFailed(f"{name} is missing: it came with the lab (testbed lab start); "
                              f"fill in your answers there")
        try:
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else 0
            raise CheckFailed(f"{name}:{line} is not valid YAML ({exc.problem}): check the "
                              f"indentation and the colon after each key")
        except yaml.YAMLError as exc:
            raise CheckFailed(f"{name} is not valid YAML: {exc}")
        if not isinstance(data, dict):
            raise CheckFailed(f"{name} must be a list of 'key: answer' lines")
        return cls(data, name)

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise CheckFailed(f"{self.name} has no key {key}: keep every key of the file "
                              f"you were given and write your answer after it")
        value = self.data[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise CheckFailed(f"{key} in {self.name} is still empty: answer it")
        return value

    def text(self, key: str) -> str:
        return str(self._get(key)).strip()

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(str(value).split()[0])
            except (ValueError, IndexError):
                raise CheckFailed(f"{key} in {self.name} must be a number (got {value!r})")
        if not math.isfinite(value):
            raise CheckFailed(f"{key} in {self.name} must be a finite number (got {value!r})")
        return float(value)

    def integer(self, key: str) -> int:
        value = self.number(key)
        if value != int(value):
            raise CheckFailed(f"{key} in {self.name} must be a whole number (got {value:g})")
        return int(value)

    def choice(self, key: str, options: Iterable[str]) -> str:
        opts = [str(o) for o in options]
        value = str(self._get(key)).strip()
        for o in opts:
            if value.lower() == o.lower():
                return o
        raise CheckFailed(f"{key} in {self.name} must be one of {', '.join(opts)} "
                          f"(got {value!r})")

    def conclusion(self, key: str) -> str:
        """``supported`` or ``not supported``: a hypothesis judged on the student's runs."""
        return self.choice(key, ("supported", "not supported"))

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise CheckFailed(f"{key} in {self.name} must be a mapping of 'value: answer' "
                              f"lines indented under it")
        return value


def fill_answers(path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` into an answers file after their keys, keeping its comments.

    Used by the reference solutions: ``key:`` lines of the template get the value
    (mappings in flow style, ``{1: 200, 3: 400}``); a key the template lacks is an error.
    """
    lines = Path(path).read_text().splitlines()
    todo = dict(values)
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z_][\w]*):", line)
        if m and m.group(1) in todo:
            value = todo.pop(m.group(1))
            text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            text = text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()
            lines[i] = f"{m.group(1)}: {text}"
    if todo:
        raise LabError(f"{path}: no key(s) {', '.join(todo)} in the answers template")
    Path(path).write_text("\n".join(lines) + "\n")


class Key:
    """A lab's multiple-choice key (``key.yaml`` of the instructor's tree)::

        why_no_progress:
          answer: b
          why: {a: "the target did answer: ...", c: "...", d: "..."}

    Absent in a student copy: a check that needs it is then not graded locally
    (:class:`NotGradedHere`), and the course's autograder, which runs on the
    instructor's tree, grades it.
    """

    def __init__(self, data: Optional[dict[str, Any]], path: Path):
        self.data = data
        self.path = path

    @classmethod
    def load(cls, path: Path) -> "Key":
        path = Path(path)
        if not path.exists():
            return cls(None, path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise LabError(f"{path}: not valid YAML: {exc}")
        if not isinstance(data, dict):
            raise LabError(f"{path}: must map each question's key to its answer and why")
        for k, v in data.items():
            if not isinstance(v, dict) or "answer" not in v:
                raise LabError(f"{path}: {k}: needs 'answer:' (and 'why:' per wrong option)")
        return cls(data, path)

    def answer(self, key: str) -> str:
        """The right option of question ``key``."""
        if self.data is None:
            raise NotGradedHere(f"{key}: graded by your instructor (the key is not in the "
                                f"student copy)")
        if key not in self.data:
            raise LabError(f"{self.path}: no entry for {key}")
        return str(self.data[key]["answer"]).strip().lower()

    def why(self, key: str, said: str) -> str:
        """Why option ``said`` of question ``key`` is wrong (for instructors)."""
        if self.data is None:
            return ""
        return str((self.data.get(key, {}).get("why") or {}).get(said, ""))
