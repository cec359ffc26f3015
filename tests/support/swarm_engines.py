"""TwoEngines: a second Docker engine in a container joins the host's swarm as a worker.

The swarm stack (docker-compose.yml) is meant for several machines; this machine has one
engine. The second engine is Debian's dockerd in a container of ``testbed-engine``
(docker/Dockerfile.engine, on the local base image: nothing can be pulled), with its own
``/var/lib/docker`` on a volume and the node image copied in (``docker save | docker
load``, as on real machines without a registry). Both engines meet on a bridge network
of their own: the manager advertises its gateway address, the worker its address on it,
and the overlay's VXLAN runs between the two (real machines: their own addresses).

Everything made carries ``org.testbed.run=<id>`` and ``org.testbed.managed=swarm-engines``
(:mod:`testbed.backends.docker_labels`): the engine's container, its volume and the
bridge network, the swarm itself (its spec's labels; ``org.testbed.gwbridge=made`` when
``docker_gwbridge`` came with it) and the worker's node entry. The run's teardown, a
crashed attempt's ``testbed clean`` and the run's sweep remove them all by those labels
(:func:`docker_labels.remove`: containers, node entries, networks, volumes, then the
swarm is left), as long as the owner process named in the run's state file is gone.

``python -m tests.support.swarm_engines [--engines 1|2] [--bulk N] [--set K=V]
[--link-mtu 1500]`` runs the contention stack once and prints the verdict, where each
task ran, the integrity check, the drops and the fidelity figures as JSON (the figures
in docs/docker.md). ``--link-mtu`` gives the nodes' links that MTU instead of the
overlay's 1450: the overlay network is made ``VXLAN_OVERHEAD`` larger (a third compose
file, so docker-compose.yml stays as real machines use it), and so is the underlay.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from testbed.backends import docker_labels
from testbed.backends.docker_labels import (GWBRIDGE, LABEL_GWBRIDGE, LABEL_MANAGED,
                                            LABEL_ROLE, LABEL_RUN)
from testbed.results import read_ndjson
from testbed.runctx import RunContext

ROOT = Path(__file__).resolve().parents[2]
ENGINE_IMAGE = os.environ.get("TESTBED_ENGINE_IMAGE", "testbed-engine:latest")
NODE_IMAGE = os.environ.get("TESTBED_IMAGE", "testbed-node:latest")
BASE_IMAGE = os.environ.get("BASE_IMAGE", "testbed-base:bookworm")
MANAGED = "swarm-engines"
ENGINE_TIMEOUT = 90.0      # the inner dockerd answering; the worker ready on the manager
LOAD_TIMEOUT = 600.0       # docker save | docker load of the node image
RUN_TIMEOUT = 300.0        # the stack's tasks all ended (the scenario's deadline is 75 s)
# What VXLAN adds to a frame (outer IPv4, UDP, VXLAN and inner Ethernet headers): Docker's
# overlay gives its interfaces its driver MTU less this, and the underlay must carry it.
VXLAN_OVERHEAD = 50
DONE = {"complete", "failed", "rejected", "shutdown", "orphaned"}
# The kernel's capability names by number (include/uapi/linux/capability.h), as Docker
# spells them: the engine gets those in this machine's bounding set.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")


class EngineError(RuntimeError):
    """A step of the two-engine set-up failed; the message names the step."""


def sh(*argv: str, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode:
        raise EngineError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return r


def missing_capabilities(status: str = "/proc/self/status") -> list[str]:
    """Capabilities Docker's ALL has that this machine's root does not (CapBnd)."""
    bounding = next(int(line.split()[1], 16) for line in Path(status).read_text().splitlines()
                    if line.startswith("CapBnd:"))
    return [name for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]


def wait_until(what: str, ready: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise EngineError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def build_engine_image() -> None:
    """docker/Dockerfile.engine on the local base (cached: a second build costs a second)."""
    with tempfile.TemporaryDirectory(prefix="tb-engine-build.", dir="/var/tmp") as ctx:
        for name in ("Dockerfile.engine", "tb-engine"):
            shutil.copy2(ROOT / "docker" / name, Path(ctx) / name)
        sh("docker", "build", "-q", "-f", f"{ctx}/Dockerfile.engine",
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", ENGINE_IMAGE, ctx, timeout=900)


class TwoEngines:
    """The host's engine as the swarm's manager, a second engine in a container as worker.

    ``client`` is a Docker SDK client of the host's engine. :meth:`up` needs the engine
    outside any swarm (a swarm made by someone else is theirs: EngineError).
    """

    def __init__(self, run: RunContext, client: Any, underlay_mtu: Optional[int] = None):
        self.run, self.client = run, client
        self.underlay_mtu = underlay_mtu      # None: Docker's default (1500)
        self.labels = {LABEL_RUN: run.id, LABEL_MANAGED: MANAGED}
        self.name = f"tb-{run.id}-engine"
        self.hostname = f"tb-{run.id}-worker"
        self.manager_ip = self.worker_ip = ""
        self.worker_node = ""

    # -- bring-up ---------------------------------------------------------------------

    def up(self) -> None:
        state = self.client.info()["Swarm"]["LocalNodeState"]
        if state != "inactive":
            raise EngineError(f"the host's engine is already in a swarm ({state}): not ours "
                              f"to use; `docker swarm leave --force` if nobody needs it")
        self.run.register("docker", f"swarm-engines {self.run.id}", self.down)
        build_engine_image()
        self.manager_ip = self._underlay()
        self._init_swarm()
        self._start_engine()
        self._load_node_image()
        self._join()

    def _underlay(self) -> str:
        """The bridge both engines share (no NAT out); returns the manager's address on it."""
        options = {"com.docker.network.bridge.enable_ip_masquerade": "false"}
        if self.underlay_mtu:
            options["com.docker.network.driver.mtu"] = str(self.underlay_mtu)
        net = self.client.networks.create(
            f"tb-{self.run.id}-underlay", driver="bridge", labels=self.labels, options=options)
        net.reload()
        return net.attrs["IPAM"]["Config"][0]["Gateway"]

    def _init_swarm(self) -> None:
        labels = dict(self.labels)
        if not self.client.networks.list(names=[GWBRIDGE]):
            labels[LABEL_GWBRIDGE] = "made"
        self.client.swarm.init(advertise_addr=self.manager_ip,
                               listen_addr=f"{self.manager_ip}:2377", labels=labels)

    def _start_engine(self) -> None:
        volume = self.client.volumes.create(f"tb-{self.run.id}-engine-data", labels=self.labels)
        self.client.containers.run(
            ENGINE_IMAGE, name=self.name, hostname=self.hostname, detach=True, init=True,
            labels={**self.labels, LABEL_ROLE: "engine"},
            network=f"tb-{self.run.id}-underlay",
            cap_add=["ALL"], cap_drop=missing_capabilities(),
            security_opt=["seccomp=unconfined"],
            devices=["/dev/net/tun"], volumes={volume.name: {"bind": "/var/lib/docker"}})
        container = self.client.containers.get(self.name)
        self.worker_ip = container.attrs["NetworkSettings"]["Networks"][
            f"tb-{self.run.id}-underlay"]["IPAddress"]

        def answers() -> bool:
            container.reload()
            if container.status != "running":
                raise EngineError(f"engine container {self.name} is {container.status}: "
                                  f"{container.logs(tail=5).decode(errors='replace').strip()}")
            return self.inner("docker", "info", "--format", "{{.ServerVersion}}",
                              check=False).returncode == 0

        wait_until(f"the dockerd in {self.name}", answers, ENGINE_TIMEOUT)

    def inner(self, *argv: str, timeout: float = 60, check: bool = True,
              **kw: Any) -> subprocess.CompletedProcess:
        """A command in the engine's container (its docker CLI talks to the inner dockerd)."""
        return sh("docker", "exec", "-i", self.name, *argv, timeout=timeout, check=check, **kw)

    def _load_node_image(self) -> None:
        save = subprocess.Popen(["docker", "save", NODE_IMAGE], stdout=subprocess.PIPE)
        try:
            load = subprocess.run(["docker", "exec", "-i", self.name, "docker", "load", "-q"],
                                  stdin=save.stdout, capture_output=True, text=True,
                                  timeout=LOAD_TIMEOUT)
        finally:
            save.stdout.close()
            saved = save.wait(timeout=60)
        if saved or load.returncode:
            raise EngineError(f"copying {NODE_IMAGE} into {self.name} failed: "
                              f"save {saved}, load {load.returncode}: {load.stderr.strip()}")

    def _join(self) -> None:
        token = self.client.swarm.attrs["JoinTokens"]["Worker"]
        self.inner("docker", "swarm", "join", "--token", token, "--advertise-addr",
                   self.worker_ip, f"{self.manager_ip}:2377", timeout=120)

        def ready() -> Optional[Any]:
            for n in self.client.nodes.list(filters={"role": "worker"}):
                if (n.attrs["Description"]["Hostname"] == self.hostname
                        and n.attrs["Status"]["State"] == "ready"):
                    return n
            return None

        node = wait_until(f"worker {self.hostname} ready on the manager", ready, ENGINE_TIMEOUT)
        spec = node.attrs["Spec"]
        spec["Labels"] = {**(spec.get("Labels") or {}), **self.labels}
        node.update(spec)
        self.worker_node = node.id

    # -- teardown ---------------------------------------------------------------------

    def down(self) -> None:
        """Remove what carries this run's labels (the stack's leftovers too), swarm last."""
        if self.worker_node:      # the worker leaves first, so no task lingers on it
            self.inner("docker", "swarm", "leave", "--force", check=False, timeout=60)
        mine = [o for o in docker_labels.scan(docker_labels.api(docker_labels.REMOVE_TIMEOUT))
                if o.run == self.run.id]
        problems = docker_labels.remove(mine)
        if problems:
            raise EngineError("; ".join(problems))

    # -- what ran where ---------------------------------------------------------------

    def node_names(self) -> dict[str, str]:
        """Node id -> 'manager' or 'worker' (the host's engine or the container's)."""
        return {n.id: ("worker" if n.id == self.worker_node else "manager")
                for n in self.client.nodes.list()}


# -- one run of the stack -----------------------------------------------------------------


PLACEMENT = """version: "3.8"
services:
  bulk:
    deploy:
      placement: {constraints: [node.role == worker]}
"""


def overlay_mtu_file(link_mtu: int) -> str:
    """A compose file that gives the ``lan`` overlay's interfaces (the nodes' links take
    eth0's MTU) ``link_mtu``."""
    return ('version: "3.8"\nnetworks:\n  lan:\n    driver_opts:\n'
            f'      com.docker.network.driver.mtu: "{link_mtu + VXLAN_OVERHEAD}"\n')


def deploy_and_wait(client: Any, stack: str, folder: Path, env: dict[str, str],
                    bulk_on_worker: bool,
                    link_mtu: Optional[int] = None) -> dict[str, list[dict[str, str]]]:
    """Deploy docker-compose.yml as ``stack`` from ``folder``, wait for every task's end.

    Returns, per service, its tasks' node id and final state. ``bulk_on_worker`` adds
    the placement constraint ``node.role == worker`` to the bulk service, ``link_mtu``
    the overlay's MTU (:func:`overlay_mtu_file`): each a file of its own, so
    docker-compose.yml stays as real machines use it.
    """
    shutil.copy(ROOT / "docker-compose.yml", folder / "docker-compose.yml")
    (folder / "runs").mkdir(exist_ok=True)
    files = ["-c", str(folder / "docker-compose.yml")]
    if bulk_on_worker:
        (folder / "placement.yml").write_text(PLACEMENT)
        files += ["-c", str(folder / "placement.yml")]
    if link_mtu:
        (folder / "mtu.yml").write_text(overlay_mtu_file(link_mtu))
        files += ["-c", str(folder / "mtu.yml")]
    sh("docker", "stack", "deploy", *files, stack, env=env, cwd=folder, timeout=120)
    services = [f"{stack}_{s}" for s in ("client", "target", "bulk")]

    def tasks() -> dict[str, list[dict[str, str]]]:
        return {s.split("_", 1)[1]: [{"node": t.get("NodeID", ""),
                                      "state": t["Status"]["State"],
                                      "created": t["CreatedAt"],
                                      "last_change": t["Status"]["Timestamp"],
                                      "error": t["Status"].get("Err", "")}
                                     for t in client.services.get(s).tasks()]
                for s in services}

    def ended() -> Optional[dict[str, list[dict[str, str]]]]:
        now = tasks()
        return now if all(v and all(t["state"] in DONE for t in v) for v in now.values()) \
            else None

    return wait_until(f"every task of stack {stack} to end", ended, RUN_TIMEOUT, every=2.0)


def save_service_logs(stack: str, folder: Path) -> None:
    """Each service's log with timestamps, ``<service>.log`` in ``folder`` (the client's
    says how many bulk sources it found and when; the nodes' say when their links came up)."""
    for svc in ("client", "target", "bulk"):
        r = sh("docker", "service", "logs", "--timestamps", "--raw", f"{stack}_{svc}",
               timeout=60, check=False)
        (folder / f"{svc}.log").write_text(r.stdout + r.stderr)


def run_once(engines: int, bulk: int, overrides: list[str], base: Path,
             replicas: Optional[int] = None, link_mtu: Optional[int] = None) -> dict[str, Any]:
    """One contention run of the stack on one engine or two; its figures as a dict.

    The scenario has ``bulk`` bulk hosts; ``replicas`` bulk tasks run (default as many);
    ``link_mtu``: the nodes' links' MTU (None: the overlay's default, 1450).
    """
    import docker
    client = docker.from_env(timeout=120)
    with RunContext.create(base_dir=base, name=f"swarm-{engines}") as run:
        stack = f"tb{run.id}"
        env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
        env.update(TESTBED_COMPOSE_RUN=run.id, SCENARIO="contention", BULK=str(replicas or bulk),
                   TESTBED_SET=";".join([f"topology.bulk_hosts={bulk}", *overrides]))
        if engines == 2:
            # the underlay carries the overlay's frames whole: link_mtu + VXLAN's headers
            pair = TwoEngines(run, client,
                              underlay_mtu=link_mtu + VXLAN_OVERHEAD if link_mtu else None)
            pair.up()
            where = pair.node_names()
        else:
            if client.info()["Swarm"]["LocalNodeState"] != "inactive":
                raise EngineError("the host's engine is already in a swarm: not ours to use")
            one = TwoEngines(run, client)        # its teardown removes the one-node swarm
            run.register("docker", f"swarm {run.id}", one.down)
            gw = not client.networks.list(names=[GWBRIDGE])
            client.swarm.init(advertise_addr="127.0.0.1",
                              labels={**one.labels, **({LABEL_GWBRIDGE: "made"} if gw else {})})
            where = {n.id: "manager" for n in client.nodes.list()}
        started = time.monotonic()
        tasks = deploy_and_wait(client, stack, base, env, bulk_on_worker=engines == 2,
                                link_mtu=link_mtu)
        took = time.monotonic() - started
        save_service_logs(stack, base)
        sh("docker", "stack", "rm", stack, timeout=60, check=False)
        folders = list((base / "runs").iterdir())
        summary = json.loads((folders[0] / "summary.json").read_text()) if folders else {}
        hosts = json.loads((folders[0] / "hosts.json").read_text()) if folders else {}
        wire_mtu = client_wire_mtu(folders[0]) if folders else None
    return {"run": run.id, "engines": engines, "wall_s": round(took, 1),
            "placement": {svc: sorted(where.get(t["node"], t["node"]) for t in ts)
                          for svc, ts in tasks.items()},
            "states": {svc: sorted(t["state"] for t in ts) for svc, ts in tasks.items()},
            "tasks": tasks,
            "bulk_hosts_run": len([h for h in hosts if h.startswith("bulk")]),
            "client_wire_mtu": wire_mtu,
            "run_folder": str(folders[0]) if folders else None,
            "verdict": summary.get("verdict"), "expected": summary.get("expected"),
            "integrity": summary.get("integrity"), "drops": summary.get("drops"),
            "fidelity": summary.get("fidelity")}


def client_wire_mtu(run_folder: Path) -> Optional[int]:
    """The MTU the client's packet handler found on its wire (client.ndjson's device)."""
    for sample in read_ndjson(run_folder / "client.ndjson"):
        device = (sample.get("net") or {}).get("device")
        if device and device.get("mtu"):
            return int(device["mtu"])
    return None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.swarm_engines",
                                description="the contention stack on one engine or two")
    p.add_argument("--engines", type=int, choices=(1, 2), default=2)
    p.add_argument("--bulk", type=int, default=3, help="the scenario's bulk hosts")
    p.add_argument("--replicas", type=int, default=None,
                   help="bulk tasks started (default: --bulk); fewer: the client goes on "
                        "with those it finds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dir", type=Path, default=None, help="folder kept for the run folder")
    p.add_argument("--link-mtu", type=int, default=None,
                   help="the nodes' links' MTU (default: the overlay's, 1450)")
    a = p.parse_args(argv)
    base = a.dir or Path(tempfile.mkdtemp(prefix=f"swarm{a.engines}-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run_once(a.engines, a.bulk, a.set, base.resolve(), a.replicas,
                                     a.link_mtu), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
