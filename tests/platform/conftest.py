"""Fixtures of the platform tests: machine snapshots, bystanders, dockerd.

"Nothing left behind" is checked two ways: nothing tagged with the run's id remains
(:func:`assert_nothing_left`), and what was on the machine before is untouched
(:func:`snapshot` before and after compared, plus *bystanders*: an untagged process,
namespace, root-namespace veth and iptables rule made by the test, which must survive).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from testbed import cleanup
from testbed.runctx import STATE_DIR

ROOT = Path(__file__).resolve().parents[2]
TESTBED = [sys.executable, "-m", "testbed.cli"]
# what dockerd and other runs (other areas' tests, next to ours) may add and remove
# (and the bystanders of other areas' tests)
OTHERS = re.compile(r"docker|containerd|\bbr-[0-9a-f]{12}\b|\bveth[0-9a-f]{7}\b|\btb-[0-9a-f]{8}-"
                    r"|\btb-bystander-|\btbcl[0-9a-f]{4}", re.I)     # tbcl: tests/e2e/test_cluster.py


def sh(*argv: str, check: bool = True, timeout: float = 20) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r.stdout


def run_tag_of(pid: int) -> str:
    """TESTBED_RUN of a process ('' if none). Retried: the environment reads empty for a
    moment while a freshly started process is still inside exec."""
    env = b""
    for _ in range(100):
        env = Path(f"/proc/{pid}/environ").read_bytes()
        if env:
            break
        time.sleep(0.01)
    return next((e.decode().split("=", 1)[1] for e in env.split(b"\0")
                 if e.startswith(b"TESTBED_RUN=")), "")


def session_root() -> int:
    """The pytest process that started this test session: pytest-xdist's controller when
    this process is one of its workers (other workers' tests run beside ours), else us."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


def settled_processes() -> set[tuple[int, int, str]]:
    """(pid, start time, program) of user processes older than a minute, not started by
    this test session.

    Younger ones may come and go by themselves, and so do the session's own (this test's,
    and other workers' tests' next to it, each checked by its runs' tags); these must not.
    """
    ticks, root = os.sysconf("SC_CLK_TCK"), session_root()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    procs: dict[int, tuple[int, int, bytes]] = {}          # pid -> (ppid, start, cmdline)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        procs[int(entry)] = (int(fields[1]), int(fields[19]), cmdline)

    def of_session(pid: int) -> bool:
        for _ in range(64):                                # a chain of parents, not a cycle
            if pid == root:
                return True
            if pid not in procs:
                return False
            pid = procs[pid][0]
        return False

    out = set()
    for pid, (ppid, start, cmdline) in procs.items():
        if not cmdline or uptime - start / ticks < 60 or of_session(ppid):
            continue                     # kernel thread, young, or the session's
        name = cmdline.split(b"\0")[0].rsplit(b"/", 1)[-1].decode(errors="replace")
        out.add((pid, start, name))
    return out


def snapshot() -> dict[str, object]:
    """What the testbed could touch, in a comparable form."""
    ipt = [l for l in sh("iptables-save").splitlines() if not l.startswith("#")]
    ipt = [re.sub(r"\[\d+:\d+\]", "", l) for l in ipt]
    # Namespaces of runs (ours are checked by assert_nothing_left; other areas' tests may
    # run theirs next to ours) are left out; everything else must stay as it was.
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return {
        "netns": sorted(n for n in netns if not re.match(r"tb-[0-9a-f]{8}-", n)),
        "links": sorted(l.split(":")[1].strip().split("@")[0]
                        for l in sh("ip", "-o", "link", "show").splitlines()),
        "iptables": ipt,
        "nft": sh("nft", "-s", "list", "ruleset").splitlines(),
        "processes": settled_processes(),
    }


def assert_untouched(before: dict, after: dict) -> None:
    """Everything that was there before is still there, and nothing of the testbed's was added.

    Additions by others are tolerated (other areas' tests, or dockerd's own chains, may
    change the machine at the same time); the run's own things are found by their tags
    in :func:`assert_nothing_left`.
    """
    for key in before:
        gone = set(before[key]) - set(after[key])
        # dockerd adds and removes its own chains, bridges and veths as containers and
        # networks come and go; other runs' things come and go with those runs
        gone = {item for item in gone
                if not OTHERS.search(item if isinstance(item, str) else item[-1])}
        assert not gone, f"{key}: gone since before the run: {sorted(gone)}"
    added_links = set(after["links"]) - set(before["links"])
    assert not [l for l in added_links if re.search(r"-eth\d+$|^s1$", l)], added_links
    for key in ("iptables", "nft"):
        assert not [l for l in set(after[key]) - set(before[key]) if "testbed:" in l]


def assert_nothing_left(run_id: str) -> None:
    """No process, namespace, link, rule or state file of run ``run_id`` remains."""
    left = cleanup.find_run(run_id)
    # a killed process may linger a moment as the kernel reaps it
    deadline = time.monotonic() + 3
    while left.processes and time.monotonic() < deadline:
        time.sleep(0.1)
        left = cleanup.find_run(run_id)
    assert left.empty, f"leftovers: {left}"
    assert not list(STATE_DIR.glob(f"{run_id}*"))
    assert not [n for n in snapshot()["netns"] if n.startswith(f"tb-{run_id}")]


def other_runs() -> set[str]:
    """Ids of runs with a state file now (other areas' tests may be running next to ours)."""
    return {p.stem for p in STATE_DIR.glob("*.json")} if STATE_DIR.is_dir() else set()


def assert_clean_removed(stdout: str, run_id: str, others: set[str]) -> None:
    """`testbed clean` removed the dead run, unless another run's start-up sweep (which
    removes dead runs too) got there first: only possible if other runs were about."""
    if f"removed run {run_id}" in stdout:
        return
    assert others - {run_id}, f"testbed clean did not remove run {run_id}: {stdout}"
    assert "no dead runs" in stdout or "removed run" in stdout


def run_id_from_dir(runs_dir: Path) -> str:
    dirs = list(runs_dir.iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0].name.rsplit("-", 1)[1]


class Bystanders:
    """Untagged things of the machine that a run and `testbed clean` must leave alone."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.netns = "tb-bystander"              # tb- prefix, but no run id
        self.veth = f"tbby{tag}a"
        self.rule = ["-t", "raw", "-A", "OUTPUT", "-d", "127.0.0.254/32", "-m", "comment",
                     "--comment", f"bystander{tag}", "-j", "ACCEPT"]
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", f"tbby{tag}b")
        sh("ip", "link", "set", self.veth, "alias", "testbed:not-a-run")
        sh("iptables", *self.rule)
        env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
        self.proc = subprocess.Popen(["sleep", "600"], env=env)

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, "bystander process was killed"
        assert self.netns in os.listdir("/run/netns"), "bystander namespace was removed"
        assert self.veth in sh("ip", "-o", "link", "show"), "bystander veth was removed"
        check = subprocess.run(["iptables", "-t", "raw", "-C", *self.rule[3:]],
                               capture_output=True)
        assert check.returncode == 0, "bystander iptables rule was removed"

    def remove(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["iptables", "-t", "raw", "-D", *self.rule[3:]], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)


@pytest.fixture
def bystanders():
    b = Bystanders()
    try:
        yield b
    finally:
        b.remove()


def docker_answers() -> bool:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1)
    try:
        s.connect("/var/run/docker.sock")
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        return b"OK" in s.recv(1024)
    except OSError:
        return False
    finally:
        s.close()


NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def forward_policy() -> str:
    return next(line.split()[2] for line in sh("iptables", "-S", "FORWARD").splitlines()
                if line.startswith("-P FORWARD "))


@contextmanager
def after_docker_state() -> Iterator[None]:
    """FORWARD DROP and bridge-nf-call-iptables=1, as dockerd leaves them; then the
    previous values again (and br_netfilter unloaded if it was loaded here)."""
    loaded_here = not NF.exists()
    if loaded_here:
        sh("modprobe", "br_netfilter")      # dockerd loads it too
    saved_policy, saved_nf = forward_policy(), NF.read_text().strip()
    try:
        sh("iptables", "-P", "FORWARD", "DROP")
        NF.write_text("1")
        yield
    finally:
        sh("iptables", "-P", "FORWARD", saved_policy)
        NF.write_text(saved_nf)
        if loaded_here:
            sh("modprobe", "-r", "br_netfilter", check=False)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    """A running dockerd: ``scripts/docker-up.sh`` starts one if none answers, and
    ``scripts/docker-down.sh`` stops exactly that one afterwards (by pid) and puts back
    the FORWARD policy and bridge-nf-call-iptables that dockerd changed."""
    if not docker_answers() and not shutil.which("dockerd"):
        pytest.skip("dockerd not installed (scripts/setup.sh installs docker.io)")
    pidfile = tmp_path_factory.mktemp("dockerd") / "dockerd.pid"
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
    up = subprocess.run([str(ROOT / "scripts/docker-up.sh"), str(pidfile)], env=env,
                        capture_output=True, text=True, timeout=120)
    if up.returncode:
        pytest.fail(f"dockerd did not come up: {up.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([str(ROOT / "scripts/docker-down.sh"), str(pidfile)], env=env,
                       capture_output=True, timeout=120)
