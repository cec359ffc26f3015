"""What this machine's kernel and tools can do, found out once per process.

The testbed does not assume a kernel: it asks. Queueing disciplines are probed by
creating them on a throw-away veth pair inside an anonymous network namespace
(``unshare --net``), which vanishes with the probing shell, so nothing is left on the
machine even if the probe is interrupted. Tools are looked up on PATH; ``dockerd``'s
state is read from its pid file, its socket and the root namespace's FORWARD policy
and ``bridge-nf-call-iptables`` (the two settings that break root-namespace bridges).

:func:`probe` returns a :class:`Capabilities` and caches it for the process.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PROBE_TIMEOUT = 10.0

# qdisc kind -> arguments that make "tc qdisc add dev X root KIND ARGS" valid
QDISCS: dict[str, str] = {
    "htb": "htb default 1",
    "tbf": "tbf rate 1mbit burst 15000 latency 10ms",
    "netem": "netem delay 1ms",
    "pfifo": "pfifo limit 100",
    "bfifo": "bfifo limit 15000",
}
# br_netfilter's switch: 1 sends frames bridged in this namespace through iptables (the
# file exists only while br_netfilter is loaded; dockerd loads it and sets it to 1)
BRIDGE_NF_CALL_IPTABLES = "net.bridge.bridge-nf-call-iptables"
TOOLS = ("mnexec", "tgtd", "tgtadm", "brctl", "bridge", "ip", "tc", "ethtool",
         "iptables", "nft", "iperf3", "iscsi-inq", "iscsi-ls", "ping", "dockerd")


@dataclass(frozen=True)
class DockerState:
    """dockerd and the two root-namespace settings it leaves behind."""

    running: bool
    pid: Optional[int]
    forward_policy: Optional[str]          # "ACCEPT", "DROP", or None if unknown
    bridge_nf_call_iptables: Optional[int]  # 1 makes bridged frames pass iptables;
                                            # None: br_netfilter not loaded


@dataclass(frozen=True)
class Capabilities:
    """The probe's findings."""

    root: bool
    qdiscs: dict[str, bool] = field(default_factory=dict)
    tun: bool = False
    bridge: bool = False
    veth: bool = False
    tools: dict[str, Optional[str]] = field(default_factory=dict)
    docker: DockerState = DockerState(False, None, None, None)
    probe_error: str = ""

    def has_qdisc(self, kind: str) -> bool:
        return self.qdiscs.get(kind, False)

    @property
    def netem(self) -> bool:
        return self.has_qdisc("netem")

    def tool(self, name: str) -> Optional[str]:
        return self.tools.get(name)


@functools.lru_cache(maxsize=1)
def probe() -> Capabilities:
    """Probe once per process (see the module docstring)."""
    tools = {name: shutil.which(name) for name in TOOLS}
    root = os.geteuid() == 0
    qdiscs, links, err = _probe_kernel() if root and tools["tc"] else ({}, {}, "")
    return Capabilities(root=root, qdiscs=qdiscs, tun=_tun_usable(),
                        bridge=links.get("bridge", False), veth=links.get("veth", False),
                        tools=tools, docker=_docker_state(), probe_error=err)


def _probe_kernel() -> tuple[dict[str, bool], dict[str, bool], str]:
    """Try each qdisc kind and link type in a scratch namespace; one shell for all."""
    lines = ["ip link add tbp0 type veth peer name tbp1 >/dev/null 2>&1 && echo link:veth=1",
             "ip link set tbp0 up 2>/dev/null"]
    for kind, args in QDISCS.items():
        lines.append(f"tc qdisc replace dev tbp0 root {args} >/dev/null 2>&1"
                     f" && echo qdisc:{kind}=1; tc qdisc del dev tbp0 root >/dev/null 2>&1")
    lines.append("ip link add tbpbr type bridge >/dev/null 2>&1 && echo link:bridge=1")
    try:
        r = subprocess.run(["unshare", "--net", "--", "sh", "-c", "\n".join(lines)],
                           capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, {}, f"kernel probe failed: {exc}"
    found = {line.split("=")[0] for line in r.stdout.split()}
    qdiscs = {kind: f"qdisc:{kind}" in found for kind in QDISCS}
    links = {kind: f"link:{kind}" in found for kind in ("veth", "bridge")}
    err = "" if links["veth"] else f"kernel probe: no veth ({r.stderr.strip()[:200]})"
    return qdiscs, links, err


def _tun_usable() -> bool:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _docker_state() -> DockerState:
    pid = None
    try:
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        pid = None
    running = pid is not None and _socket_answers("/var/run/docker.sock")
    return DockerState(running, pid, _forward_policy(), _sysctl_int(
        "/proc/sys/" + BRIDGE_NF_CALL_IPTABLES.replace(".", "/")))


def _socket_answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _forward_policy() -> Optional[str]:
    if not shutil.which("iptables") or os.geteuid() != 0:
        return None
    try:
        r = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    for line in r.stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return None


def _sysctl_int(path: str) -> Optional[int]:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
