"""A policy from a Python file: ``client.policy: ./mypolicy.py``, checked before anything starts.

A policy file (lab 6, "Design your own policy") defines exactly one subclass of
:class:`~testbed.mm.policy.base.Policy` and overrides the hooks it changes, as the
built-in policies do. ``client.policy`` names either a built-in policy or such a file
(:func:`is_policy_file`: the value ends in ``.py``); a relative path is taken from the
folder of the scenario file that names it (from the current folder for ``--set`` and
``--policies``).

:func:`load_policy_file` is the one loader. The scenario checker calls it while it
builds the scenario (a field :class:`~testbed.schema.Alternative`), so every mistake
is a :class:`~testbed.schema.SchemaError` naming the policy file and its line, and a
run with a broken policy starts nothing: a file that cannot be read, a syntax error,
an exception while the module runs, no subclass or two, a hook that is not a plain
method or that takes other arguments than the memory manager passes, an ``era`` that
is not a kernel the testbed models, a hook that fails when the policy is tried, and a
load or trial still running after ``LOAD_LIMIT_S`` (an endless loop: an alarm stops it,
in the main thread, where Python can be interrupted).
Trying it means what a run does first, on a small memory manager of its own, with no
thread and no device: construct the policy, ``attach`` it, bring up a device
(``netdev_reserve_pages``: a page count), refill one receive buffer through
``rx_alloc_failed`` as if ``GFP_ATOMIC`` had failed (an Skb or a DropReason) and ask
``storage_rx_mark`` (a page count). The last two run with the memory manager's lock
held, as in a run: a hook that takes it again, which would hang a run, is an error here.

``era``: the kernel whose mechanisms the policy runs on, an
:class:`~testbed.mm.era.EraProfile` or its kernel's name (``"2.6.13"``, ``"3.6"``);
a file that declares none runs on 2.6.13, the kernel of the 2005 policies.

The storage client loads the file again in its own process, from the copy the
orchestrator puts in the run folder (:func:`copy_into_run`), whose SHA-256 the run's
summary and report name.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import shutil
import signal
import sys
import threading
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ...schema import Problem, SchemaError
from ..era import LINUX_2_6_13, PROFILES, EraProfile
from .base import Policy

SUFFIX = ".py"
DEFAULT_ERA = LINUX_2_6_13
RUN_FOLDER_DIR = "policy"           # run folder: policy/<file name>
# The hooks and the arguments their callers pass (after self).
HOOKS: dict[str, tuple[str, ...]] = {
    "netdev_reserve_pages": ("dev",),
    "rx_alloc_failed": ("dev", "length", "pages"),
    "sk_filter": ("skb", "sk", "ethertype"),
    "throttle_direct_reclaim": ("gfp", "task"),
    "storage_rx_mark": ("dev",),
    "attach": ("mm",),
}
LOAD_LIMIT_S = 10.0                 # running the module and the trial: an endless loop is an error
PROBE_PAGES = 4096                  # the trial's memory manager: 16 MiB, as the labs' clients
PROBE_MTU = 1500


def is_policy_file(name: object) -> bool:
    """Does ``client.policy`` name a file (rather than a built-in policy)?"""
    return isinstance(name, str) and name.endswith(SUFFIX)


def is_policy(policy: Policy, name: str) -> bool:
    """Is ``policy`` the one ``client.policy`` names (a built-in's name, or its file)?"""
    if is_policy_file(name):
        return policy.source is not None and Path(name).resolve() == Path(policy.source)
    return policy.source is None and policy.name == name


def label(name: str) -> str:
    """How runs name a policy: a built-in's name, or the file's name."""
    return Path(name).name if is_policy_file(name) else name


@dataclass(frozen=True)
class PolicyFile:
    """A loaded and checked policy file."""

    path: Path
    cls: type[Policy]
    era: EraProfile
    sha256: str

    def make(self, rx_reserve: int = 50, threshold: float = 0.5,
             reserve_pages: Optional[int] = None) -> Policy:
        policy = self.cls(rx_reserve=rx_reserve, threshold=threshold, reserve_pages=reserve_pages)
        policy.source = str(self.path.resolve())
        return policy

    def record(self) -> dict[str, str]:
        """What a run's summary says of it."""
        return {"name": self.path.name, "class": self.cls.__name__,
                "era": self.era.kernel, "sha256": self.sha256}


def _error(path: Path, line: int, message: str) -> SchemaError:
    return SchemaError([Problem(str(path), line, "", message)])


def resolve(name: str, file: str) -> Path:
    """The file ``client.policy`` names, relative to the scenario file ``file`` that
    gave it (the current folder when it came from no file: ``--set``, an object)."""
    p = Path(name).expanduser()
    if not p.is_absolute():
        base = Path(file).parent if file and os.path.isfile(file) else Path.cwd()
        p = base / p
    return p.resolve()


def load_policy_file(path: Path | str) -> PolicyFile:
    """Load and check one policy file (see the module docstring); SchemaError otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _error(path, 0, f"cannot read the policy file: {exc.strerror}") from None
    source = _decode(path, data)
    code = _compile(path, source)
    with _time_limit(path, "loading and trying the policy file"):
        module = _execute(path, code, hashlib.sha256(data).hexdigest())
        cls = _the_subclass(path, source, module)
        class_line = _class_lines(source).get(cls.__name__, 1)
        for hook, args in HOOKS.items():
            _check_hook(path, cls, hook, args, class_line)
        era = _era(path, source, cls)
        cls.era = era
        _probe(path, cls, class_line)
    return PolicyFile(path, cls, era, hashlib.sha256(data).hexdigest())


class _LoadTimeout(BaseException):
    """Raised in the loading thread by the alarm (not an Exception: no hook's handler
    may swallow it)."""


@contextmanager
def _time_limit(path: Path, what: str) -> Iterator[None]:
    """An error naming the line the student's code was running when ``LOAD_LIMIT_S``
    passed. Python can interrupt only the main thread (SIGALRM); elsewhere (a loader
    thread) the load runs unbounded, as any import does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _LoadTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, LOAD_LIMIT_S)
    try:
        yield
    except _LoadTimeout as exc:
        line = _line_in(path, exc.__traceback__, 0)
        raise _error(path, line, f"{what} did not finish within {LOAD_LIMIT_S:g} s "
                                 f"(an endless loop?)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _error(path, line, "the policy file is not UTF-8 text") from None


def _compile(path: Path, source: str) -> types.CodeType:
    try:
        return compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _error(path, exc.lineno or 0, f"not valid Python: {exc.msg}") from None
    except ValueError as exc:          # a NUL byte
        raise _error(path, 0, f"not valid Python: {exc}") from None


def _line_in(path: Path, tb: Optional[types.TracebackType], default: int) -> int:
    """The last line of ``path`` a traceback went through (``default`` if none)."""
    line = default
    name = str(path)
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _raised(path: Path, exc: BaseException, what: str, default: int) -> SchemaError:
    message = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    return _error(path, _line_in(path, exc.__traceback__, default), f"{what} raised {text}")


def _execute(path: Path, code: types.CodeType, digest: str) -> types.ModuleType:
    """Run the module under a name of its own (two files of one name never meet)."""
    name = f"testbed_policy_file_{digest[:16]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module          # dataclasses and typing look a class's module up
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise _raised(path, exc, "loading the policy file", 0) from None
    return module


def _class_lines(source: str) -> dict[str, int]:
    return {node.name: node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ClassDef)}


def _the_subclass(path: Path, source: str, module: types.ModuleType) -> type[Policy]:
    found = [v for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, Policy) and v is not Policy
             and v.__module__ == module.__name__]
    lines = _class_lines(source)
    found.sort(key=lambda c: lines.get(c.__name__, 0))
    if not found:
        raise _error(path, 1, "defines no subclass of Policy: write one class, "
                              "class MyPolicy(Policy), with the hooks it changes")
    if len(found) > 1:
        names = ", ".join(f"{c.__name__} (line {lines.get(c.__name__, 0)})" for c in found)
        raise _error(path, lines.get(found[1].__name__, 0),
                     f"defines {len(found)} subclasses of Policy, {names}: a policy file "
                     f"holds exactly one (helpers that are not policies are fine)")
    return found[0]


def _check_hook(path: Path, cls: type[Policy], hook: str, args: tuple[str, ...],
                class_line: int) -> None:
    """A hook the class overrides is a plain method taking what its caller passes."""
    owner = next(c for c in cls.__mro__ if hook in vars(c))
    if owner.__module__ != cls.__module__:
        return                           # the base's, or a built-in policy's
    value = vars(owner)[hook]
    func = getattr(value, "__func__", value)
    line = getattr(getattr(func, "__code__", None), "co_firstlineno", 0) or class_line
    wanted = f"def {hook}(self, {', '.join(args)})"
    if not inspect.isfunction(value):
        raise _error(path, line, f"{cls.__name__}.{hook} must be a method, {wanted}, "
                                      f"not {type(value).__name__}")
    if inspect.iscoroutinefunction(func) or inspect.isgeneratorfunction(func):
        raise _error(path, line, f"{cls.__name__}.{hook} must return its value, not be a "
                                 f"coroutine or a generator: {wanted}")
    try:
        inspect.signature(func).bind(None, *args)
    except TypeError:
        raise _error(path, line, f"{cls.__name__}.{hook}{inspect.signature(func)} takes other "
                                 f"arguments than its caller passes: {wanted}") from None


def _era(path: Path, source: str, cls: type[Policy]) -> EraProfile:
    given: Any = getattr(cls, "era", None)
    if given is None:
        return DEFAULT_ERA
    if isinstance(given, str) and given in PROFILES:
        return PROFILES[given]
    if isinstance(given, EraProfile) and given in PROFILES.values():
        return given
    kernels = ", ".join(PROFILES)
    raise _error(path, _era_line(source, cls), f"{cls.__name__}.era must be a kernel the "
                 f"testbed models ({kernels}, or LINUX_2_6_13 / LINUX_3_6 from "
                 f"testbed.mm.era), not {given!r}")


def _era_line(source: str, cls: type[Policy]) -> int:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for stmt in node.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                    [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
                if any(isinstance(t, ast.Name) and t.id == "era" for t in targets):
                    return stmt.lineno
            return node.lineno
    return 1


class _ProbeLock:
    """The memory manager's lock while a policy is tried: a hook that takes it while its
    caller holds it (``rx_alloc_failed``, ``storage_rx_mark``) would hang a run for good;
    here it raises instead, so that the loader can say which line does it."""

    def __init__(self) -> None:
        self.held = False

    def __enter__(self) -> "_ProbeLock":
        if self.held:
            raise RuntimeError("the memory manager's lock is already held here: this hook "
                               "is called with it held (use the *_locked calls, no `with "
                               "self.mm.lock`)")
        self.held = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.held = False


def _probe(path: Path, cls: type[Policy], class_line: int) -> None:
    """What a run does first, on a small memory manager of its own (no thread, no device):
    construct, attach, bring a device up, refill a buffer through ``rx_alloc_failed`` as
    if ``GFP_ATOMIC`` had failed, ask ``storage_rx_mark``."""
    from ..manager import MemoryManager      # the manager imports the policies
    step = f"{cls.__name__}()"
    try:
        policy = cls(rx_reserve=50, threshold=0.5, reserve_pages=None)
        step = f"{cls.__name__}.attach"
        mm = MemoryManager(PROBE_PAGES, policy=policy)
        step = f"{cls.__name__}.netdev_reserve_pages"
        pages = policy.netdev_reserve_pages(_probe_dev(mm))
        _count(path, cls, "netdev_reserve_pages", pages)
        step = "bringing up a device"
        dev = mm.register_netdev("probe0", PROBE_MTU)
        mm.lock = lock = _ProbeLock()           # the hooks below run with it held
        with lock:
            step = f"{cls.__name__}.rx_alloc_failed"
            got = policy.rx_alloc_failed(dev, dev.rx_buf_len, dev.skb_pages)
            _skb_or_drop(path, cls, got)
            step = f"{cls.__name__}.storage_rx_mark"
            mark = policy.storage_rx_mark(dev)
        _count(path, cls, "storage_rx_mark", mark)
    except SchemaError:
        raise
    except Exception as exc:
        raise _raised(path, exc, f"trying the policy, {step}", class_line) from None


def _skb_or_drop(path: Path, cls: type[Policy], value: Any) -> None:
    from ..skbuff import DropReason, Skb
    if not isinstance(value, (Skb, DropReason)):
        func = getattr(cls, "rx_alloc_failed")
        raise _error(path, func.__code__.co_firstlineno, f"{cls.__name__}.rx_alloc_failed "
                     f"must return an Skb or a DropReason, not {value!r}")


def _probe_dev(mm: Any) -> Any:
    from ..skbuff import NetDev
    return NetDev("probe0", PROBE_MTU, mm.rx_reserve, mm.era.rx_ring, mm.era)


def _count(path: Path, cls: type[Policy], hook: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        func = getattr(cls, hook)
        raise _error(path, func.__code__.co_firstlineno, f"{cls.__name__}.{hook} must return "
                     f"a number of pages (an int, at least 0), not {value!r}")


def copy_into_run(name: str, run_dir: Path) -> tuple[Path, PolicyFile]:
    """Copy the policy file into the run folder (``policy/<name>``) and load the copy:
    the run uses, and its folder keeps, exactly the file the summary names."""
    dest = (Path(run_dir) / RUN_FOLDER_DIR / Path(name).name).resolve()  # for any cwd
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(name, dest)
    return dest, load_policy_file(dest)


__all__ = ["DEFAULT_ERA", "HOOKS", "PolicyFile", "RUN_FOLDER_DIR", "copy_into_run",
           "is_policy", "is_policy_file", "label", "load_policy_file", "resolve"]
