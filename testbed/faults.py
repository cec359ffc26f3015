"""Faults inside scenarios: the ``faults:`` list, and the injector that carries it out.

A scenario may list faults to inject while its load runs::

    faults:
      - {kind: target_restart, at_s: 12, pause_s: 1}      # tgtd killed, started again
      - {kind: target_pause, at_s: 20, for_s: 3}          # SIGSTOP, SIGCONT 3 s later
      - {kind: link_down, host: client, at_s: 5, for_s: 2}
      - {kind: link_up, host: bulk1, at_s: 9}
      - {kind: bulk_crash, host: bulk2, when: free_at_min}
      - {kind: loss_burst, host: client, at_s: 8, for_s: 4, loss_pct: 20}
      - {kind: client_restart, at_s: 15, pause_s: 1}      # the storage client killed

**Time.** ``at_s`` counts from the start of the load (the client's clock: ``t`` of
its metric samples, 0 when the machine starts). With a trigger (``when``) it counts
from the trigger instead (default 0): ``free_at_min`` is the first sample with free
memory at or below the min watermark, ``first_storage_drop`` the first sample with a
storage (``SOCK_MEMALLOC``) frame dropped on receive. The injector reads the client's
stream itself; its first sample carries a ``load_started`` event with the client's
``CLOCK_MONOTONIC`` start, which every process of the machine shares (the nodes run in
network namespaces, not time namespaces), so fault times are on the client's axis.

**Kinds.** ``target_restart``: tgtd SIGKILLed by the pid of its node's ``ready``
event, its node stopped, and after ``pause_s`` a new target node started on the same
LUN file (its size is kept, so are its bytes). ``target_pause``: tgtd SIGSTOPped, and
SIGCONTed after ``for_s``. ``link_down`` / ``link_up``: the switch's port of the host's
link is set down or up (``ip link`` in the switch's namespace): the cable is pulled, the
host's own interface only loses its carrier, and the client's packet handler keeps its
device. ``link_down`` with ``for_s`` comes back up by itself. ``bulk_crash``: a bulk
host's source process SIGKILLed by pid. ``loss_burst``: each frame through the switch's
port of the host's link, both ways, is lost with probability ``loss_pct`` for ``for_s``.
``client_restart``: the storage client SIGKILLed by the pid of its node, and after
``pause_s`` started again in its host as the next *incarnation* (its configuration says
which, and the load's start, so its samples stay on the run's time axis). Like a
machine that crashed, it comes back with nothing of its memory: it logs in to tgtd
again and its workloads start over. Every write it sent and every acknowledgement it
got are in the run's write journal (:mod:`testbed.journal`), which the read-back
checks page by page against what is on the LUN. Processes are always ended by pid.

**Where a loss burst is made.** The packet handler's own loss (``testbed.netdev.link``,
the client link's loss where the kernel has no ``sch_netem``) is set once, from the
client's configuration, and the storage client offers no way to change it while it
runs. The burst is made in the kernel instead, on the same switch port the link faults
use: an nftables ``netdev`` table with a chain on the port's ``ingress`` hook (frames
from the host) and one on its ``egress`` hook (frames to it), each counting every frame
and dropping those for which ``numgen random mod 10000`` falls under ``loss_pct`` x 100.
tc cannot do it here: this kernel has neither ``sch_netem`` nor the tc actions
(``act_gact``, ``act_police``) that a filter would need to drop. Its end deletes the
table and records how many frames went through the port and how many were lost.

**Undo.** Each fault in progress is a resource of the run (:meth:`RunContext.register`,
listed in its state file): a paused tgtd is resumed and a link put back up by the run's
teardown, also on Ctrl-C or an error, before the network goes. At the normal end,
:meth:`Injector.finish` undoes what is still in progress, so the read-back finds a
target serving (a target still down is started again).

**Records.** Every start and end of a fault, and a fault the load never reached
(``phase: skipped``), is a line of ``faults.ndjson`` in the run folder (``t`` on the client's axis, ``index``, ``kind``, ``phase``, ``params``,
``outcome``); :mod:`testbed.report.summary` turns them into ``summary.json``'s
``faults`` list and the plots' markers. A fault that could not be done says why in its
``outcome`` and the run is ``degraded``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional

from .errors import TestbedError
from .runctx import ENV_VAR, TAG_PREFIX
from .schema import Unknown, bounded

TRIGGERS = ("free_at_min", "first_storage_drop")
Trigger = Literal[TRIGGERS]
STOP_TIMEOUT_S = 10.0       # a stopped node: SIGTERM, this long, then SIGKILL
GONE_TIMEOUT_S = 5.0        # a SIGKILLed process leaves /proc within this
LINK_TIMEOUT_S = 10.0       # one ``ip link`` in the switch's namespace
# The target node polls tgtd through tgtadm, which gives up after 10 s (testbed.tgt):
# a longer pause would end the node, not just delay it.
MAX_TARGET_PAUSE_S = 8.0


class FaultError(TestbedError):
    """A fault could not be done (the process or link was not there)."""


# -- the scenario's ``faults:`` list ------------------------------------------------------

@dataclass
class FaultBase:
    """When a fault happens: ``at_s`` from the start of the load, or from a trigger."""

    at_s: Optional[float] = bounded(None, min=0)
    when: Optional[Trigger] = None

    def rules(self) -> Iterator[tuple[str, str]]:
        if self.at_s is None and self.when is None:
            yield ("at_s", "is required (seconds from the start of the load), or give a "
                           f"trigger: when: {' | '.join(TRIGGERS)}")

    def params(self) -> dict[str, Any]:
        """The kind's own parameters (what is recorded with the fault)."""
        skip = {"kind", "at_s", "when"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts the fault acts on (checked against the topology by the scenario)."""
        return ()


@dataclass
class TargetRestart(FaultBase):
    """tgtd killed (SIGKILL), then a new target on the same LUN file after ``pause_s``."""

    kind: Literal["target_restart"] = "target_restart"
    pause_s: float = bounded(1.0, min=0, max=600)


@dataclass
class TargetPause(FaultBase):
    """tgtd stopped (SIGSTOP), then resumed (SIGCONT) after ``for_s``."""

    kind: Literal["target_pause"] = "target_pause"
    for_s: float = bounded(3.0, gt=0, max=MAX_TARGET_PAUSE_S)


@dataclass
class LinkDown(FaultBase):
    """The host's link down; up again after ``for_s`` (None: at a link_up, or the end)."""

    kind: Literal["link_down"] = "link_down"
    host: str = "client"
    for_s: Optional[float] = bounded(None, gt=0, max=600)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


@dataclass
class LinkUp(FaultBase):
    """The host's link up again."""

    kind: Literal["link_up"] = "link_up"
    host: str = "client"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


@dataclass
class BulkCrash(FaultBase):
    """A bulk host's source process killed (SIGKILL, by pid); it stays dead."""

    kind: Literal["bulk_crash"] = "bulk_crash"
    host: str = "bulk1"

    def rules(self) -> Iterator[tuple[str, str]]:
        yield from super().rules()
        if isinstance(self.host, str) and not re.fullmatch(r"bulk[1-9][0-9]*", self.host):
            yield ("host", f"{self.host!r} is not a bulk host (bulk1, bulk2, ...)")

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


@dataclass
class LossBurst(FaultBase):
    """Random loss of ``loss_pct`` % on the host's link, both ways, for ``for_s``."""

    kind: Literal["loss_burst"] = "loss_burst"
    host: str = "client"
    for_s: float = bounded(5.0, gt=0, max=600)
    # numgen's resolution: the threshold is a whole number of 1/10,000
    loss_pct: float = bounded(10.0, min=0.01, max=100)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host,)


@dataclass
class ClientRestart(FaultBase):
    """The storage client killed (SIGKILL), then started again after ``pause_s``."""

    kind: Literal["client_restart"] = "client_restart"
    pause_s: float = bounded(1.0, min=0, max=600)


@dataclass
class Fault(FaultBase):
    """One fault of a scenario; ``kind`` picks which (schema.__variants__)."""

    __variants__: ClassVar[dict[str, type]] = {
        "target_restart": TargetRestart, "target_pause": TargetPause,
        "link_down": LinkDown, "link_up": LinkUp, "bulk_crash": BulkCrash,
        "loss_burst": LossBurst, "client_restart": ClientRestart}
    kind: str = "target_restart"


KINDS = tuple(Fault.__variants__)


def host_problem(host: str, bulk_hosts: int) -> Optional[str]:
    """Why ``host`` is not a host of a topology with ``bulk_hosts`` bulk hosts, or None."""
    names = ["client", *(f"bulk{i}" for i in range(1, bulk_hosts + 1))]
    if host in names:
        return None
    return f"{host!r} is not a host whose link can fail here (hosts: {', '.join(names)})"


# -- the injector --------------------------------------------------------------------------

class NdjsonLines:
    """The complete lines another process appended to an NDJSON file since last asked."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.buf = b""

    def new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(chunk)
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        out = []
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


def last_ready(events: Path) -> dict[str, Any]:
    """The newest ``ready`` event of a node's NDJSON file (a restarted node appends)."""
    ready = [e for e in NdjsonLines(events).new() if e.get("event") == "ready"]
    if not ready:
        raise FaultError(f"{events.name} has no ready event: the node is not serving")
    return ready[-1]


@dataclass
class Plant:
    """What the injector acts on, as the orchestrator hands it over."""

    run_dir: Path
    network: Any                                   # testbed.backends.base.Network
    procs: dict[str, subprocess.Popen]             # the orchestrator's nodes, by name
    start_target: Callable[[], None]               # start the target node, wait until ready
    register: Callable[..., Any]                   # RunContext.register
    unregister: Callable[[Any], None]              # RunContext.unregister
    say: Optional[Callable[[str], None]] = None    # one line per fault action, for people
    # the storage client's next incarnation, given the load's start (CLOCK_MONOTONIC);
    # returns its number (client_restart)
    start_client: Optional[Callable[[float], int]] = None


@dataclass
class Active:
    """A fault's state in the run."""

    index: int
    spec: FaultBase
    started_t: Optional[float] = None
    end_due: Optional[float] = None               # client time of its end (None: no end)
    ended: bool = False
    resource: Any = None                          # the run's record of what to undo
    undo: Optional[Callable[[], str]] = None      # what ends it (returns its outcome)


class Injector:
    """Carries out a scenario's faults on a running plant; see the module docstring.

    :meth:`poll` is called from the orchestrator's watch loop (every 0.2 s): it reads
    the client's new samples and starts or ends every fault that is due. Actions run on
    that thread, so nothing here races with the orchestrator's own use of its nodes.
    """

    def __init__(self, faults: list[FaultBase], plant: Plant):
        self.plant = plant
        self.faults = [Active(i, f) for i, f in enumerate(faults)]
        self.client = NdjsonLines(plant.run_dir / "client.ndjson")
        self.records = plant.run_dir / "faults.ndjson"
        self.load_start: Optional[float] = None    # the client's CLOCK_MONOTONIC at t = 0
        self.triggered: dict[str, float] = {}      # trigger -> client time it first held
        self.over = False                          # finish() was called: the load is over

    # -- the schedule -------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - (self.load_start or time.monotonic()), 3)

    def poll(self) -> None:
        self._read_client()
        if self.load_start is None:
            return
        for a in self.faults:
            now = self.now()
            if a.started_t is None:
                due = self._due(a.spec)
                if due is not None and now >= due:
                    self._start(a)
            elif not a.ended and a.end_due is not None and now >= a.end_due:
                self._end(a)

    def _due(self, spec: FaultBase) -> Optional[float]:
        if spec.when is None:
            return spec.at_s
        seen = self.triggered.get(spec.when)
        return None if seen is None else seen + (spec.at_s or 0.0)

    def _read_client(self) -> None:
        from .report.summary import rx_drops     # the one rule of what a storage drop is
        for s in self.client.new():
            for e in s.get("events") or []:
                if e.get("event") == "load_started" and self.load_start is None:
                    # the emulated client's clock is this host's; a kernel client's is its
                    # guest's (``guest_monotonic``), so its load starts when it is read
                    # here, within a poll (0.2 s) of the guest's write
                    self.load_start = float(e.get("monotonic", time.monotonic()))
            t = s.get("t")
            if t is None or "free" not in s:
                continue
            if "free_at_min" not in self.triggered and s["free"] <= s.get("wmark_min", -1):
                self.triggered["free_at_min"] = float(t)
            if "first_storage_drop" not in self.triggered and rx_drops(s.get("net"))["memalloc"]:
                self.triggered["first_storage_drop"] = float(t)

    def finish(self) -> None:
        """The load is over: end every fault still in progress (a target still down is
        started again, so the read-back finds it serving; a client is not: it would write
        during the read-back), and record those it never reached (a trigger that never
        held, a time after the end)."""
        self._read_client()
        self.over = True
        for a in self.faults:
            if a.started_t is not None and not a.ended and a.undo is not None:
                self._end(a)
            elif a.started_t is None:
                a.ended = True
                why = (f"trigger {a.spec.when} never held" if a.spec.when is not None
                       and a.spec.when not in self.triggered else "the load ended first")
                self._record(a, "skipped", f"not reached: {why}")

    def abort(self) -> None:
        """Interrupted or failed: resume what is paused and put links back up at once
        (a stopped target will not let its node stop); a target that is down stays down."""
        for a in self.faults:
            if a.started_t is not None and not a.ended and a.resource is not None:
                self._end(a)

    # -- start and end --------------------------------------------------------------------

    def _start(self, a: Active) -> None:
        a.started_t = self.now()
        action = getattr(self, f"_start_{a.spec.kind}")
        try:
            outcome = action(a)
        except (TestbedError, OSError, subprocess.SubprocessError) as exc:
            outcome = f"failed: {exc}"
            a.undo, a.end_due = None, None
            self._forget(a)
            a.ended = True
        self._record(a, "start", outcome, a.started_t)
        if a.undo is None:
            a.ended = True

    def _end(self, a: Active) -> None:
        a.ended = True
        try:
            outcome = a.undo() if a.undo is not None else "ok"
        except (TestbedError, OSError, subprocess.SubprocessError) as exc:
            outcome = f"failed: {exc}"
        self._forget(a)
        self._record(a, "end", outcome)

    def _hold(self, a: Active, what: str, undo: Callable[[], str], for_s: Optional[float]) -> None:
        """The fault is in progress until ``undo``: due ``for_s`` after its start, and
        a resource of the run, so its teardown undoes it if nothing else does."""
        a.undo = undo
        a.end_due = None if for_s is None else a.started_t + for_s
        a.resource = self.plant.register("fault", f"{a.spec.kind} {what}",
                                         lambda: self._teardown(a))

    def _teardown(self, a: Active) -> None:
        """The run's teardown undoes a fault still in progress (its record stays: the
        run context is iterating over its resources, so this one is not removed)."""
        if a.ended:
            return
        a.resource = None
        self._end(a)

    def _forget(self, a: Active) -> None:
        if a.resource is not None:
            self.plant.unregister(a.resource)
            a.resource = None

    def _record(self, a: Active, phase: str, outcome: str, t: Optional[float] = None) -> None:
        """One line of faults.ndjson: a start is stamped when it began (its action may
        take a while: a node to stop), an end when it is done."""
        line = {"t": self.now() if t is None else t, "event": "fault", "index": a.index, "kind": a.spec.kind,
                "phase": phase, "at_s": a.spec.at_s, "when": a.spec.when,
                "params": a.spec.params(), "outcome": outcome}
        with open(self.records, "a") as f:
            f.write(json.dumps(line) + "\n")
        if self.plant.say is not None:
            self.plant.say(f"  fault {a.index} {a.spec.kind} {phase} at load t={line['t']:.1f}s: "
                           f"{outcome}")

    # -- the kinds ------------------------------------------------------------------------

    def _tgtd_pid(self) -> int:
        pid = last_ready(self.plant.run_dir / "target.ndjson").get("tgtd_pid")
        if not isinstance(pid, int) or pid <= 1:
            raise FaultError(f"the target's ready event names no tgtd pid ({pid!r})")
        return pid

    def _start_target_restart(self, a: Active) -> str:
        pid = self._tgtd_pid()
        node = self.plant.procs.pop("target", None)   # its exit is the fault, not an error
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        if node is not None:
            _stop_process(node)
        spec = a.spec
        assert isinstance(spec, TargetRestart)

        def restart() -> str:
            self.plant.start_target()
            return f"ok: tgtd pid {self._tgtd_pid()} serving the same LUN file"
        # not a run resource: at teardown there is nothing to restart it for
        a.undo, a.end_due = restart, a.started_t + spec.pause_s
        return f"ok: tgtd pid {pid} killed, its node stopped"

    def _start_client_restart(self, a: Active) -> str:
        spec = a.spec
        assert isinstance(spec, ClientRestart)
        if self.plant.start_client is None or self.load_start is None:
            raise FaultError("this run cannot start its storage client again")
        proc = self.plant.procs.pop("client", None)   # its death is the fault, not the end
        if proc is None or proc.poll() is not None:
            raise FaultError("the storage client is not running")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(GONE_TIMEOUT_S)
        origin = self.load_start

        def restart() -> str:
            if self.over:
                return "not started again: the load was over before the pause ended"
            inc = self.plant.start_client(origin)
            return f"ok: storage client started again (incarnation {inc}, pid " \
                   f"{self.plant.procs['client'].pid})"
        # not a run resource: at teardown there is nothing to restart it for
        a.undo, a.end_due = restart, a.started_t + spec.pause_s
        return f"ok: storage client pid {proc.pid} killed (SIGKILL)"

    def _start_target_pause(self, a: Active) -> str:
        pid = self._tgtd_pid()
        os.kill(pid, signal.SIGSTOP)

        def resume() -> str:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return f"tgtd pid {pid} was gone"
            return f"ok: tgtd pid {pid} resumed"
        self._hold(a, f"tgtd pid {pid}", resume, a.spec.for_s)
        return f"ok: tgtd pid {pid} stopped"

    def _start_link_down(self, a: Active) -> str:
        port = switch_port(self.plant.network, a.spec.host)
        port.set(False)
        self._hold(a, f"{a.spec.host} {port.name}", lambda: port.set(True), a.spec.for_s)
        return f"ok: {port.name} (the switch's port of {a.spec.host}) down"

    def _start_link_up(self, a: Active) -> str:
        port = switch_port(self.plant.network, a.spec.host)
        for other in self.faults:       # a link_down of this host in progress ends here
            if other.spec.kind == "link_down" and other.spec.hosts == a.spec.hosts \
                    and other.started_t is not None and not other.ended:
                self._end(other)
        return port.set(True)

    def _start_bulk_crash(self, a: Active) -> str:
        host = a.spec.host
        proc = self.plant.procs.pop(host, None)
        if proc is None or proc.poll() is not None:
            raise FaultError(f"{host} runs no bulk source to crash")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(GONE_TIMEOUT_S)
        return f"ok: {host}'s source pid {proc.pid} killed"

    def _start_loss_burst(self, a: Active) -> str:
        spec = a.spec
        assert isinstance(spec, LossBurst)
        loss = PortLoss(switch_port(self.plant.network, spec.host), spec.loss_pct,
                        table=f"tb_loss{a.index}", tag=TAG_PREFIX + os.environ.get(ENV_VAR, ""))
        loss.add()
        self._hold(a, f"{spec.host} {loss.port.name}", loss.remove, spec.for_s)
        return f"ok: {spec.loss_pct:g}% loss on {loss.port.name} (the switch's port of {spec.host})"


# -- processes and links ------------------------------------------------------------------

def _wait_gone(pid: int, timeout: float = GONE_TIMEOUT_S) -> None:
    """Wait until ``pid`` is no longer running (reaped, or a zombie of its parent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        if time.monotonic() > deadline:
            raise FaultError(f"pid {pid} still runs {timeout:g}s after SIGKILL")
        time.sleep(0.02)


def _stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM by pid, wait, SIGKILL: a node whose service was killed under it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(GONE_TIMEOUT_S)


@dataclass
class SwitchPort:
    """The switch's end of a host's link, in the switch's network namespace."""

    name: str
    ns_pid: int         # a process in the switch's namespace (its Mininet shell)

    def run(self, argv: list[str], stdin: Optional[str] = None) -> str:
        """A tool in the switch's namespace; its output, or a FaultError naming it.

        The switch never lives in the namespace the testbed runs in (NamespacedBridge): a
        process found there is not the switch's, and nothing is done to the machine's own
        network."""
        try:
            ns = os.stat(f"/proc/{self.ns_pid}/ns/net").st_ino
        except OSError:
            raise FaultError(f"{self.name}: pid {self.ns_pid} of its namespace is gone") from None
        if ns == os.stat("/proc/self/ns/net").st_ino:     # the testbed runs in the root
            raise FaultError(f"{self.name}: pid {self.ns_pid} is in the root network "
                             f"namespace (the testbed's own), not the switch's")
        r = subprocess.run(["mnexec", "-a", str(self.ns_pid), *argv], input=stdin,
                           capture_output=True, text=True, timeout=LINK_TIMEOUT_S)
        if r.returncode != 0:
            raise FaultError(f"{' '.join(argv[:4])} on {self.name}: {r.stderr.strip()}")
        return r.stdout

    def set(self, up: bool) -> str:
        state = "up" if up else "down"
        self.run(["ip", "link", "set", "dev", self.name, state])
        return f"ok: {self.name} {state}"


@dataclass
class PortLoss:
    """Random loss on a switch port, both ways, with nftables (see the module docstring)."""

    port: SwitchPort
    loss_pct: float
    table: str
    tag: str             # the run's tag, as every rule of a run carries it

    def script(self) -> str:
        """The table, for ``nft -f -``: per hook a counter of every frame, then the drop."""
        under = round(self.loss_pct * 100)
        chains = []
        for chain, hook in (("from_host", "ingress"), ("to_host", "egress")):
            chains.append(
                f"  chain {chain} {{\n"
                f'    type filter hook {hook} device "{self.port.name}" priority filter;\n'
                f"    policy accept;\n"
                f'    counter comment "{self.tag}"\n'
                f'    numgen random mod 10000 < {under} counter drop comment "{self.tag}"\n'
                f"  }}\n")
        return f"table netdev {self.table} {{\n{''.join(chains)}}}\n"

    def add(self) -> None:
        self.port.run(["nft", "-f", "-"], stdin=self.script())

    def counts(self) -> tuple[int, int]:
        """(frames through the port, frames lost) since the table was added."""
        doc = json.loads(self.port.run(["nft", "-j", "list", "table", "netdev", self.table]))
        seen = lost = 0
        for item in doc.get("nftables", []):
            exprs = (item.get("rule") or {}).get("expr") or []
            packets = sum(e["counter"]["packets"] for e in exprs if "counter" in e)
            if any("drop" in e for e in exprs):
                lost += packets
            elif exprs:
                seen += packets
        return seen, lost

    def remove(self) -> str:
        seen, lost = self.counts()
        self.port.run(["nft", "delete", "table", "netdev", self.table])
        share = f" ({100 * lost / seen:.1f} %)" if seen else ""
        return f"ok: loss ended on {self.port.name}: {lost} of {seen} frames lost{share}"


def switch_port(network: Any, host: str) -> SwitchPort:
    """The switch's port of ``host``'s link (Mininet backend: the veth peer)."""
    node = getattr(network.host(host), "node", None)
    link = getattr(node.defaultIntf(), "link", None) if node is not None else None
    if link is None:
        raise FaultError(f"{host}: link faults need the Mininet backend")
    peer = link.intf2 if link.intf1.node is node else link.intf1
    return SwitchPort(peer.name, peer.node.pid)


def scenario_rules(faults: list[FaultBase], bulk_hosts: int, backend: str, storage: str,
                   deadline_s: float) -> Iterator[tuple[str, str]]:
    """What a fault list needs of the rest of the scenario: (key, message) pairs.

    A value already reported as wrong (``schema.INVALID``) skips the checks that read
    it, one fault at a time, so the other faults and the scenario's other rules are
    still checked.
    """
    try:
        listed = list(faults)
    except Unknown:
        return
    for i, f in enumerate(listed):
        yield from _fault_rules(f"faults[{i}]", f, bulk_hosts, backend, storage, deadline_s)


def _fault_rules(key: str, f: FaultBase, bulk_hosts: int, backend: str, storage: str,
                 deadline_s: float) -> list[tuple[str, str]]:
    checks: list[Callable[[], Optional[tuple[str, str]]]] = [
        lambda: (f"{key}.kind", f"faults are injected on the Mininet backend only, not "
                                f"{backend}") if backend != "mininet" else None,
        lambda: (f"{key}.kind", f"{f.kind} needs storage: iscsi (there is no target)")
        if (f.kind.startswith("target_") or f.kind == "client_restart")
        and storage != "iscsi" else None,
        lambda: (f"{key}.at_s", f"{f.at_s} is not before deadline_s ({deadline_s})")
        if f.at_s is not None and f.when is None and f.at_s >= deadline_s else None,
    ]
    checks += [lambda h=h: (f"{key}.host", host_problem(h, bulk_hosts))
               if host_problem(h, bulk_hosts) else None for h in _hosts(f)]
    out = []
    for check in checks:
        try:
            got = check()
        except Unknown:       # it reads a value already reported
            continue
        if got is not None:
            out.append(got)
    return out


def _hosts(f: FaultBase) -> tuple[str, ...]:
    try:
        return tuple(f.hosts)
    except (Unknown, AttributeError):
        return ()
