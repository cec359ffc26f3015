"""The orchestrator: one scenario, run end to end on a backend, with its outcome.

A run goes through fixed steps, each bounded in time:

1. **bring-up**: a :class:`~testbed.runctx.RunContext` (run id, folder, tags, teardown
   on any exit), then the backend builds and shapes the topology;
2. **nodes**: the iSCSI target (tgtd serving a LUN file in the run folder), the bulk
   sources, then the storage client, each a program of ``nodes/`` started in its host
   by :mod:`testbed.launch` (the target and the bulk sources are waited for until ready);
3. **watch**: the storage client's metrics stream is followed and shown as one
   progress line (elapsed time, free and dirty memory, writeback done, drops) until
   the client reports its outcome or the deadline passes; the scenario's faults are
   injected from the same loop (:mod:`testbed.faults`), and whatever of them is still
   in progress is undone when the load is over; the host's CPU pressure is read from
   the load's start to its end (``host-pressure.json``, :mod:`testbed.fidelity`);
4. **collect**: the nodes are stopped (the target through tgtadm), and the run folder
   gets the summary (verdict and evidence), the plots and ``report.html``;
5. **teardown**: leaving the run context removes every namespace, link, process and
   rule of the run, also on Ctrl-C (the folder then keeps what was collected so far,
   marked ``interrupted``).

The storage client decides ``completed`` / ``lockup`` itself (it holds the memory
manager); :mod:`testbed.report.summary` turns its outcome and the scenario's bounds into
the verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from . import fidelity, launch
from .backends.base import Host, Network
from .errors import TestbedError
from .faults import Injector, Plant
from .guest import node as guest
from .launch import BULK_PORTS, TARGET_IQN, BulkSource, Program, StorageClient, Target, Verify
from .mm.policy.loader import RUN_FOLDER_DIR, copy_into_run, is_policy_file
from .report import build_report
from .report.summary import rx_drops, summarize
from .runctx import RunContext
from .scenario import Scenario, dump
from topologies.contention_layout import PREFIX_LEN

STOP_TIMEOUT_S = 10.0
GRACE_S = 30.0            # beyond the deadline, for the client to stop
VERIFY_TIMEOUT_S = 120.0


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        """The verdict is the expected one (and the run was not interrupted)."""
        return bool(self.summary.get("verdict")) and self.summary["verdict"] == self.summary["expected"]


class Progress:
    """One line of live progress from the client's metrics stream."""

    def __init__(self, out: TextIO = sys.stderr, every_s: float = 1.0):
        self.out = out
        self.every_s = every_s
        self.tty = out.isatty()
        self._last = 0.0

    def show(self, elapsed: float, sample: Optional[dict[str, Any]], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (self.every_s if self.tty else 5 * self.every_s):
            return
        self._last = now
        line = f"  t={elapsed:5.1f}s " + (format_sample(sample) if sample else "starting...")
        if self.tty:
            self.out.write("\r" + line.ljust(100)[:100])
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()

    def say(self, text: str) -> None:
        self.done() if self.tty and self._last else None
        self._last = 0.0
        self.out.write(text + "\n")
        self.out.flush()


def write_summary(run_dir: Path, summary: dict[str, Any], timings: dict[str, float]) -> None:
    """How a run folder ends: summary.json, with the steps' timings, and report.html."""
    summary["timings"] = timings
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    build_report(run_dir)


def mark_interrupted(run_dir: Path, scenario: Scenario, duration_s: float,
                     timings: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Mark a run folder ``interrupted``, keeping what was collected: what a run does
    on Ctrl-C, and what the pool does for a run that died before it could (SIGINTed
    before its handlers were set, or killed: :mod:`testbed.pool`). No verdict."""
    summary = summarize(run_dir, scenario, duration_s=duration_s, interrupted=True)
    write_summary(run_dir, summary, timings or {})
    return summary


def format_sample(s: dict[str, Any]) -> str:
    mib = lambda pages: pages / 256        # noqa: E731  (4 KiB pages)
    drops = rx_drops(s.get("net"))
    return (f"free {mib(s.get('free', 0)):6.1f} MiB  dirty {mib(s.get('dirty', 0)):6.1f} MiB  "
            f"written back {s.get('writeback_bytes', 0) / 2**20:7.1f} MiB  "
            f"drops storage {drops['memalloc']} other {drops['other']}"
            + ("  LOCKUP" if s.get("lockup") else ""))


class Orchestrator:
    """Runs one scenario; see the module docstring for the steps."""

    def __init__(self, scenario: Scenario, out_dir: Optional[Path] = None,
                 base_dir: Path = Path("runs"), progress: Optional[Progress] = None,
                 network: Optional[Network] = None, verify_host: Optional[Host] = None):
        """``network``: run on nodes something else brought up and started (compose,
        swarm): no bring-up, and its target and bulk hosts already serve; only the storage
        client is started. ``verify_host``: where the read-back runs (default: the
        target host, which must then have the run folder)."""
        self.scenario = scenario
        self.given_network = network
        self.verify_host = verify_host
        self.out_dir = out_dir
        self.base_dir = base_dir
        self.progress = progress or Progress()
        self.procs: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self.faults: Optional[Injector] = None
        self.incarnation = 1          # of the storage client (a client_restart starts the next)
        self.pressure = fidelity.PressureWatch()

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> RunResult:
        s = self.scenario
        with RunContext.create(base_dir=self.base_dir, name=s.name, run_dir=self.out_dir) as run:
            self.run_ctx = run
            (run.dir / "scenario.yaml").write_text(dump(self._keep_policy_file(run.dir)))
            s = self.scenario
            self.progress.say(f"run {run.id}: {s.name} (policy {s.client.policy}, "
                              f"expect {s.expected}) -> {run.dir}")
            started = time.monotonic()
            try:
                with self._timed("bring_up"):
                    net = self._bring_up(run)
                self.pressure.start()     # the host's CPU pressure, from the load's start
                with self._timed("start_nodes"):
                    if self.given_network is None:
                        self._start_target(net, run)
                        self._start_bulk(net, run)
                    self._start_client(net, run)
                    self._plan_faults(net, run)
                with self._timed("run"):
                    self._watch(run, started)
                    self._write_pressure(run)
                    self._stop_client()
                    if self.faults is not None:
                        self.faults.finish()
                with self._timed("verify"):
                    self._verify(net, run)
                with self._timed("stop_nodes"):
                    self._stop_nodes()
                summary = summarize(run.dir, s, duration_s=time.monotonic() - started)
            except (KeyboardInterrupt, TestbedError) as exc:
                interrupted = isinstance(exc, KeyboardInterrupt)
                self.progress.say("interrupted: stopping nodes, keeping what was collected"
                                  if interrupted else f"error: {exc}")
                if self.faults is not None:
                    self.faults.abort()
                self._stop_nodes()
                duration = time.monotonic() - started
                if interrupted:
                    mark_interrupted(run.dir, s, duration, self.timings)
                else:
                    summary = summarize(run.dir, s, duration_s=duration)
                    summary.update(status="error", detail=str(exc))
                    self._finish(run.dir, summary)
                raise
            with self._timed("report"):
                self._finish(run.dir, summary)
        return RunResult(run.dir, summary)

    def _keep_policy_file(self, run_dir: Path) -> Scenario:
        """A policy file (``client.policy: ./mypolicy.py``) is copied into the run folder
        and checked again there: the storage client loads that copy, so the run keeps
        exactly the file it ran (the summary names its SHA-256). Returns the scenario to
        write as scenario.yaml, whose policy is the copy, relative to the run folder."""
        s = self.scenario
        if not is_policy_file(s.client.policy):
            return s
        copy, _ = copy_into_run(s.client.policy, run_dir)
        self.scenario = replace(s, client=replace(s.client, policy=str(copy)))
        return replace(s, client=replace(s.client, policy=f"{RUN_FOLDER_DIR}/{copy.name}"))

    @contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        """Record how long a step took (``timings`` in summary.json; bench/ prints them)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[step] = round(time.monotonic() - t0, 3)

    def _finish(self, run_dir: Path, summary: dict[str, Any]) -> None:
        write_summary(run_dir, summary, self.timings)

    # -- steps ----------------------------------------------------------------------------

    def _bring_up(self, run: RunContext) -> Network:
        s = self.scenario
        if self.given_network is not None:
            self.net = self.given_network
            self._write_hosts(run)
            self.progress.say(f"  nodes found: client {self.net.host('client').ip}, target "
                              f"{self.net.host('target').ip}, {len(self.net.bulk_hosts)} bulk hosts")
            return self.net
        if s.backend == "docker":
            from .backends.docker import DockerBackend as backend
        else:
            from .backends.mininet import MininetBackend as backend
        t0 = time.monotonic()
        net = backend(run).up(s.topology.params())
        self.net = net
        self._write_hosts(run)
        self.progress.say(f"  topology up in {time.monotonic() - t0:.1f}s: client "
                          f"{net.host('client').ip}, target {net.host('target').ip}, "
                          f"{len(net.bulk_hosts)} bulk hosts")
        return net

    def _write_hosts(self, run: RunContext) -> None:
        hosts = {n: h.ip for n, h in self.net.hosts.items()}
        (run.dir / "hosts.json").write_text(json.dumps(hosts))

    def _spawn(self, name: str, host: Host, program: Program) -> launch.Node:
        node = launch.start(host, name, program, self.run_ctx.dir)
        self.procs[name] = node.proc
        return node

    def _start_target(self, net: Network, run: RunContext) -> None:
        t, h = self.scenario.target, net.host("target")
        self._spawn("target", h, Target(ip=h.ip, backing_file=run.dir / "lun.img",
                                        size_mb=t.lun_mb, block_size=t.block_size,
                                        workdir=run.scratch / "tgtd", chap=t.chap)).wait_ready()

    def _start_bulk(self, net: Network, run: RunContext) -> None:
        """Start every bulk source, then wait for each (they start in parallel)."""
        b, s = self.scenario.bulk, self.scenario
        nodes = [self._spawn(h.name, h, BulkSource(
            mode=b.mode, rate_mbit=b.rate_mbit, bind=h.ip, client_ip=net.host("client").ip,
            target_ip=net.host("target").ip, initiator_port=s.target.initiator_port,
            size=b.udp_size, seed=i)) for i, h in enumerate(net.bulk_hosts, 1)]
        for node in nodes:
            node.wait_ready()

    def bulk_servers(self) -> list[tuple[str, int]]:
        mode = self.scenario.bulk.mode
        if mode not in BULK_PORTS:
            return []
        return [(h.ip, BULK_PORTS[mode]) for h in self.net.bulk_hosts]

    def _start_client(self, net: Network, run: RunContext) -> None:
        s = self.scenario
        client = asdict(s.client)
        if s.bulk.mode == "http":
            for w in client["workloads"]:
                if w["kind"] == "downloader" and not w["request"]:
                    w["request"] = "GET /stream HTTP/1.1\r\nHost: bulk\r\n\r\n"
        if s.client.kind == "kernel":
            return self._start_kernel_client(net, run, client["workloads"])
        effects = net.userspace_link_effects.get("client", {})
        cfg = {
            "client": client,
            "deadline_s": s.deadline_s,
            "metrics_path": str(run.dir / "client.ndjson"),
            "outcome_path": str(run.dir / "client-outcome.json"),
            "manifest_path": str(run.dir / "manifest.json"),
            "storage": s.storage,
            "target": {"portal": launch.portal(net.host("target").ip), "iqn": TARGET_IQN,
                       "chap": asdict(s.target.chap) if s.target.chap else None,
                       "digests": s.target.digests, "initiator_port": s.target.initiator_port,
                       "timeouts": s.initiator.session_config()},
            "local_disk": {"path": str(run.dir / "local-disk.img"),
                           "capacity_mb": s.target.lun_mb,
                           "latency_ms": s.local_disk.latency_ms,
                           "bandwidth_mbps": s.local_disk.bandwidth_mbps},
            "netdev": {"wire": net.host("client").intf, "tap": "tap0",
                       "delay_ms": effects.get("delay_ms", 0.0),
                       "loss_pct": effects.get("loss_pct", 0.0),
                       "capture_dir": str(run.dir / "pcap") if s.capture else None},
            "download_servers": self.bulk_servers(),
            "client_ip": net.host("client").ip,
            "run_id": run.id,
        }
        if any(f.kind == "client_restart" for f in s.faults):   # testbed.journal
            cfg["journal_path"] = str(run.dir / "journal.ndjson")
        path = run.dir / "client-config.json"
        path.write_text(json.dumps(cfg, indent=1))
        self._spawn("client", net.host("client"), StorageClient(path))

    def _restart_client(self, net: Network, run: RunContext, load_start: float) -> int:
        """The storage client's next incarnation (a client_restart fault): the first one's
        configuration, with its number, the load's start (its samples keep the run's time
        axis) and the wire address the killed one left on its TAP device."""
        self.incarnation += 1
        cfg = json.loads((run.dir / "client-config.json").read_text())
        cfg.update(incarnation=self.incarnation, clock_origin=load_start,
                   wire_cidr=f"{net.host('client').ip}/{PREFIX_LEN}")
        path = run.dir / f"client-config-{self.incarnation}.json"
        path.write_text(json.dumps(cfg, indent=1))
        self._spawn("client", net.host("client"), StorageClient(path))
        return self.incarnation

    def _start_kernel_client(self, net: Network, run: RunContext,
                             workloads: list[dict[str, Any]]) -> None:
        """A Linux guest as the client, behind the client's wire (testbed.guest.node)."""
        image, accel = guest.prepare(self.progress.say)
        cfg = guest.client_config(self.scenario, net, run, image, accel,
                                  launch.portal(net.host("target").ip), TARGET_IQN,
                                  self.bulk_servers(), workloads)
        path = run.dir / "client-config.json"
        path.write_text(json.dumps(cfg, indent=1))
        self._spawn("client", net.host("client"), guest.KernelClient(path))

    def _plan_faults(self, net: Network, run: RunContext) -> None:
        """The scenario's faults, injected from the watch loop (testbed.faults)."""
        if not self.scenario.faults:
            return
        if self.given_network is not None:     # compose, swarm: its nodes are not ours
            raise TestbedError("faults are injected only on a network this run brings up")
        self.faults = Injector(self.scenario.faults, Plant(
            run_dir=run.dir, network=net, procs=self.procs,
            start_target=lambda: self._start_target(net, run),
            start_client=lambda origin: self._restart_client(net, run, origin),
            register=run.register, unregister=run.unregister, say=self.progress.say))

    def _watch(self, run: RunContext, started: float) -> None:
        """Follow the client until it exits or the deadline (plus grace) passes."""
        metrics = run.dir / "client.ndjson"
        limit = started + self.scenario.deadline_s + GRACE_S
        if self.scenario.client.kind == "kernel":      # the guest boots and logs in first
            limit += guest.BOOT_ALLOWANCE_S
        tail = NdjsonTail(metrics)
        # the client is looked up each time: a client_restart replaces it (and between
        # its kill and its restart there is none, which is not the end of the run)
        while (client := self.procs.get("client")) is None or client.poll() is None:
            if time.monotonic() > limit:
                self.progress.say("  the client did not finish by the deadline: stopping it")
                break
            if self.faults is not None:
                self.faults.poll()
            self._check_alive()
            self.pressure.poll()
            self.progress.show(time.monotonic() - started, tail.last())
            time.sleep(0.2)
        self.progress.show(time.monotonic() - started, tail.last(), force=True)
        self.progress.done()

    def _write_pressure(self, run: RunContext) -> None:
        """``host-pressure.json``: the host's CPU pressure over the load (testbed.fidelity)."""
        (run.dir / fidelity.PRESSURE_FILE).write_text(json.dumps(self.pressure.finish()))

    def _check_alive(self) -> None:
        p = self.procs.get("target")
        if p is not None and p.poll() is not None:
            raise TestbedError(f"the iSCSI target exited with status {p.returncode}; "
                               f"see target.log in the run folder")

    def _stop_client(self) -> None:
        self._stop("client")

    def _verify(self, net: Network, run: RunContext) -> None:
        """Check every acknowledged page on the LUN, from the target host (not shaped)."""
        manifest = run.dir / "manifest.json"
        if not manifest.exists():
            return
        h = self.verify_host or net.host("target")
        local = self.scenario.storage == "local"
        journal = run.dir / "journal.ndjson"
        program = Verify(manifest=manifest, out=run.dir / "integrity.json",
                         timeout_s=VERIFY_TIMEOUT_S,
                         disk_file=run.dir / "local-disk.img" if local else None,
                         target_ip=None if local else net.host("target").ip,
                         chap=self.scenario.target.chap,
                         journal=journal if journal.exists() else None)
        self.progress.say("  checking what the target acknowledged, on the LUN...")
        with open(run.dir / "verify.log", "ab") as log:
            h.run(launch.command(program), timeout=VERIFY_TIMEOUT_S + 30, stdout=log,
                  stderr=subprocess.STDOUT)

    def _stop(self, *names: str) -> None:
        """SIGTERM the named nodes together, then wait for each (SIGKILL after the timeout)."""
        procs = [p for n in names if (p := self.procs.get(n)) is not None and p.poll() is None]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def _stop_nodes(self) -> None:
        """Stop the client first (it logs out), then the bulk sources, then the target."""
        self._stop("client")
        self._stop(*(n for n in self.procs if n.startswith("bulk")))
        self._stop("target")


class NdjsonTail:
    """The last complete object of an NDJSON file that another process appends to."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.buf = b""
        self.latest: Optional[dict[str, Any]] = None

    def last(self) -> Optional[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except FileNotFoundError:
            return self.latest
        self.pos += len(chunk)
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in reversed(lines):
            if line.strip():
                try:
                    self.latest = json.loads(line)
                    break
                except ValueError:
                    continue
        return self.latest
