"""The kernel client in a run: its configuration, its place in the topology, its run.

**Where it sits.** The emulated client's interface in the Mininet topology is the veth
``client-eth0`` in the client's namespace, with the client's address and MAC, shaped by
an htb root (and, with ``capture: true``, recorded). :class:`GuestRunner` keeps that
veth and its qdiscs as they are and puts the guest behind it: the veth's address is
taken off and its MAC changed, a bridge ``tbbr0`` in the same namespace joins the veth
and a TAP ``tbtap0`` (both carrying the run's alias), and the guest's virtio NIC on
that TAP gets the client's address and MAC. Every frame the guest sends or receives
crosses the same shaped veth as the emulated client's would; with capture on,
``tcpdump`` records the veth into ``pcap/wire.pcap``. Nothing of this is in the root
namespace, and all of it goes with the namespace at the run's end.

**Its run.** ``python -m nodes.kernel_client --config FILE`` (started in the client
host like every node, tracked and tagged with the run) starts QEMU (:mod:`.qemu`) in
its own process group, follows the metrics the guest streams into ``client.ndjson``,
and waits for the guest's ``result`` port to hold the outcome and the manifest. It then
writes ``client-outcome.json`` and ``manifest.json`` as the emulated client does, so
the orchestrator's read-back, summary and report apply unchanged. A guest that stops
streaming for ``hang_after_s`` is judged from its console (hung-task warnings: lockup)
and stopped; so is one that passes the deadline. QEMU is ended by pid (SIGTERM, then
SIGKILL), also on SIGTERM/Ctrl-C of the runner, and the wire is given back.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from ..errors import ConfigError, TestbedError
from ..launch import Program
from ..mm.lockup import RecoveryHorizon
from .image import GuestImage, ensure_image, run_files
from .qemu import AccelChoice, GuestSpec, choose_accel, config_disk, qemu_argv

INITIATOR_NAME = "iqn.2026-11.org.testbed:kernel-client"
BRIDGE, TAP = "tbbr0", "tbtap0"
BOOT_ALLOWANCE_S = 150.0     # boot, iscsid and login under TCG, beyond the deadline
HANG_AFTER_S = 60.0          # no sample for this long: the agent cannot run (measured: a
                             # thrashing guest at 104 MiB went 20 s without one, then finished)
QEMU_STOP_S = 10.0           # after the outcome: time for the guest's own power-off
POLL_S = 0.2
HUNG_MARK = "blocked for more than"         # khungtaskd: "task X blocked for more than N seconds"
OOM_MARK = "Out of memory: Killed process"  # the OOM killer


@dataclass(frozen=True)
class KernelClient(Program):
    """nodes.kernel_client: the run's kernel client, all of it in one JSON file."""

    config: Path

    module: ClassVar[str] = "nodes.kernel_client"

    def args(self) -> list[str]:
        return ["--config", str(self.config)]


# -- the orchestrator's side ----------------------------------------------------------------


def prepare(say: Any) -> tuple[GuestImage, AccelChoice]:
    """The image (built on first use) and the accelerator (probed once per image)."""
    image = ensure_image(say)
    accel = choose_accel(image)
    say(f"  kernel client: {image.kernel_release} under {accel.accel} ({accel.detail})")
    return image, accel


def sysctls(client: Any) -> dict[str, int | str]:
    """The scenario's memory and writeback knobs as the kernel's sysctls."""
    out = {"vm.dirty_ratio": client.dirty_ratio,
           "vm.dirty_background_ratio": client.dirty_background_ratio,
           "vm.dirty_writeback_centisecs": max(1, client.dirty_writeback_ms // 10),
           "vm.dirty_expire_centisecs": client.dirty_expire_ms // 10,
           "vm.watermark_scale_factor": client.watermark_scale_factor,
           "kernel.hung_task_timeout_secs": max(1, round(client.lockup_after_s)),
           "kernel.hung_task_warnings": -1}
    if client.min_free_kbytes is not None:
        out["vm.min_free_kbytes"] = client.min_free_kbytes
    if client.tcp_mem is not None:
        out["net.ipv4.tcp_mem"] = " ".join(str(p) for p in client.tcp_mem)
    return out


def _up(x: float) -> int:
    """open-iscsi and the SCSI layer take whole seconds: a timeout is rounded up."""
    return int(math.ceil(x))


def open_iscsi_settings(initiator: Any) -> dict[str, Any]:
    """The scenario's ``initiator:`` timeouts as open-iscsi's node settings (whole
    seconds, rounded up; a no-op interval of 0 turns the pings off, as in iscsid.conf)
    and the SCSI command timeout of the LUN's disk (/sys/block/sdX/device/timeout)."""
    return {"node": {"node.conn[0].timeo.noop_out_interval": _up(initiator.noop_out_interval_s),
                     "node.conn[0].timeo.noop_out_timeout": _up(initiator.noop_out_timeout_s),
                     "node.conn[0].timeo.login_timeout": _up(initiator.login_timeout_s),
                     "node.session.timeo.replacement_timeout":
                         _up(initiator.replacement_timeout_s)},
            "scsi_timeout_s": _up(initiator.command_timeout_s)}


def kernel_horizon(initiator: Any) -> RecoveryHorizon:
    """The recovery horizon of the guest's kernel and open-iscsi: past it, every recovery
    they have has had its chance. A dead connection is found by the SCSI command timeout
    (the command's timer, then iscsi_eh_abort) or by the no-op pings
    (iscsi_check_transport_timeouts, interval + timeout; none when the interval is 0),
    whichever comes later, as for the model's initiator. The session is then FAILED and iscsid logs in again for
    ``replacement_timeout`` (the kernel's ``recovery_tmo``); when that passes,
    ``session_recovery_timedout()`` (drivers/scsi/scsi_transport_iscsi.c) makes the
    session FREE and its commands fail, which ends their pages' writeback with an error.
    So the horizon's reinstatement is the replacement timeout, with no Time2Wait of its
    own (iscsid's retries are inside it)."""
    pings = initiator.noop_out_interval_s > 0
    return RecoveryHorizon(
        command_timeout_s=float(_up(initiator.command_timeout_s)),
        keepalive_s=float(_up(initiator.noop_out_interval_s) + _up(initiator.noop_out_timeout_s))
        if pings else 0.0,
        time2wait_s=0.0, login_s=float(_up(initiator.replacement_timeout_s)))


def client_config(scenario: Any, net: Any, run: Any, image: GuestImage, accel: AccelChoice,
                  target_portal: str, target_iqn: str, servers: list[tuple[str, int]],
                  workloads: list[dict[str, Any]]) -> dict[str, Any]:
    """What nodes.kernel_client needs (host side) with the guest agent's part."""
    effects = net.userspace_link_effects.get("client", {})
    if any(effects.values()):
        raise ConfigError("the kernel client's link cannot have delay or loss here: this "
                          "kernel has no sch_netem, and the guest has no user-space handler")
    host = net.host("client")
    c, d = scenario.client, run.dir
    guest = {"ip": None,             # the wire's address, taken over by GuestRunner.attach
             "initiator_name": INITIATOR_NAME,
             "target": {"portal": target_portal, "iqn": target_iqn,
                        "chap": asdict(scenario.target.chap) if scenario.target.chap else None},
             "iscsi": open_iscsi_settings(scenario.initiator),
             "sysctl": sysctls(c), "workloads": workloads,
             "download_servers": [list(s) for s in servers], "deadline_s": scenario.deadline_s,
             "lockup_after_s": c.lockup_after_s, "metrics_interval_ms": c.metrics_interval_ms,
             "recovery_horizon": kernel_horizon(scenario.initiator).to_dict()}
    return {"image_dir": str(image.dir), "kernel_release": image.kernel_release,
            "accel": accel.accel, "cpu": accel.cpu, "accel_detail": accel.detail,
            "memory_mb": c.memory_mb,
            "wire": host.intf, "mac": host.mac, "run_id": run.id,
            "metrics_path": str(d / "client.ndjson"), "result_path": str(d / "guest-result.ndjson"),
            "console_path": str(d / "guest-console.log"),
            "outcome_path": str(d / "client-outcome.json"),
            "manifest_path": str(d / "manifest.json"),
            "config_disk": str(run.scratch / "guest-config.img"),
            "capture_dir": str(d / "pcap") if scenario.capture else None,
            "deadline_s": scenario.deadline_s, "guest": guest}


# -- the client host's side -----------------------------------------------------------------


class GuestRunner:
    """Attach, boot, follow and stop one guest (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.qemu: Optional[subprocess.Popen] = None
        self.tcpdump: Optional[subprocess.Popen] = None
        self.saved: Optional[dict[str, Any]] = None
        self.started = 0.0
        self.first_sample: Optional[float] = None
        self.manifest: dict[str, Any] = {"page_size": 4096, "extents": []}

    # network --------------------------------------------------------------------------

    def attach(self) -> None:
        wire, tag = self.cfg["wire"], f"testbed:{self.cfg['run_id']}"
        addrs = json.loads(_ip(["-j", "addr", "show", "dev", wire], out=True))[0]
        self.saved = {"mac": addrs["address"],
                      "addrs": [f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]
                                if a["family"] == "inet"]}
        if len(self.saved["addrs"]) != 1:
            raise TestbedError(f"kernel client: {wire} has {len(self.saved['addrs'])} IPv4 "
                               f"addresses; the guest takes over exactly one")
        self.cfg["guest"]["ip"] = self.saved["addrs"][0]
        mac = self.cfg["mac"]
        wire_mac = "06" + mac[2:]          # another locally administered address
        cmds = [["addr", "flush", "dev", wire], ["link", "set", wire, "address", wire_mac],
                ["link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0"],
                ["link", "set", BRIDGE, "alias", tag],
                ["tuntap", "add", "dev", TAP, "mode", "tap"],
                ["link", "set", TAP, "alias", tag],
                ["link", "set", TAP, "master", BRIDGE], ["link", "set", wire, "master", BRIDGE]]
        for c in cmds:
            _ip(c)
        for dev in (BRIDGE, TAP, wire):   # the namespace itself must not answer for the guest
            Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").write_text("1")
        for dev in (TAP, BRIDGE, wire):
            _ip(["link", "set", dev, "up"])
        if self.cfg.get("capture_dir"):
            cap = Path(self.cfg["capture_dir"])
            cap.mkdir(parents=True, exist_ok=True)
            self.tcpdump = subprocess.Popen(["tcpdump", "-q", "-i", wire, "-U", "-w",
                                             str(cap / "wire.pcap")],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def detach(self) -> None:
        if self.tcpdump is not None:
            _end(self.tcpdump)
            self.tcpdump = None
        if self.saved is None:
            return
        wire = self.cfg["wire"]
        for c in (["link", "del", TAP], ["link", "del", BRIDGE],
                  ["link", "set", wire, "address", self.saved["mac"]]):
            _ip(c, check=False)
        for a in self.saved["addrs"]:
            _ip(["addr", "add", a, "dev", wire], check=False)
        self.saved = None

    # the guest ------------------------------------------------------------------------

    def start(self) -> None:
        c = self.cfg
        for key in ("metrics_path", "result_path", "console_path"):
            Path(c[key]).unlink(missing_ok=True)
        disk = config_disk(Path(c["config_disk"]), c["guest"], run_files())
        spec = GuestSpec(image=GuestImage(Path(c["image_dir"]), c["kernel_release"]),
                         accel=c["accel"], cpu=c.get("cpu"), memory_mb=c["memory_mb"],
                         tap=TAP, mac=c["mac"],
                         config_disk=disk, metrics=Path(c["metrics_path"]),
                         result=Path(c["result_path"]), console=Path(c["console_path"]),
                         name=f"tb-{c['run_id']}-client")
        self.started = time.monotonic()
        self.qemu = subprocess.Popen(qemu_argv(spec), stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait(self) -> dict[str, Any]:
        """The guest's outcome, or the host's account of why there is none."""
        c = self.cfg
        limit = self.started + BOOT_ALLOWANCE_S + c["deadline_s"]
        metrics, last_size, last_change = Path(c["metrics_path"]), 0, time.monotonic()
        while True:
            got = self._result()
            if got is not None:
                return got
            now = time.monotonic()
            size = metrics.stat().st_size if metrics.exists() else 0
            if size != last_size:
                last_size, last_change = size, now
                if self.first_sample is None:
                    self.first_sample = now
            if self.qemu.poll() is not None:
                time.sleep(0.5)                # the port's last bytes
                return self._result() or self._host_outcome(
                    "error", f"the guest powered off without an outcome (QEMU status "
                             f"{self.qemu.returncode}); see guest-console.log")
            if self.first_sample is None and now - self.started > BOOT_ALLOWANCE_S:
                return self._host_outcome("error", f"the guest did not boot and log in within "
                                                   f"{BOOT_ALLOWANCE_S:g}s; see guest-console.log")
            if self.first_sample is not None and now - last_change > HANG_AFTER_S:
                return self._host_outcome("deadline", f"the guest sent nothing for "
                                                      f"{HANG_AFTER_S:g}s")
            if now > limit:
                return self._host_outcome("deadline", "the guest did not finish by the deadline")
            time.sleep(POLL_S)

    def _result(self) -> Optional[dict[str, Any]]:
        try:
            lines = Path(self.cfg["result_path"]).read_text().splitlines()
        except OSError:
            return None
        parts = {}
        for line in lines:
            try:
                parts.update(json.loads(line))
            except ValueError:
                return None
        if "outcome" not in parts or "manifest" not in parts:
            return None
        self.manifest = parts["manifest"]
        return parts["outcome"]

    def _host_outcome(self, verdict: str, detail: str) -> dict[str, Any]:
        """No outcome from the guest: hung-task warnings on its console make it a lockup."""
        hung = hung_tasks(Path(self.cfg["console_path"]))
        last = _last_sample(Path(self.cfg["metrics_path"]))
        out: dict[str, Any] = {"verdict": verdict, "detail": detail, "t": last.get("t"),
                               "bytes_written": last.get("workload_bytes", 0),
                               "bytes_written_back": last.get("writeback_bytes", 0)}
        oom = console_lines(Path(self.cfg["console_path"]), OOM_MARK)
        if oom:                 # the emulated client has no OOM killer: say it plainly
            out["detail"] += f"; the guest's OOM killer ran: {oom[0]}"
        if hung:
            out["verdict"] = "lockup"
            out["lockup"] = {"t": last.get("t") or 0.0,
                             "stalled_for_s": last.get("stalled_for_s") or 0.0,
                             "dirty": last.get("dirty"), "writeback": last.get("writeback"),
                             "free": last.get("free"), "wmark_min": last.get("wmark_min"),
                             "reserve": None, "hung_task_messages": hung[-5:],
                             "counters": {k: last.get(k) for k in (
                                 "PFMemallocDrop", "TCPBacklogDrop", "allocstall",
                                 "pgscan_direct_throttle", "nr_dirty", "nr_writeback")}}
        return out

    def finish(self, outcome: dict[str, Any]) -> None:
        """Write the outcome and the manifest where the orchestrator reads them."""
        c = self.cfg
        outcome["kernel"] = {"release": c["kernel_release"], "accel": c["accel"],
                             "accel_detail": c["accel_detail"], "memory_mb": c["memory_mb"],
                             "first_sample_s": round(self.first_sample - self.started, 2)
                             if self.first_sample else None,
                             "console_hung_tasks": len(hung_tasks(Path(c["console_path"]))),
                             # the kernel's OOM kills, also of a run that completed (iscsid
                             # was killed in one: the session went on, recovery could not)
                             "oom_kills": console_lines(Path(c["console_path"]), OOM_MARK),
                             **sample_rate(Path(c["metrics_path"]))}
        Path(c["manifest_path"]).write_text(json.dumps(self.manifest))
        Path(c["outcome_path"]).write_text(json.dumps(outcome, indent=1))

    def stop(self) -> None:
        """Let the guest power off (briefly), then end QEMU by pid; give the wire back."""
        if self.qemu is not None:
            try:
                self.qemu.wait(QEMU_STOP_S if self._result() else 0.1)
            except subprocess.TimeoutExpired:
                pass
            _end(self.qemu)
            self.qemu = None
        self.detach()

    def run(self) -> dict[str, Any]:
        try:
            self.attach()
            self.start()
            outcome = self.wait()
        except (TestbedError, OSError, subprocess.SubprocessError, ValueError) as exc:
            outcome = {"verdict": "error", "detail": f"kernel client: {exc}"}
        self.finish(outcome)
        return outcome


def console_lines(console: Path, mark: str) -> list[str]:
    """Lines of the guest's console that contain ``mark``."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.splitlines() if mark in ln]


def hung_tasks(console: Path) -> list[str]:
    """The kernel's hung-task warnings on the guest's console."""
    return console_lines(console, HUNG_MARK)


def sample_rate(path: Path) -> dict[str, Any]:
    """How many samples the guest sent, their mean interval, and how busy its CPU was
    over the load (non-idle, non-iowait share of /proc/stat's time): under TCG the
    guest is short of CPU, and the interval asked for may not be kept."""
    samples = _samples(path)
    ts = [s["t"] for s in samples]
    mean = round((ts[-1] - ts[0]) / (len(ts) - 1), 3) if len(ts) > 1 else None
    busy = None
    if len(samples) > 1 and "cpu" in samples[0] and "cpu" in samples[-1]:
        d = {k: samples[-1]["cpu"][k] - samples[0]["cpu"][k] for k in samples[0]["cpu"]}
        total = sum(d.values())
        if total > 0:
            busy = round(100 * (1 - (d["idle"] + d["iowait"]) / total), 1)
    return {"samples": len(ts), "mean_interval_s": mean, "cpu_busy_pct": busy}


def _samples(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            s = json.loads(line)
        except ValueError:
            continue
        if "free" in s:
            out.append(s)
    return out


def _last_sample(path: Path) -> dict[str, Any]:
    samples = _samples(path)
    return samples[-1] if samples else {}


def _ip(argv: list[str], out: bool = False, check: bool = True) -> str:
    r = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    if check and r.returncode != 0:
        raise TestbedError(f"kernel client: ip {' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM, a few seconds, SIGKILL: by pid (its own process group)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(5)
