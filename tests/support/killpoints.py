"""Kill points: ``testbed run`` killed at 20 points of its life, and what is left counted.

The reliability campaign of issue 15. A short scenario (:data:`SCENARIO`: one bulk host,
a writer and a downloader, about 10 s end to end) is run again and again; each time the
``testbed run`` process is killed when one observable marker appears (:data:`POINTS`,
four in each of the orchestrator's steps: bring-up, node start, the run, collection and
teardown). The markers are what the run shows from outside and nothing else: the run's
state file (``/run/testbed/<id>.json`` and the resources it lists), the files of the run
folder, the lines of the node and client streams, the run's named namespaces going
away. Polling them every few milliseconds puts the kill within a few milliseconds of
the marker, the same way on a loaded machine as on an idle one (time offsets measured
once would not). Only inside the teardown, which lasts under 0.1 s and shows nothing
between its start and its namespaces going, two points are time offsets from its start.

Two ways to die:

- **SIGKILL** of the ``testbed run`` process alone (its nodes live on, orphaned), then
  ``testbed clean``. What is left of the run is then counted by :func:`count_left`,
  which looks for itself rather than asking :mod:`testbed.cleanup`: namespaces, links,
  bridges and qdiscs (in the root namespace and in any namespace of the run still
  there), iptables and nftables rules with the run's comment, processes (tagged, in a
  namespace of the run, or naming the run's folders), mounts, tgtd control sockets,
  the run's state and scratch files, and Docker containers, networks and volumes with
  the run's label when dockerd answers. Every count must be 0.
- **Ctrl-C**: SIGINT to the run's whole process group, as a terminal sends it. The run
  tears itself down (the counts must be 0 without ``testbed clean``) and exits 130; a
  folder whose summary was not yet written when the signal came must then say
  ``status: interrupted``.

Either way, the run folder must stay readable by :mod:`testbed.results` (:func:`readable`):
its summary (if any) read with :func:`~testbed.results.read_run` and its figures
computed, every NDJSON stream read, every JSON file either an object or, for a file the
kill tore, skipped as unreadable by the one reader.

Usage (root, Mininet and tgtd): ``python -m tests.support.killpoints [--points all]
[--docker both|up|down]`` (``make killpoints``): every point, SIGKILL and Ctrl-C, with
and without dockerd (``scripts/docker-up.sh`` / ``docker-down.sh``; only a dockerd
started here is stopped), one line per point and the totals. Exits 1 if anything was
left or a folder was unreadable. tests/e2e/test_killpoints.py runs a few of the points.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from testbed.backends import docker_labels
from testbed.results import read_json, read_ndjson, read_run
from testbed.runctx import ENV_VAR, STATE_DIR, TAG_PREFIX

ROOT = Path(__file__).resolve().parents[2]
TESTBED = [sys.executable, "-m", "testbed.cli"]
NETNS_DIR = Path("/run/netns")
POLL_S = 0.003            # how often the markers are looked at
RUN_TIMEOUT_S = 120.0     # a marker not seen by then: the point is reported as missed
EXIT_TIMEOUT_S = 90.0     # a run told to stop (Ctrl-C) exits within this
CLEAN_TIMEOUT_S = 90.0
TOOL_TIMEOUT_S = 15.0
DEFAULT_QDISCS = {"noqueue", "pfifo_fast", "mq", "fq_codel", "fq"}

# The short run killed at every point: long enough that each step lasts a little while
# (the load about 4 s), short enough for 40 runs in a few minutes.
SCENARIO = """name: killpoints
expect: completed
duration_s: 8
deadline_s: 30
topology: {bulk_hosts: 1, client_bw_mbit: 40, bw_mbit: 100}
client:
  memory_mb: 32
  policy: gorman-3.6
  lockup_after_s: 15
  workloads:
    - {kind: writer, total_mb: 6, rate_mbps: 2, files: 1}
    - {kind: downloader, total_mb: 2}
target: {lun_mb: 16}
bulk: {mode: tcp, rate_mbit: 5}
"""


# -- watching a run -----------------------------------------------------------------------

@dataclass
class Watch:
    """What a running ``testbed run`` shows from outside: its state file and folder."""

    out: Path
    run_id: Optional[str] = None
    namespaces_seen: int = 0
    closing_at: Optional[float] = None

    def find_run(self) -> Optional[str]:
        """The run id, from the state file naming our folder (written first of all)."""
        if self.run_id is None and STATE_DIR.is_dir():
            for path in STATE_DIR.glob("*.json"):
                state = read_json(path) or {}
                if state.get("dir") == str(self.out.resolve()):
                    self.run_id = path.stem
        return self.run_id

    def state(self) -> dict:
        return (read_json(STATE_DIR / f"{self.run_id}.json") or {}) if self.find_run() else {}

    def registered(self, kind: str) -> bool:
        return any(r.get("kind") == kind for r in self.state().get("resources") or [])

    def has(self, name: str) -> bool:
        return (self.out / name).exists()

    def event(self, stream: str, event: str) -> bool:
        return any(e.get("event") == event for e in read_ndjson(self.out / stream))

    def client_t(self, at_least: float) -> bool:
        return any(s.get("t", -1) >= at_least and "free" in s
                   for s in read_ndjson(self.out / "client.ndjson"))

    def namespaces(self) -> int:
        """How many of the run's namespaces are there now (the most seen is kept)."""
        if not self.find_run():
            return 0
        try:
            n = sum(1 for name in os.listdir(NETNS_DIR) if name.startswith(f"tb-{self.run_id}-"))
        except OSError:
            n = 0
        self.namespaces_seen = max(self.namespaces_seen, n)
        return n

    def closing_for(self, after_s: float) -> bool:
        """report.html has been there for ``after_s``: the run context is closing (stop
        the network, sweep by tag, drop the state: under 0.1 s here; then the command
        prints its result and exits)."""
        if not self.has("report.html"):
            return False
        self.closing_at = self.closing_at or time.monotonic()
        return time.monotonic() - self.closing_at >= after_s

    def namespaces_gone(self) -> bool:
        """Every namespace of the run is gone and the state file is still there: the run
        is sweeping by tag, its last step."""
        return (self.has("report.html") and bool(self.state()) and self.namespaces_seen > 0
                and self.namespaces() == 0)


@dataclass(frozen=True)
class Point:
    """A moment of a run: a step of the orchestrator and the marker that shows it."""

    name: str
    step: str
    marker: Callable[[Watch], bool]
    what: str


POINTS: tuple[Point, ...] = (
    Point("folder", "bring-up", lambda w: w.find_run() is not None and w.has("scenario.yaml"),
          "the run context is made and the folder has scenario.yaml"),
    Point("network", "bring-up", lambda w: w.registered("network"),
          "the network's teardown is registered: Mininet is building"),
    Point("netns", "bring-up", lambda w: w.registered("netns"),
          "the namespaces are named: the links are being shaped"),
    Point("topology", "bring-up", lambda w: w.has("hosts.json"), "hosts.json: the topology is up"),
    Point("target-start", "nodes", lambda w: w.has("target.log"), "the target node is starting"),
    Point("target-ready", "nodes", lambda w: w.event("target.ndjson", "ready"),
          "tgtd serves the LUN"),
    Point("bulk-ready", "nodes", lambda w: w.event("bulk1.ndjson", "ready"),
          "the bulk source listens"),
    Point("client-start", "nodes", lambda w: w.has("client-config.json"),
          "the storage client is starting"),
    Point("first-sample", "run", lambda w: w.client_t(0.0), "the client's first sample"),
    Point("t1", "run", lambda w: w.client_t(1.0), "the load at 1 s"),
    Point("t2", "run", lambda w: w.client_t(2.0), "the load at 2 s"),
    Point("client-done", "run", lambda w: w.has("client-outcome.json"),
          "the client wrote its outcome"),
    Point("verify", "collect", lambda w: w.has("verify.log"), "the read-back is running"),
    Point("integrity", "collect", lambda w: w.has("integrity.json"), "the read-back is done"),
    Point("summary", "collect", lambda w: w.has("summary.json"), "summary.json is written"),
    Point("plots", "collect", lambda w: w.has("memory.png"), "the plots are being drawn"),
    Point("closing", "teardown", lambda w: w.has("report.html") and w.namespaces() > 0,
          "report.html is written: the run context closes"),
    Point("closing-25ms", "teardown", lambda w: w.closing_for(0.025),
          "25 ms into the teardown"),
    Point("closing-50ms", "teardown", lambda w: w.closing_for(0.05),
          "50 ms into the teardown"),
    Point("ns-gone", "teardown", lambda w: w.namespaces_gone(),
          "every namespace is gone: the sweep by tag runs, the state file is still there"),
)
BY_NAME = {p.name: p for p in POINTS}


# -- counting what is left ----------------------------------------------------------------

def _tool(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout if r.returncode == 0 else ""


def _json_tool(argv: list[str]) -> list[dict]:
    out = _tool(argv)
    try:
        got = json.loads(out) if out.strip() else []
    except ValueError:
        return []
    return got if isinstance(got, list) else []


def _links(netns: Optional[str], tag: str) -> list[dict]:
    """Links of a namespace of the run (all of them), or the root's tagged ones."""
    where = ["-n", netns] if netns else []
    links = _json_tool(["ip", *where, "-j", "-d", "link", "show"])
    if netns:
        return [l for l in links if l.get("ifname") != "lo"]
    return [l for l in links if l.get("ifalias") == tag]


def _kind(link: dict) -> str:
    return str((link.get("linkinfo") or {}).get("info_kind") or "")


def _qdiscs(netns: Optional[str], devices: set[str]) -> list[dict]:
    where = ["-n", netns] if netns else []
    return [q for q in _json_tool(["tc", *where, "-j", "qdisc", "show"])
            if q.get("dev") in devices and q.get("kind") not in DEFAULT_QDISCS]


def _processes(run_id: str, markers: list[str], ns_inodes: set[int]) -> list[int]:
    """Processes of the run: tagged in their environment, living in one of its namespaces,
    or naming one of its folders on their command line."""
    env_tag = f"{ENV_VAR}={run_id}".encode()
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
            ns = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] in "ZX":
            continue                     # dead, only waiting for its parent
        if env_tag in env.split(b"\0") or ns in ns_inodes or any(m in cmd for m in markers):
            found.append(int(entry))
    return found


def _control_sockets(scratch: Path) -> list[str]:
    """tgtd control sockets of the run: bound in any network namespace (each has its own
    /proc/net/unix, read through one process inside it) or left as files."""
    found, namespaces = set(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
            if ino in namespaces:
                continue
            namespaces.add(ino)
            table = Path(f"/proc/{entry}/net/unix").read_text()
        except OSError:
            continue
        found |= {l.split()[-1] for l in table.splitlines() if str(scratch) in l}
    if scratch.is_dir():
        found |= {str(p) for p in scratch.rglob("*") if p.is_socket()}
    return sorted(found)


def _docker(run_id: str) -> dict[str, int]:
    """The run's labelled containers, networks and volumes (none without an engine)."""
    client = docker_labels.api()
    if client is None:
        return {"containers": 0, "networks": 0, "volumes": 0}
    label = f"{docker_labels.LABEL_RUN}={run_id}"
    try:
        return {"containers": len(client.containers(all=True, filters={"label": label})),
                "networks": len(client.networks(filters={"label": label})),
                "volumes": len(client.volumes(filters={"label": label}).get("Volumes") or [])}
    except Exception as exc:    # the engine went away while asked: say so, count nothing
        print(f"killpoints: docker did not answer ({type(exc).__name__}); not counted",
              file=sys.stderr)
        return {"containers": 0, "networks": 0, "volumes": 0}


def count_left(run_id: str, run_dir: Path) -> dict[str, int]:
    """What of run ``run_id`` is on the machine, by kind (all 0: nothing)."""
    tag = TAG_PREFIX + run_id
    scratch = STATE_DIR / run_id
    try:
        namespaces = [n for n in os.listdir(NETNS_DIR) if n.startswith(f"tb-{run_id}-")]
    except OSError:
        namespaces = []
    ns_inodes = set()
    for n in namespaces:
        try:
            ns_inodes.add((NETNS_DIR / n).stat().st_ino)
        except OSError:
            pass
    links, qdiscs = [], []
    for ns in [None, *namespaces]:
        here = _links(ns, tag)
        links += here
        qdiscs += _qdiscs(ns, {l["ifname"] for l in here})
    ipt = [l for tool in ("iptables-save", "ip6tables-save") for l in _tool([tool]).splitlines()
           if tag in l and l.startswith("-A ")]
    nft = [l for l in _tool(["nft", "list", "ruleset"]).splitlines() if tag in l]
    markers = [str(scratch) + "/", f"tb-{run_id}-", str(run_dir.resolve()) + "/"]
    mounts = [l for l in Path("/proc/self/mountinfo").read_text().splitlines()
              if any(m in l for m in (f"tb-{run_id}-", str(scratch)))]
    sockets = _control_sockets(scratch)
    state = [p for p in (STATE_DIR / f"{run_id}.json", STATE_DIR / f"{run_id}.tmp", scratch)
             if p.exists()]
    return {"netns": len(namespaces), "links": len(links),
            "bridges": sum(1 for l in links if _kind(l) == "bridge"),
            "qdiscs": len(qdiscs), "iptables": len(ipt), "nftables": len(nft),
            "processes": len(_processes(run_id, markers, ns_inodes)), "mounts": len(mounts),
            "tgtd_sockets": len(sockets), "state_files": len(state), **_docker(run_id)}


# -- the run folder ---------------------------------------------------------------------------

def readable(run_dir: Path) -> list[str]:
    """Problems reading the run folder with testbed.results (empty: all readable)."""
    problems = []
    try:
        for path in sorted(run_dir.glob("*.ndjson")):
            sum(1 for _ in read_ndjson(path))
        for path in sorted(run_dir.glob("*.json")):
            if read_json(path) is None and path.stat().st_size and path.name != "lun.img":
                problems.append(f"{path.name}: not a JSON object (torn by the kill)")
        run = read_run(run_dir)
        if run is not None:
            (run.status, run.verdict, run.time_s, run.lowest_free_pages, run.mismatches,
             run.other_drops, run.longest_bulk_stall_s, run.timings)
    except Exception as exc:          # the one reader must not raise on a killed run's folder
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems


# -- one point ----------------------------------------------------------------------------

@dataclass
class Outcome:
    point: str
    step: str
    how: str                        # sigkill | ctrl-c
    hit: bool = False               # the marker was seen while the run was alive
    run_id: Optional[str] = None
    exit_code: Optional[int] = None
    left: dict[str, int] = field(default_factory=dict)
    before_clean: dict[str, int] = field(default_factory=dict)   # SIGKILL: what clean had to do
    status: Optional[str] = None    # summary.json's status, if written
    problems: list[str] = field(default_factory=list)

    @property
    def total_left(self) -> int:
        return sum(self.left.values())

    @property
    def ok(self) -> bool:
        return self.hit and self.total_left == 0 and not self.problems

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.left.items() if v) or "nothing"
        before = (" (before clean: " + ", ".join(f"{k} {v}" for k, v in self.before_clean.items()
                                                if v) + ")") if self.before_clean else ""
        return (f"{self.how:7} {self.step:8} {self.point:13} "
                f"{'hit ' if self.hit else 'MISSED'} exit {self.exit_code} "
                f"status {self.status}  left: {kinds}{before}"
                + (f"  PROBLEMS: {'; '.join(self.problems)}" if self.problems else ""))


def run_point(point: Point, how: str, workdir: Path) -> Outcome:
    """Start a run, kill it (``sigkill``) or interrupt it (``ctrl-c``) at ``point``,
    clean up as a user would, and count what is left."""
    out = Outcome(point.name, point.step, how)
    scenario = workdir / "scenario.yaml"
    scenario.write_text(SCENARIO)
    run_dir = workdir / f"{how}-{point.name}"
    watch = Watch(run_dir)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    with open(workdir / f"{how}-{point.name}.log", "w") as log:
        proc = subprocess.Popen(TESTBED + ["run", str(scenario), "--out", str(run_dir)],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=ROOT)
        try:
            out.hit = _wait_marker(proc, watch, point)
            if out.hit:
                if how == "sigkill":
                    proc.kill()
                else:
                    os.killpg(proc.pid, signal.SIGINT)
            out.exit_code = proc.wait(EXIT_TIMEOUT_S)
            # 0: it finished between the marker and the signal (not yet reaped, so the
            # signal found only its zombie): the point was missed, not survived
            out.hit = out.hit and out.exit_code != 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    watch.find_run()
    out.run_id = watch.run_id
    if how == "sigkill":
        if out.run_id is not None:
            out.before_clean = count_left(out.run_id, run_dir)
        clean = subprocess.run(TESTBED + ["clean"], capture_output=True, text=True,
                               timeout=CLEAN_TIMEOUT_S, env=env)
        if clean.returncode:
            out.problems.append(f"testbed clean exited {clean.returncode}: {clean.stderr.strip()}")
    if out.run_id is None:
        out.problems.append("no state file named the run folder")
    else:
        out.left = _settled_count(out.run_id, run_dir)
    summary = read_json(run_dir / "summary.json")
    out.status = summary.get("status") if summary else None
    out.problems += readable(run_dir)
    if how == "ctrl-c" and out.hit:
        out.problems += _interrupted_problems(out, summary_before_signal=_written_before(point))
    return out


def _wait_marker(proc: subprocess.Popen, watch: Watch, point: Point) -> bool:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        watch.namespaces()
        if point.marker(watch):
            return proc.poll() is None
        time.sleep(POLL_S)
    return False


def _settled_count(run_id: str, run_dir: Path, settle_s: float = 3.0) -> dict[str, int]:
    """Count, and again for a moment if something is left: a process SIGKILLed by the
    clean-up may still be on its way out."""
    deadline = time.monotonic() + settle_s
    left = count_left(run_id, run_dir)
    while sum(left.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = count_left(run_id, run_dir)
    return left


def _written_before(point: Point) -> bool:
    """Was summary.json already written when this point's marker showed?"""
    names = [p.name for p in POINTS]
    return point.name in names and names.index(point.name) >= names.index("summary")


def _interrupted_problems(out: Outcome, summary_before_signal: bool) -> list[str]:
    """A Ctrl-C ends the command as interrupted and, before the summary, leaves it marked
    so. The exit is 130, or death by SIGINT (-2: the signal came after the command had
    finished, while Python was exiting; a shell shows 130 for both)."""
    problems = []
    if out.exit_code not in (130, -signal.SIGINT):
        problems.append(f"Ctrl-C: exit {out.exit_code}, not 130")
    if not summary_before_signal and out.status != "interrupted":
        problems.append(f"Ctrl-C before the summary: status {out.status}, not interrupted")
    return problems


# -- the campaign -------------------------------------------------------------------------

def campaign(points: list[Point], hows: list[str], workdir: Path,
             say: Callable[..., None] = print) -> list[Outcome]:
    outcomes = []
    for point in points:
        for how in hows:
            o = run_point(point, how, workdir)
            say("  " + o.line(), flush=True)
            outcomes.append(o)
    return outcomes


def totals(outcomes: list[Outcome]) -> str:
    hit = [o for o in outcomes if o.hit]
    return (f"{len(outcomes)} kills ({sum(o.how == 'sigkill' for o in outcomes)} SIGKILL + "
            f"testbed clean, {sum(o.how == 'ctrl-c' for o in outcomes)} Ctrl-C), "
            f"{len(hit)} at their point, {len(outcomes) - len(hit)} missed; "
            f"leftovers {sum(o.total_left for o in outcomes)}; "
            f"unreadable or unmarked folders {sum(bool(o.problems) for o in outcomes)}")


def _dockerd(up: bool, pidfile: Path) -> None:
    script = ROOT / "scripts" / ("docker-up.sh" if up else "docker-down.sh")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    r = subprocess.run([str(script), str(pidfile)], capture_output=True, text=True,
                       timeout=180, env=env)
    if r.returncode and up:
        raise SystemExit(f"killpoints: dockerd did not come up: {r.stderr.strip()}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default="all",
                    help=f"comma-separated point names, or all: {', '.join(BY_NAME)}")
    ap.add_argument("--how", default="sigkill,ctrl-c", help="sigkill, ctrl-c, or both")
    ap.add_argument("--docker", choices=("both", "up", "down", "as-is"), default="both",
                    help="run the points with dockerd running, without, or both")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep the run folders and logs in DIR (default: a temporary folder)")
    args = ap.parse_args(argv)
    names = list(BY_NAME) if args.points == "all" else args.points.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    hows = args.how.split(",")
    if unknown or not set(hows) <= {"sigkill", "ctrl-c"}:
        ap.error(f"unknown point or --how: {unknown or hows}")
    points = [BY_NAME[n] for n in names]
    rounds = {"both": [False, True], "up": [True], "down": [False], "as-is": [None]}[args.docker]
    failed = False
    with tempfile.TemporaryDirectory(prefix="killpoints-") as tmp:
        pidfile = Path(tmp) / "dockerd.pid"
        base = args.keep or Path(tmp)
        for docker_up in rounds:
            if docker_up is not None:
                _dockerd(docker_up, pidfile)
            running = docker_labels.api() is not None
            print(f"== dockerd {'running' if running else 'not running'}: "
                  f"{len(points)} points x {', '.join(hows)}", flush=True)
            t0 = time.monotonic()
            workdir = base / ("docker" if running else "nodocker")
            workdir.mkdir(parents=True)
            outcomes = campaign(points, hows, workdir)
            print(f"== dockerd {'running' if running else 'not running'}: {totals(outcomes)} "
                  f"({time.monotonic() - t0:.0f} s)")
            failed |= not all(o.ok for o in outcomes)
        if pidfile.exists():
            _dockerd(False, pidfile)     # only the dockerd started here
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
