"""The Docker backend: the contention topology as containers of the node image.

Each host of the topology (client, target, bulk1..N) is a container of the node image
(``docker/Dockerfile``, ``make images``), made through the Docker SDK for Python:

- named ``tb-<id>-<host>``, labelled ``org.testbed.run=<id>``, ``org.testbed.role``
  and ``org.testbed.managed=backend`` (:mod:`testbed.backends.docker_labels`), with
  ``TESTBED_RUN=<id>`` in its environment, so every process in it is tagged too;
- only the capabilities its node needs: ``NET_ADMIN`` (links, tc, the handler's TAP
  and nft table); the client also ``NET_RAW`` (the handler's raw socket) and the
  device ``/dev/net/tun``; everything else dropped;
- the run folder (and the run's scratch folder) bind-mounted at the same path as on
  the machine, so the orchestrator's paths work unchanged inside;
- PID 1 is Docker's init with ``sleep infinity``: the nodes are started later, by
  :meth:`DockerHost.popen`;
- the client's ``/proc/sys/net`` writable (:func:`writable_net_sysctls`): its packet
  handler sets sysctls of its wire, and Docker mounts ``/proc/sys`` read-only.

**The switch.** All containers of a run sit on one Docker bridge network,
``tb-<id>-lan``, without NAT. It is only the fabric: inside each container, Docker's
``eth0`` is a port of a small bridge ``s1`` that also holds ``s1-eth<k>``, the switch
port of that host's link, whose veth peer ``<host>-eth0`` carries the topology's own
address and MAC (``10.0.0.1``, ...; see ``topologies/contention.py``). The bridge only
forwards: an nft rule of the bridge family drops whatever would be delivered to the
bridge itself, else the host's stack (weak host model) would answer ARP on it and take
frames from the fabric past the shaped port::

    tb-<id>-lan ---- eth0 --[ s1 ]-- s1-eth1 ======= client-eth0  10.0.0.1/24
     (Docker)         container tb-<id>-client  (htb)   veth   (htb)

This is Mininet's link, both ends shaped, inside the container it belongs to. The end
that matters most cannot be anywhere else: traffic *to* the client must be shaped
before the client's packet handler sees it, and the handler reads its wire raw, ahead
of any ingress qdisc, so the shaper sits on ``s1-eth1``'s egress, as on Mininet's
``s1-eth1``. The Docker network's own addresses are removed from ``eth0``: the
topology's addresses exist only on the hosts' interfaces, several runs can use them
at once (one bridge each), and the machine has no route to them.

**Shaping** is the Mininet backend's, from the module both use
(:mod:`testbed.backends.shaping`: ``plan_links``, ``node_script``,
``verify_readback``): one script per container, run through the engine, configures
both ends of the link (htb root ``5:``, class ``5:1`` at the link's rate, optional
pfifo child, offloads off), reads them back, and any difference is a ShapingError
naming the link. Delay and loss follow the kernel as there. The hosts, addresses and
links come from the topology's plain description (``topologies/contention_layout.py``):
nothing here, nor in the node image, imports Mininet.

**Processes.** :meth:`DockerHost.popen` runs ``docker exec`` and returns that
:class:`subprocess.Popen` (a :class:`DockerProcess`): its output and exit status are the
command's, and its signals (``terminate``, ``kill``, ``send_signal``) are delivered to
the command inside the container, found by a token in its environment. The testbed's
own interpreter (``sys.executable``) becomes the image's. Every tracked process gets
SIGTERM, then SIGKILL, at teardown; removing the containers ends anything else.

**Teardown** is registered with the run before anything exists: tracked processes,
then every container with the run's label (``docker rm -f``), then the network. The
run's sweep and ``testbed clean`` find labelled leftovers (see ``docker_labels``).
"""

from __future__ import annotations

import cmd
import concurrent.futures
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from topologies.contention_layout import host_cidr, host_mac

from ..errors import ConfigError, EnvironmentProblem, TestbedError
from ..capabilities import probe
from ..runctx import RunContext
from .base import Backend, ContentionParams, Host, HostCommandTimeout, Network
from . import docker_labels
from .docker_labels import LABEL_MANAGED, LABEL_ROLE, LABEL_RUN
from .shaping import (LinkSpec, ShapingError, node_script, plan_links,
                      report_userspace_effects, verify_readback)

IMAGE = os.environ.get("TESTBED_IMAGE", "testbed-node:latest")
IMAGE_PYTHON = "/opt/testbed/bin/python"     # the project's interpreter in the image
TRUNK = "eth0"                 # Docker's interface in each container
SWITCH = "s1"                  # the bridge inside each container
SWITCH_TABLE = "tb_switch"     # nft bridge table: nothing is delivered to the bridge itself
EXEC_TOKEN = "TESTBED_EXEC"    # environment variable that finds a popen'ed command
ENGINE_TIMEOUT = 60.0          # seconds per engine request
CONFIG_TIMEOUT = 30.0          # one container's link script
STOP_GRACE = 5.0               # tracked processes: SIGTERM, this long, then SIGKILL
WORKERS = 8                    # containers made and configured at once
# Variables of this machine's environment that mean nothing inside the image.
HOST_ONLY_ENV = frozenset({"PATH", "HOME", "PWD", "OLDPWD", "VIRTUAL_ENV", "PYTHONHOME",
                           "PYTHONPATH", "SHELL", "USER", "LOGNAME", "TERM"})


def check_mtu(params: ContentionParams) -> None:
    """ConfigError unless the topology's MTU is the default: here the links take the MTU of
    Docker's network (``plumbing_commands``), so another value would silently not apply."""
    default = ContentionParams().mtu
    if params.mtu != default:
        raise ConfigError(f"topology.mtu (parameter mtu) is {params.mtu}: the Docker backend's "
                          f"links take its Docker network's MTU ({default} by default); only the "
                          f"Mininet backend sets topology.mtu")


def role_of(host: str) -> str:
    """The org.testbed.role of a host: client, target or bulk."""
    return "bulk" if host.startswith("bulk") else host


# -- the link inside one container ------------------------------------------------------


def plumbing_commands(spec: LinkSpec, cidr: str, mac: str) -> list[str]:
    """Shell commands that build one host's link inside its container (see the docstring).

    ``spec.intf1`` is the host's interface, ``spec.intf2`` its switch port.
    """
    host_if, port = spec.intf1, spec.intf2
    return [f"ip addr flush dev {TRUNK}",
            f"ip route flush dev {TRUNK}",
            f"ip link add {host_if} type veth peer name {port}",
            f"ip link set dev {host_if} mtu \"$(cat /sys/class/net/{TRUNK}/mtu)\"",
            f"ip link set dev {port} mtu \"$(cat /sys/class/net/{TRUNK}/mtu)\"",
            f"ip link add {SWITCH} type bridge",
            # The bridge is also an interface of this namespace: with the weak host model
            # the host's stack would answer ARP on it and take frames straight from the
            # fabric, past the switch port's shaper (and the client's packet handler).
            f"nft add table bridge {SWITCH_TABLE}",
            f"nft add chain bridge {SWITCH_TABLE} local_in "
            f"'{{ type filter hook input priority 0; policy drop; }}'",
            f"ip link set dev {TRUNK} master {SWITCH}",
            f"ip link set dev {port} master {SWITCH}",
            f"ip link set dev {host_if} address {mac}",
            f"ip addr add {cidr} dev {host_if}",
            f"ip link set dev {SWITCH} up",
            f"ip link set dev {port} up",
            f"ip link set dev {host_if} up",
            f"ethtool -K {TRUNK} tx off tso off gso off gro off >/dev/null"]


def configure_link(run_script: Callable[[str], tuple[int, str, str]], where: str,
                   spec: LinkSpec, cidr: str, mac: str, tag: str) -> None:
    """Build, shape, read back and verify one host's link; ShapingError names what is wrong.

    ``run_script(text)`` runs a POSIX sh script where the link lives and returns
    (status, stdout, stderr): through the engine for the backend, in place for
    docker-compose.yml's nodes.
    """
    work = [(spec.intf1, spec), (spec.intf2, spec)]
    status, out, err = run_script(node_script(work, tag, plumbing_commands(spec, cidr, mac)))
    if status != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"status {status}"
        raise ShapingError(f"{where}: link configuration failed: {last}")
    verify_readback(work, out)


# -- processes ----------------------------------------------------------------------------


def exec_pids(token: str) -> list[int]:
    """Host pids of the commands started with ``TESTBED_EXEC=token`` (not their children)."""
    needle = f"{EXEC_TOKEN}={token}".encode()
    tagged: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        tagged[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return [pid for pid, ppid in tagged.items() if ppid not in tagged]


class DockerProcess(subprocess.Popen):
    """``docker exec`` of one command; signals go to the command inside the container.

    ``docker exec`` does not forward signals: ending the CLI would leave the command
    running. So :meth:`send_signal` finds the command by its token (it is a session
    leader in the container) and signals it, by pid, from this machine; the CLI then
    exits with the command's status. SIGKILL goes to the command's process group.
    """

    FIND_TIMEOUT = 2.0     # a command just started may not have exec'd yet

    def __init__(self, argv: list[str], token: str, **kwargs: Any):
        self.token = token
        super().__init__(argv, **kwargs)

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        deadline = time.monotonic() + self.FIND_TIMEOUT
        pids = exec_pids(self.token)
        while not pids and self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = exec_pids(self.token)
        if not pids:
            if self.poll() is None:        # the command never started: end the CLI
                super().send_signal(sig)
            return
        for pid in pids:
            try:
                if sig == signal.SIGKILL:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass


class DockerHost(Host):
    """A host of a Docker network: processes started in it are tracked and tagged."""

    def __init__(self, name: str, spec: LinkSpec, cidr: str, mac: str, container: Any,
                 network: "DockerNetwork"):
        self.name = name
        self.ip = cidr.split("/")[0]
        self.mac = mac
        self.intf = spec.intf1
        self.container = container
        self._network = network

    def _command(self, argv: list[str], env: Optional[dict[str, str]], token: str,
                 cwd: Optional[str], interactive: bool) -> list[str]:
        argv = [str(a) for a in argv]
        if argv and argv[0] in (sys.executable, os.path.realpath(sys.executable)):
            argv[0] = IMAGE_PYTHON
        cli = [self._network.docker_cli, "exec"] + (["-i"] if interactive else [])
        extra = {k: v for k, v in (env or {}).items() if k not in HOST_ONLY_ENV}
        extra.update({"TESTBED_RUN": self._network.run.id, EXEC_TOKEN: token})
        for key, value in extra.items():
            cli += ["-e", f"{key}={value}"]
        if cwd is not None:
            cli += ["-w", str(cwd)]
        return cli + [self.container.name] + argv

    def popen(self, argv: list[str], stdout: Any = None, stderr: Any = None,
              env: Optional[dict[str, str]] = None, **kwargs: Any) -> DockerProcess:
        """Start ``argv`` in this host's container (see :class:`DockerProcess`).

        ``env`` adds variables to the container's environment (this machine's PATH,
        HOME, virtual environment and the like are left out: they name paths that do
        not exist in the image); ``TESTBED_RUN`` is set either way. stdin defaults to
        /dev/null, stdout/stderr to ours; ``cwd`` is a folder inside the container.
        """
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        token = secrets.token_hex(8)
        argv_ = self._command(argv, env, token, kwargs.pop("cwd", None),
                              kwargs["stdin"] == subprocess.PIPE)
        proc = DockerProcess(argv_, token, stdout=stdout, stderr=stderr,
                             env=self._network.run.env(), **kwargs)
        self._network.track(proc)
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        self._network.untrack(proc)

    def __repr__(self) -> str:
        return f"<DockerHost {self.name} {self.ip} {self.intf} ({self.container.name})>"


# -- the network ----------------------------------------------------------------------------


class DockerNetwork(Network):
    """The containers and network of one run; :meth:`stop` is the run's teardown for them."""

    def __init__(self, run: RunContext, client: Any, params: ContentionParams,
                 effects: dict[str, dict[str, float]], docker_cli: str):
        self.run = run
        self.client = client
        self.params = params
        self.userspace_link_effects = effects
        self.docker_cli = docker_cli
        self.hosts: dict[str, DockerHost] = {}
        self.lan: Optional[Any] = None
        self.stopping = threading.Event()
        self.pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._procs: list[DockerProcess] = []
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"{LABEL_RUN}={self.run.id}"

    def container_name(self, host: str) -> str:
        return f"tb-{self.run.id}-{host}"

    def track(self, proc: DockerProcess) -> None:
        with self._lock:
            self._procs.append(proc)

    def untrack(self, proc: DockerProcess) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def cli(self) -> None:
        DockerCli(self).cmdloop()

    def stop(self) -> None:
        """End tracked processes, then remove the run's containers and network, by label."""
        self.stopping.set()
        if self.pool is not None:         # a bring-up still running: let its steps end
            self.pool.shutdown(wait=True, cancel_futures=True)
        self._end_tracked()
        problems = self._remove_containers()
        for net in self.client.networks.list(filters={"label": self.label}):
            try:
                docker_labels.remove_network(self.client.api, net.id)
            except Exception as exc:   # noqa: BLE001  reported below, the sweep retries
                problems.append(f"network {net.name}: {exc}")
        # A second pass: an engine call that outlived its client's timeout during a
        # loaded bring-up may have finished making a container after the first list.
        problems += self._remove_containers()
        if problems:
            raise TestbedError("; ".join(problems))

    def _remove_containers(self) -> list[str]:
        """Remove the run's labelled containers (with force); one problem line each."""
        problems = []
        containers = self.client.containers.list(all=True, filters={"label": self.label},
                                              ignore_removed=True)
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            for c, exc in zip(containers, pool.map(_remove_container, containers)):
                if exc:
                    problems.append(f"container {c.name}: {exc}")
        return problems

    def _end_tracked(self) -> None:
        with self._lock:
            live = [p for p in self._procs if p.poll() is None]
            self._procs.clear()
        for p in live:
            p.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for p in live:
            try:
                p.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)   # the CLI itself; rm -f ends the rest
                    p.wait(timeout=5)


def _remove_container(container: Any) -> Optional[str]:
    import docker.errors
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    except Exception as exc:   # noqa: BLE001  one line per container, collected by stop()
        return str(exc)
    return None


class DockerCli(cmd.Cmd):
    """``docker> <host> <command>``: run a command in a host; ``hosts``; ``exit``."""

    prompt = "docker> "

    def __init__(self, net: DockerNetwork):
        super().__init__()
        self.net = net
        self.intro = ("hosts: " + ", ".join(f"{h.name} {h.ip}" for h in net.hosts.values())
                      + f"\nshell in a host: docker exec -it {net.container_name('client')} bash"
                      + "\ntype '<host> <command>', 'hosts' or 'exit'")

    def do_hosts(self, _arg: str) -> None:
        """List the hosts: name, address, interface, container."""
        for h in self.net.hosts.values():
            print(f"{h.name:8} {h.ip:12} {h.intf:12} {h.container.name}")

    def do_exit(self, _arg: str) -> bool:
        """Leave the prompt (the run then tears the network down)."""
        return True

    do_EOF = do_exit

    def default(self, line: str) -> None:
        name, _, rest = line.partition(" ")
        host = self.net.hosts.get(name)
        if host is None or not rest.strip():
            print(f"usage: <host> <command>; hosts: {', '.join(self.net.hosts)}")
            return
        try:
            r = host.run(shlex.split(rest), timeout=60)
        except (HostCommandTimeout, ValueError) as exc:
            print(exc)
            return
        print((r.stdout + r.stderr).rstrip())


# -- the backend -----------------------------------------------------------------------------


class DockerBackend(Backend):
    """Brings a topology up as containers inside a run (see the module docstring)."""

    name = "docker"

    def __init__(self, run: RunContext, image: str = IMAGE):
        super().__init__(run)
        self.image = image

    def up(self, params: ContentionParams) -> DockerNetwork:
        check_mtu(params)
        client, docker_cli = check_environment(self.image)
        specs, effects = plan_links(params, probe())
        net = DockerNetwork(self.run, client, params, effects, docker_cli)
        self.run.register("network", f"docker {params.topology} n={params.n}", net.stop)
        net.lan = client.networks.create(
            f"tb-{self.run.id}-lan", driver="bridge",
            labels={LABEL_RUN: self.run.id, LABEL_MANAGED: "backend"},
            options={"com.docker.network.bridge.name": f"tb-{self.run.id}-lan"[:15],
                     "com.docker.network.bridge.enable_ip_masquerade": "false"})
        self.run.register("docker-network", net.lan.name)
        net.pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
        try:
            futures = {spec.node1: net.pool.submit(self._host, net, spec) for spec in specs}
            hosts = {name: f.result() for name, f in futures.items()}
        finally:
            net.pool.shutdown(wait=True, cancel_futures=True)
            net.pool = None
        net.hosts = {name: hosts[name] for name in params.host_names}
        report_userspace_effects(effects)
        return net

    def _host(self, net: DockerNetwork, spec: LinkSpec) -> DockerHost:
        """Make, start and wire one host's container (runs in the bring-up pool)."""
        name = spec.node1
        cidr, mac = host_cidr(name), host_mac(name)
        if net.stopping.is_set():
            raise TestbedError(f"host {name}: bring-up cancelled")
        container = net.client.containers.run(self.image, **self._container_options(net, name))
        self.run.register("container", container.name)
        if name == ContentionParams.userspace_host:
            writable_net_sysctls(container)
        if net.stopping.is_set():
            raise TestbedError(f"host {name}: bring-up cancelled")

        def run_script(script: str) -> tuple[int, str, str]:
            status, (out, err) = container.exec_run(["sh", "-c", script], demux=True)
            return status, (out or b"").decode(), (err or b"").decode()

        configure_link(run_script, f"host {name} ({container.name})", spec, cidr, mac,
                       self.run.tag)
        return DockerHost(name, spec, cidr, mac, container, net)

    def _container_options(self, net: DockerNetwork, name: str) -> dict[str, Any]:
        role = role_of(name)
        mounts = {str(path): {"bind": str(path), "mode": "rw"}
                  for path in (self.run.dir, self.run.scratch)}
        caps = ["NET_ADMIN"] + (["NET_RAW"] if role == "client" else [])
        return dict(
            name=net.container_name(name), hostname=name, detach=True, init=True,
            entrypoint=["sleep", "infinity"], command=[],
            labels={LABEL_RUN: self.run.id, LABEL_ROLE: role, LABEL_MANAGED: "backend"},
            environment={"TESTBED_RUN": self.run.id}, network=net.lan.name,
            cap_drop=["ALL"], cap_add=caps, volumes=mounts,
            devices=["/dev/net/tun:/dev/net/tun:rwm"] if role == "client" else [])


def writable_net_sysctls(container: Any) -> None:
    """Give the container a writable ``/proc/sys/net`` (its own namespace's, and only that).

    Docker mounts ``/proc/sys`` read-only, and the packet handler isolates its wire with
    per-interface sysctls (``arp_ignore``, ``disable_ipv6``). ``/proc/sys/net`` shows the
    reading process's own network namespace, so a writable bind of just that folder,
    made from this machine in the container's mount namespace, lets the node set its
    own interfaces and nothing machine-wide (``vm.*``, ``kernel.*`` stay read-only).
    """
    container.reload()
    pid = container.attrs["State"]["Pid"]
    script = "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net"
    r = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", script],
                       capture_output=True, text=True, timeout=CONFIG_TIMEOUT)
    if r.returncode != 0:
        raise EnvironmentProblem(f"container {container.name}: cannot make /proc/sys/net "
                                 f"writable: {r.stderr.strip() or r.returncode}")


def engine() -> Any:
    """A Docker SDK client of the local engine; EnvironmentProblem saying how to get one."""
    try:
        import docker
    except ImportError:
        raise EnvironmentProblem("the Docker backend needs the Docker SDK for Python: "
                                 "pip install 'testbed[docker]' (scripts/setup.sh does)") from None
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(f"no Docker engine answers ({_short(exc)}): start one with "
                                 f"scripts/docker-up.sh") from None
    return client


def check_environment(image: str = IMAGE) -> tuple[Any, str]:
    """(engine client, docker CLI path), or EnvironmentProblem for what blocks a run."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("the Docker backend needs root: run as root (sudo)")
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise EnvironmentProblem("docker (the CLI) not found: install the Debian package "
                                 "'docker.io'")
    if shutil.which("nsenter") is None:
        raise EnvironmentProblem("nsenter not found: install the Debian package 'util-linux'")
    client = engine()
    import docker.errors
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise EnvironmentProblem(f"the node image {image} does not exist: build it with "
                                 f"`make images`") from None
    return client, docker_cli


def _short(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc))[:160]
