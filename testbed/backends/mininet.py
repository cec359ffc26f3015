"""The Mininet backend: the topology on real Mininet, Linux bridges, every link shaped.

Mininet gives each host a shell (``mnexec ... bash ... mininet:<name>``) in its own
network namespace and connects nodes with veth pairs. This backend uses Mininet for
exactly that, and changes three things:

1. **The switch lives in its own network namespace** (:class:`NamespacedBridge`).
   dockerd sets the root namespace's FORWARD policy to DROP and
   ``bridge-nf-call-iptables=1``, which silently drops every frame a root-namespace
   bridge forwards. A fresh namespace has its own, empty netfilter tables. Because
   Mininet creates each veth pair from the first node's shell straight into the
   second node's namespace, no interface of the testbed ever exists in the root
   namespace.

2. **Shaping is the testbed's own, and it is checked.** Mininet's ``TCLink`` prints
   tc errors and carries on (on this kernel, delay and loss ask for the missing
   ``sch_netem`` and nothing happens). Here the links are plain veths; then, in each
   namespace, one shell tags every interface (alias ``testbed:<id>``), turns off tx
   checksum offload, TSO, GSO and GRO (the client's packet handler reads frames raw
   and needs full checksums and MTU-sized frames), sets the topology's MTU
   (``topology.mtu``, :func:`mtu_commands`) and puts an htb root (class 5:1 at
   the link's rate, optional child pfifo/netem) on it. The same shell then reads the
   qdisc tree and offload flags back, and a ShapingError naming the link stops the
   bring-up if anything is not in place. The plan, the script and the check are
   :mod:`testbed.backends.shaping`'s, shared with the Docker backend.

3. **Delay and loss follow the kernel** (:mod:`testbed.capabilities`, asked once). With
   ``sch_netem`` they are a netem child of the htb class. Without it (as here) delay
   and loss asked for the storage client's link are returned in
   ``net.userspace_link_effects`` for the client's packet handler to apply, and the
   bring-up says so in one line; on any other link they are refused with a
   ConfigError that says why.

Everything is tagged with the run id (see :mod:`testbed.runctx`): the namespaces are
named ``tb-<id>-<node>``, the processes carry ``TESTBED_RUN``, and the network's
teardown (registered with the run before anything is built) ends tracked processes
by pid, then the node shells, then deletes the namespaces, which takes their veths,
bridge and qdiscs with them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Optional

from mininet.link import Link
from mininet.net import Mininet
from mininet.node import Host as MininetNode
from mininet.nodelib import LinuxBridge
from mininet.moduledeps import pathCheck

from ..errors import EnvironmentProblem
from ..capabilities import Capabilities, probe
from ..runctx import RunContext
from .base import Backend, ContentionParams, Host, Network
from .shaping import (LinkSpec, ShapingError, node_script, plan_links,
                      report_userspace_effects, verify_readback)

MNEXEC = "mnexec"
CONFIG_TIMEOUT = 30.0      # one namespace's configuration script
STOP_GRACE = 5.0           # tracked processes: SIGTERM, then this long, then SIGKILL


# -- Mininet classes -------------------------------------------------------------------


class TestbedMininet(Mininet):
    """Mininet without the machine-wide sysctl changes of ``Mininet.init``.

    ``fixLimits`` raises root-namespace sysctls (buffer sizes, ARP cache, pty count)
    for hundred-node networks; a run must leave the machine as it found it, so only
    the process's own file limit is raised here.
    """

    @classmethod
    def init(cls) -> None:
        import resource
        if os.geteuid() != 0:
            raise EnvironmentProblem("Mininet needs root: run as root (sudo)")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < min(16384, hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))
        cls.inited = True


class NamespacedBridge(LinuxBridge):
    """A Linux bridge in its own network namespace, out of reach of the root's netfilter."""

    def __init__(self, name: str, **params: Any):
        params["inNamespace"] = True
        super().__init__(name, **params)
        self.controlIntf = None   # no control network: Node.defaultIntf applies

    @classmethod
    def setup(cls) -> None:
        # LinuxBridge.setup warns about bridge-nf-call-*tables of the root namespace,
        # which does not apply to a bridge in its own namespace.
        pathCheck("brctl", moduleName="bridge-utils")


# -- hosts and the network ------------------------------------------------------------


class MininetHost(Host):
    """A Mininet host: processes started in it are tracked and tagged."""

    def __init__(self, node: MininetNode, network: "MininetNetwork"):
        self.node = node
        self.name = node.name
        intf = node.defaultIntf()
        self.intf = intf.name
        self.ip = intf.IP()
        self.mac = intf.MAC()
        self._network = network

    def _argv(self, argv: list[str]) -> list[str]:
        # -d: own session (so the process group can be ended with it); -a: enter the host
        return [MNEXEC, "-da", str(self.node.pid), *map(str, argv)]

    def popen(self, argv: list[str], stdout: Any = None, stderr: Any = None,
              env: Optional[dict[str, str]] = None, **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in this host.

        ``env`` replaces the environment as in subprocess (None: ours); either way
        ``TESTBED_RUN`` is added. stdin defaults to /dev/null, stdout/stderr to ours.
        """
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self._argv(argv), stdout=stdout, stderr=stderr,
                                env=self._network.run.env(base=env), **kwargs)
        self._network.track(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        _kill_group(proc.pid, signal.SIGKILL)

    def forget(self, proc: subprocess.Popen) -> None:
        self._network.untrack(proc)

    def __repr__(self) -> str:
        return f"<MininetHost {self.name} {self.ip} {self.intf}>"


class MininetNetwork(Network):
    """A running Mininet network of one run; :meth:`stop` is the run's teardown for it."""

    def __init__(self, run: RunContext, mn: TestbedMininet, params: ContentionParams,
                 effects: dict[str, dict[str, float]]):
        self.run = run
        self.mn = mn
        self.params = params
        self.userspace_link_effects = effects
        self.hosts: dict[str, MininetHost] = {}
        self.netns: list[str] = []
        self._procs: list[subprocess.Popen] = []

    def track(self, proc: subprocess.Popen) -> None:
        self._procs.append(proc)

    def untrack(self, proc: subprocess.Popen) -> None:
        if proc in self._procs:
            self._procs.remove(proc)

    def cli(self) -> None:
        from mininet.cli import CLI
        CLI(self.mn)

    def stop(self) -> None:
        """End tracked processes, then node shells, then delete the namespaces."""
        self._end_tracked()
        nodes = list(self.mn.hosts) + list(self.mn.switches)
        _end_shells(nodes)
        if self.netns:
            _ip_batch([f"netns delete {name}" for name in self.netns], check=False)
            self.netns = []

    def _end_tracked(self) -> None:
        live = [p for p in self._procs if p.poll() is None]
        for p in live:
            _signal_pid(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in live:
            try:
                p.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        self._procs.clear()


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (mnexec -d made it a session leader)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        _signal_pid(pid, sig)


def _end_shells(nodes: list[MininetNode], timeout: float = 5.0) -> None:
    """SIGHUP every Mininet shell at once, wait for all, SIGKILL stragglers."""
    shells = [n for n in nodes if n.shell is not None]
    for n in shells:
        if n.shell.poll() is None:
            _kill_group(n.shell.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    for n in shells:
        try:
            n.shell.wait(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(n.shell.pid, signal.SIGKILL)
            n.shell.wait(timeout=5)
        n.cleanup()


def _ip_batch(lines: list[str], check: bool = True) -> None:
    r = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                       capture_output=True, timeout=CONFIG_TIMEOUT)
    if check and r.returncode != 0:
        raise EnvironmentProblem(f"ip -batch failed: {r.stderr.strip()}")


# -- the backend ----------------------------------------------------------------------


class MininetBackend(Backend):
    """Brings a topology up on Mininet inside a run (see the module docstring)."""

    name = "mininet"

    def up(self, params: ContentionParams) -> MininetNetwork:
        caps = probe()
        check_environment(caps)
        topo = params.topo()
        specs, effects = plan_links(params, caps)
        mn = TestbedMininet(topo=topo, switch=NamespacedBridge, host=MininetNode, link=Link,
                            controller=None, build=False, autoSetMacs=False,
                            waitConnected=False)
        net = MininetNetwork(self.run, mn, params, effects)
        self.run.register("network", f"mininet {params.topology} n={params.n}", net.stop)
        mn.build()
        self._name_namespaces(net)
        mn.start()
        self._shape(net, specs)
        net.hosts = {h.name: MininetHost(h, net) for h in mn.hosts}
        report_userspace_effects(effects)
        return net

    def _name_namespaces(self, net: MininetNetwork) -> None:
        """Give each node's namespace its run-tagged name (``ip netns attach``)."""
        nodes = list(net.mn.hosts) + list(net.mn.switches)
        names = [self.run.netns_name(n.name) for n in nodes]
        net.netns = names
        _ip_batch([f"netns attach {name} {n.pid}" for name, n in zip(names, nodes)])
        for name in names:
            self.run.register("netns", name)

    def _shape(self, net: MininetNetwork, specs: list[LinkSpec]) -> None:
        """Run one configuration script per namespace, in parallel, and verify each."""
        work: dict[str, list[tuple[str, LinkSpec]]] = {}
        for spec in specs:
            work.setdefault(spec.node1, []).append((spec.intf1, spec))
            work.setdefault(spec.node2, []).append((spec.intf2, spec))
        procs = {}
        for name, items in work.items():
            node = net.mn[name]
            extra = [f"ip link set dev {name} alias {self.run.tag}"] \
                if isinstance(node, NamespacedBridge) else []
            extra += mtu_commands([intf for intf, _ in items], net.params.mtu)
            procs[name] = subprocess.Popen(
                [MNEXEC, "-a", str(node.pid), "sh", "-c", node_script(items, self.run.tag, extra)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=CONFIG_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise ShapingError(f"node {name}: link configuration did not finish in "
                                   f"{CONFIG_TIMEOUT:g}s") from None
            if proc.returncode != 0:
                raise ShapingError(f"node {name}: {err.strip().splitlines()[-1] if err.strip() else 'configuration failed'}")
            verify_readback(work[name], out)


def mtu_commands(intfs: list[str], mtu: int) -> list[str]:
    """Set the topology's MTU on a node's interfaces, and check the kernel took it.

    Both ends of every veth get it (Mininet's Link has no MTU option); the bridge follows
    its ports. The client's packet handler reads its wire's MTU when it starts.
    """
    cmds = []
    for intf in intfs:
        cmds += [f"ip link set dev {intf} mtu {mtu}",
                 f"test \"$(cat /sys/class/net/{intf}/mtu)\" = {mtu}"]
    return cmds


def check_environment(caps: Capabilities) -> None:
    """EnvironmentProblem for anything that blocks a Mininet run here."""
    if not caps.root:
        raise EnvironmentProblem("the Mininet backend needs root: run as root (sudo)")
    for tool, package in (("mnexec", "mininet"), ("brctl", "bridge-utils"), ("tc", "iproute2"),
                          ("ip", "iproute2"), ("ethtool", "ethtool")):
        if not caps.tool(tool):
            raise EnvironmentProblem(f"{tool} not found: install the Debian package '{package}'")
    if not caps.has_qdisc("htb"):
        raise EnvironmentProblem("this kernel has no htb qdisc (sch_htb): links cannot be shaped")
    if not caps.bridge:
        raise EnvironmentProblem("this kernel cannot create Linux bridges (CONFIG_BRIDGE)")
