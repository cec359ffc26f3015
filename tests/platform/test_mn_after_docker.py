"""Plain `mn` after dockerd has run: doctor names the problem and the fix, and the fix works.

dockerd leaves iptables' FORWARD policy at DROP and br_netfilter's
bridge-nf-call-iptables at 1, and both stay after it stops. Plain Mininet puts its
Linux bridge in the root namespace, where every bridged IPv4 frame then meets that
DROP: the README's `mn --custom ...` example loses every ping. The test makes that
state itself (no dockerd needed), saves both settings first and puts them back.

mn runs as users run it, in the root namespace. Its hosts are unnamed namespaces held
by its host shells; on success it removes everything itself. When the test stops it
early, it stops exactly the processes mn started (by pid) and deletes the links mn made
(by name). Never `mn -c`, nor Ctrl-C to mn (which runs the same clean-up): both kill by
pattern (`mininet:`, `ping`, every `*-ethN` link) and would take other runs with them.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .conftest import (NF, ROOT, TESTBED, after_docker_state, assert_untouched, forward_policy,
                       sh, snapshot)

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow]

# the README's example, as a user types it
MN = ["mn", "--custom", "topologies/contention.py", "--topo", "contention,3",
      "--switch", "lxbr", "--controller", "none", "--link", "tc", "--test", "pingall"]
HOSTS = 5                                   # client, target, bulk1..3
MN_LINKS = [f"s1-eth{i}" for i in range(1, HOSTS + 1)] + ["s1"]   # ports before bridge
FIX = "sysctl -w net.bridge.bridge-nf-call-iptables=0"             # what doctor must say
# with every frame dropped each ping waits 10 s: the first host's line takes ~40 s
FIRST_LINE_TIMEOUT = 120
RUN_TIMEOUT = 120
# what snapshot() compares here: the processes of other tests running next to this one
# come and go, and this test's own are followed by pid (MnRun)
COMPARED = ("links", "netns", "iptables", "nft")


def children_of(pids: set[int]) -> set[int]:
    """All descendants of ``pids`` now (ppid read from /proc)."""
    parent = {}
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat:
            parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def net_namespaces_in_use() -> set[str]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.add(os.readlink(f"/proc/{entry}/ns/net"))
            except OSError:
                pass
    return out


def existing_links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0]
            for line in sh("ip", "-o", "link", "show").splitlines()}


class MnRun:
    """Plain mn, its output read as it comes; its host shells and their namespaces noted."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
        env["PYTHONUNBUFFERED"] = "1"          # lines as mn prints them, not at its end
        self.proc = subprocess.Popen(MN, cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.output: list[str] = []
        self.host_netns: set[str] = set()
        self.eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, pattern: str, timeout: float) -> Optional[re.Match]:
        """The first line matching ``pattern``, or None at mn's end or the timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof and (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.eof = True
                return None
            self.output.append(line)
            if line.startswith("*** Ping:"):    # every host is up: note their namespaces
                self._note_hosts()
            if m := re.search(pattern, line):
                return m
        return None

    def _note_hosts(self) -> None:
        """The hosts' namespaces (the lxbr switch's shell stays in ours)."""
        ours = os.readlink("/proc/self/ns/net")
        for pid in children_of({self.proc.pid}):
            try:
                if b"mininet:" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    self.host_netns.add(os.readlink(f"/proc/{pid}/ns/net"))
            except OSError:
                pass
        self.host_netns.discard(ours)

    def finish(self, timeout: float) -> bool:
        """Let mn end by itself (it then removes what it made), reading the rest of its
        output; False on the timeout."""
        deadline = time.monotonic() + timeout
        self.read_until(r"(?!)", timeout)        # (?!) matches nothing: read to the end
        if not self.eof:
            return False
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        """Stop mn and what it started, by pid; delete its links by name."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)     # no new commands to its hosts
            procs = children_of({self.proc.pid})
            self.proc.kill()
            self.proc.wait()
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while any(alive(p) for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [p for p in procs if alive(p)], "mn's processes outlived SIGKILL"
        for link in MN_LINKS:          # a veth goes with its peer; the bridge stays
            if link in existing_links():
                sh("ip", "link", "del", link, check=False)

    @property
    def text(self) -> str:
        return "\n".join(self.output)


def assert_mn_left_nothing(run: MnRun) -> None:
    assert len(run.host_netns) == HOSTS, \
        f"hosts' namespaces seen: {run.host_netns}; " + run.text[-1500:]
    deadline = time.monotonic() + 15        # an orphaned `ping -c1` may hold one for 10 s
    while run.host_netns & net_namespaces_in_use() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not run.host_netns & net_namespaces_in_use(), "mn's host namespaces remain"
    assert not set(MN_LINKS) & existing_links(), "mn's links remain"


@contextmanager
def plain_mn() -> Iterator[MnRun]:
    """The README's mn, stopped and cleaned by pid and name whatever happens."""
    if not shutil.which("mn"):
        pytest.fail("mn not installed: scripts/setup.sh installs mininet")
    # mn fails on an existing s1, and its failure path kills by pattern: never start it then
    assert not set(MN_LINKS) & existing_links(), "links named as mn's exist already"
    run = MnRun()
    try:
        yield run
    finally:
        run.stop()
    assert_mn_left_nothing(run)


def doctor() -> str:
    r = subprocess.run(TESTBED + ["doctor"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr      # a warning, not a blocking problem
    return r.stdout


def line_of(out: str, name: str) -> str:
    """Doctor's line for check ``name`` (after the OK/MISSING/WARN label)."""
    words = name.split()
    return next(line for line in out.splitlines() if line.split()[1:1 + len(words)] == words)


def settings() -> tuple[str, Optional[str]]:
    return forward_policy(), NF.read_text().strip() if NF.exists() else None


def test_the_example_is_the_readmes():
    assert " ".join(MN) in (ROOT / "README.md").read_text()


def test_doctor_names_the_problem_and_its_fix_works():
    before = {k: v for k, v in snapshot().items() if k in COMPARED}
    settings_before = settings()
    with after_docker_state():
        # (b) doctor names both settings, who is hit, who is not, and the fix
        out = doctor()
        assert "FORWARD policy DROP, bridge-nf-call-iptables=1" in line_of(out, "docker")
        warn = line_of(out, "plain mn")
        assert warn.startswith("WARN"), out
        for words in ("FORWARD policy DROP", "bridge-nf-call-iptables=1",
                      "plain `mn --switch lxbr` loses every ping",
                      "testbed up/run are unaffected", f"-> fix: {FIX}"):
            assert words in warn, (words, warn)
        assert "what the fix changes" in out.splitlines()[out.splitlines().index(warn) + 1]

        # (c) the README's example loses every ping: the first host's line (four pings,
        # ten seconds each) is enough; the rest would take minutes more
        with plain_mn() as broken:
            m = broken.read_until(r"^(\w+) -> (.*)$", FIRST_LINE_TIMEOUT)
            assert m, "no ping result line: " + broken.text[-2000:]
            assert m.group(2).split() == ["X"] * (HOSTS - 1), broken.text[-2000:]

        # (d) doctor's fix, as printed, and the same example passes
        sh(*shlex.split(FIX))
        assert line_of(doctor(), "plain mn").startswith("OK")
        pings = HOSTS * (HOSTS - 1)
        with plain_mn() as fixed:
            assert fixed.finish(RUN_TIMEOUT), "mn did not end after the fix: " + fixed.text[-2000:]
            assert fixed.proc.returncode == 0, fixed.text[-2000:]
            # (a dockerd setting up a network meanwhile would set it back to 1: say so)
            assert f"*** Results: 0% dropped ({pings}/{pings} received)" in fixed.text, \
                f"bridge-nf-call-iptables={NF.read_text().strip()}: " + fixed.text[-2000:]
    # (e) both settings as they were, nothing of mn's left
    assert settings() == settings_before
    after = {k: v for k, v in snapshot().items() if k in COMPARED}
    assert_untouched(before, after)
