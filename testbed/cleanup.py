"""Find and remove what runs left behind, by their tags and nothing else.

A run tags everything it makes (see :mod:`testbed.runctx`): processes by
``TESTBED_RUN=<id>`` in their environment, network namespaces by the name
``tb-<id>-*``, root-namespace links by the alias ``testbed:<id>``, iptables and nft
rules by the comment ``testbed:<id>``, Docker containers, networks and volumes by the
label ``org.testbed.run=<id>`` (:mod:`testbed.backends.docker_labels`), and its state
file ``/run/testbed/<id>.json``.

:func:`scan` reads all of these once and groups them by run id. A run is *alive*
while the owner process named in its state file exists with the same start time;
every other run id found is *dead* and :func:`clean_dead_runs` removes what it left.
Processes that live in a dead run's named namespace count as that run's, tagged or
not. Anything without a tag is never touched, and processes are ended by pid only:
SIGTERM, a grace period, then SIGKILL.

Used by ``testbed clean`` and by :meth:`testbed.runctx.RunContext.create` before a run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .backends import docker_labels
from .runctx import (ENV_VAR, NETNS_PREFIX, STATE_DIR, TAG_PREFIX, proc_starttime,
                     self_and_ancestors)

NETNS_DIR = Path("/run/netns")
RUN_ID = r"[0-9a-f]{8}"
_NETNS_RE = re.compile(rf"^{NETNS_PREFIX}({RUN_ID})-")
_TAG_RE = re.compile(rf"{TAG_PREFIX}({RUN_ID})")
_ENV_RE = re.compile(rb"(?:^|\0)" + ENV_VAR.encode() + rb"=(" + RUN_ID.encode() + rb")(?:\0|$)")
TOOL_TIMEOUT = 10.0
TMP_GRACE_S = 30.0      # a torn state file's .tmp younger than this is being written


@dataclass
class Leftovers:
    """What one run has on the machine."""

    run_id: str
    state: Optional[dict] = None
    processes: list[int] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)              # root namespace
    iptables: list[tuple[str, str, str]] = field(default_factory=list)   # (tool, table, rule)
    nft_rules: list[tuple[str, str, str, int]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)   # scratch folder, half-written state
    docker: list = field(default_factory=list)   # labelled containers, networks, volumes

    @property
    def empty(self) -> bool:
        return not (self.state or self.processes or self.netns or self.links
                    or self.iptables or self.nft_rules or self.files or self.docker)

    def describe(self) -> str:
        parts = [f"{len(self.processes)} processes", f"{len(self.netns)} namespaces",
                 f"{len(self.links)} links", f"{len(self.iptables) + len(self.nft_rules)} rules",
                 f"{len(self.docker)} Docker objects"]
        owner = f" (owner pid {self.state['pid']})" if self.state else " (no state file)"
        return f"run {self.run_id}{owner}: " + ", ".join(parts)


def is_alive(state: Optional[dict]) -> bool:
    """True while the process that owns a run's state file still runs."""
    if not state:
        return False
    try:
        pid, start = int(state["pid"]), state.get("starttime")
    except (KeyError, TypeError, ValueError):
        return False
    return proc_starttime(pid) is not None and proc_starttime(pid) == start


# -- scanning ------------------------------------------------------------------------


def scan(state_dir: Path = STATE_DIR, exclude_pids: Iterable[int] = ()) -> dict[str, Leftovers]:
    """Everything tagged on this machine, grouped by run id."""
    runs: dict[str, Leftovers] = {}

    def run(run_id: str) -> Leftovers:
        return runs.setdefault(run_id, Leftovers(run_id))

    for run_id, state in _state_files(state_dir):
        run(run_id).state = state
    for path in state_dir.iterdir() if state_dir.is_dir() else []:
        run_id = path.name.split(".")[0]
        if re.fullmatch(RUN_ID, run_id) and path.suffix != ".json" \
                and not _being_written(path, runs.get(run_id, Leftovers(run_id)).state):
            run(run_id).files.append(path)    # <id>/ scratch folder, <id>.tmp
    netns_inodes: dict[int, str] = {}
    for name in _named_netns():
        m = _NETNS_RE.match(name)
        if m:
            run(m.group(1)).netns.append(name)
            try:
                netns_inodes[(NETNS_DIR / name).stat().st_ino] = m.group(1)
            except OSError:
                pass
    # The tools (ip, iptables-save, nft, the Docker engine) answer in parallel while
    # /proc is read here: a scan runs at every run's start and end.
    with ThreadPoolExecutor(max_workers=4) as pool:
        links = pool.submit(lambda: list(_tagged_root_links()))
        rules = pool.submit(lambda: list(_tagged_iptables_rules()))
        nft = pool.submit(lambda: list(_tagged_nft_rules()))
        docker = pool.submit(docker_labels.scan)    # by the labels org.testbed.run=<id>
        excluded = set(exclude_pids) | self_and_ancestors()
        for pid, run_id in _tagged_processes(netns_inodes):
            if pid not in excluded:
                run(run_id).processes.append(pid)
        for name, run_id in links.result():
            run(run_id).links.append(name)
        for tool, table, rule, run_id in rules.result():
            run(run_id).iptables.append((tool, table, rule))
        for family, table, chain, handle, run_id in nft.result():
            run(run_id).nft_rules.append((family, table, chain, handle))
        for obj in docker.result():
            run(obj.run).docker.append(obj)
    # A run writes its state file before it tags anything: read again the state of
    # ids first seen by tag, or a run that started during this scan looks dead.
    for run_id, left in runs.items():
        if left.state is None:
            left.state = dict(_state_files(state_dir, only=run_id)).get(run_id)
    return runs


def _being_written(path: Path, owner: Optional[dict] = None) -> bool:
    """A ``<id>.tmp`` that a live run is writing. The first one exists before its
    ``<id>.json``, so a run starting at the same moment as another's scan would look dead
    and lose it (runs in parallel, ``--workers``). A complete one names its owner (the same
    pid and start time as the ``.json``): it is being written while that owner lives, and
    a run SIGKILLed between writing it and renaming it leaves one whose owner is gone.
    A torn one (killed mid-write, or caught mid-write) names nobody: only the run writes
    its own state, so its ``.json`` (``owner``), when there is one, names the writer;
    without one it is judged by its age."""
    if path.suffix != ".tmp":
        return False
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict) and "pid" in state:
            return is_alive(state)
    except FileNotFoundError:
        return True                   # gone already: replaced by its .json
    except (OSError, ValueError):
        pass                          # torn: it cannot name its owner
    if owner is not None and owner.get("pid") is not None:
        return is_alive(owner)
    try:
        return time.time() - path.stat().st_mtime < TMP_GRACE_S
    except OSError:
        return True


def find_run(run_id: str, state_dir: Path = STATE_DIR,
             exclude_pids: Iterable[int] = ()) -> Leftovers:
    """What run ``run_id`` has on the machine (possibly nothing)."""
    return scan(state_dir, exclude_pids).get(run_id, Leftovers(run_id))


def find_dead_runs(state_dir: Path = STATE_DIR) -> list[Leftovers]:
    """Runs whose owner is gone but whose tags remain."""
    return [left for left in scan(state_dir).values() if not is_alive(left.state)]


def _state_files(state_dir: Path, only: str = "*") -> Iterable[tuple[str, dict]]:
    if not state_dir.is_dir():
        return
    for path in state_dir.glob(f"{only}.json"):
        if not re.fullmatch(RUN_ID, path.stem):
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {"id": path.stem, "pid": None, "unreadable": True}
        yield path.stem, state


def _named_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def _tagged_processes(netns_inodes: dict[int, str]) -> Iterable[tuple[int, str]]:
    """(pid, run id) of processes tagged in their environment or living in a run's netns."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        m = _ENV_RE.search(env)
        if m:
            yield pid, m.group(1).decode()
            continue
        if netns_inodes:
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ino in netns_inodes:
                yield pid, netns_inodes[ino]


def _run_tool(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return ""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return ""
    return r.stdout if r.returncode == 0 else ""


def _tagged_root_links() -> Iterable[tuple[str, str]]:
    out = _run_tool(["ip", "-j", "link", "show"])
    for link in json.loads(out) if out.strip() else []:
        m = _TAG_RE.fullmatch(link.get("ifalias", "") or "")
        if m:
            yield link["ifname"], m.group(1)


def _tagged_iptables_rules() -> Iterable[tuple[str, str, str, str]]:
    for tool in ("iptables", "ip6tables"):
        table = ""
        for line in _run_tool([f"{tool}-save"]).splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-A ") and TAG_PREFIX in line:
                m = _TAG_RE.search(line)
                if m:
                    yield tool, table, line, m.group(1)


def _tagged_nft_rules() -> Iterable[tuple[str, str, str, int, str]]:
    """Native nft rules with a testbed comment (iptables-nft rules are left to iptables)."""
    family = table = chain = ""
    for line in _run_tool(["nft", "-a", "list", "ruleset"]).splitlines():
        s = line.strip()
        if m := re.match(r"table (\S+) (\S+)", s):
            family, table = m.groups()
        elif m := re.match(r"chain (\S+)", s):
            chain = m.group(1)
        elif 'comment "' + TAG_PREFIX in s and "xt " not in s:
            tag, handle = _TAG_RE.search(s), re.search(r"# handle (\d+)$", s)
            if tag and handle:
                yield family, table, chain, int(handle.group(1)), tag.group(1)


# -- removing ------------------------------------------------------------------------


def remove(left: Leftovers, grace: float = 3.0, state_dir: Path = STATE_DIR) -> None:
    """Remove everything listed in ``left``: processes, namespaces, links, rules, state."""
    docker_labels.remove(left.docker)     # first: it ends the processes in the containers
    end_processes(left.processes, grace)
    for tool, table, rule in left.iptables:
        argv = [tool, "-t", table] + shlex.split("-D" + rule[2:])
        subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT)
    for family, table, chain, handle in left.nft_rules:
        subprocess.run(["nft", "delete", "rule", family, table, chain, "handle", str(handle)],
                       capture_output=True, timeout=TOOL_TIMEOUT)
    for name in left.links:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=TOOL_TIMEOUT)
    for name in left.netns:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True,
                       timeout=TOOL_TIMEOUT)
    for path in left.files:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    (state_dir / f"{left.run_id}.json").unlink(missing_ok=True)


def end_processes(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM each pid, wait up to ``grace`` s, SIGKILL the rest; returns the killed ones."""
    pids = [p for p in pids if _running(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.02)
    stubborn = [p for p in pids if _running(p)]
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_running(p) for p in stubborn):
        time.sleep(0.02)
    return stubborn


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _running(pid: int) -> bool:
    """True unless the process is gone or a zombie (dead, only waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def clean_dead_runs(dry_run: bool = False, state_dir: Path = STATE_DIR) -> list[Leftovers]:
    """Remove (or with ``dry_run`` only list) what dead runs left; returns what was found."""
    dead = [left for left in find_dead_runs(state_dir) if not left.empty]
    if not dry_run:
        for left in dead:
            remove(left, state_dir=state_dir)
    return dead
