"""Link shaping shared by the backends: plan the links, shape them with tc, check them.

Both backends shape a link the same way, wherever its ends live (a Mininet host's
namespace, a container): :func:`plan_links` turns the topology's parameters into one
:class:`LinkSpec` per link, reading the topology's plain description
(``topologies/contention_layout.py``) and moving delay and loss the kernel cannot
do to the user-space packet handler; :func:`node_script` is the POSIX sh script that
tags, de-offloads and shapes every interface of one node (htb root ``5:``, class
``5:1`` at the link's rate, an optional netem or pfifo child ``10:``) and then
prints the qdisc tree and offload flags back; :func:`verify_readback` checks that
output (:func:`parse_readback`, :func:`verify_interface`) and raises a
:class:`ShapingError` naming the link if anything is not in place (a tc that prints
an error and carries on does not pass).

Nothing here imports Mininet: the Docker backend and the node image use this module
without it. How the script reaches a node (``mnexec``, ``docker exec``, a shell in
place) is each backend's business.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from topologies.contention_layout import LinkDesc, contention_links

from ..capabilities import Capabilities
from ..errors import ConfigError, TestbedError
from .base import ContentionParams

HTB_HANDLE, HTB_CLASS, CHILD_HANDLE = "5:", "5:1", "10:"
OFFLOADS = ("tx-checksumming", "tcp-segmentation-offload",
            "generic-segmentation-offload", "generic-receive-offload")


class ShapingError(TestbedError):
    """A link's shaping or offload settings are not what was asked for."""


# -- link plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkSpec:
    """One link to shape: both ends, and what the kernel is to do on each."""

    node1: str
    intf1: str
    node2: str
    intf2: str
    bw: float                        # Mbit/s
    delay_ms: float = 0.0            # done by netem (empty if not in kernel)
    loss_pct: float = 0.0
    queue: Optional[int] = None

    @property
    def label(self) -> str:
        return f"{self.intf1}<->{self.intf2}"


def topology_links(params: ContentionParams) -> list[LinkDesc]:
    """The links of ``params``' topology, ``(node1, node2, options)`` in Mininet's terms.

    The same list ``params.topo()`` (the Mininet Topo) is built from, read without Mininet.
    """
    return contention_links(**params.layout())


def plan_links(params: ContentionParams,
               caps: Capabilities) -> tuple[list[LinkSpec], dict[str, dict[str, float]]]:
    """The links to shape and the delay/loss left to user space.

    Raises ConfigError for delay or loss the kernel cannot do on a link that has no
    user-space packet handler.
    """
    specs, effects = [], {}
    for n1, n2, info in topology_links(params):
        delay = _delay_ms(info.get("delay"))
        loss = float(info.get("loss") or 0)
        queue = info.get("max_queue_size")
        p1, p2 = info["port1"], info["port2"]
        where = {n1, n2}
        if (delay or loss) and not caps.netem:
            if params.userspace_host in where:
                effects[params.userspace_host] = {"delay_ms": delay, "loss_pct": loss}
                delay = loss = 0.0
            else:
                raise ConfigError(
                    f"link {n1}-{n2}: delay/loss asked (trunk_delay={params.trunk_delay}, "
                    f"trunk_loss={params.trunk_loss}) but this kernel has no sch_netem; "
                    f"only the {params.userspace_host} link can add them, in user space")
        specs.append(LinkSpec(n1, f"{n1}-eth{p1}", n2, f"{n2}-eth{p2}", float(info["bw"]),
                              delay, loss, None if queue is None else int(queue)))
    return specs, effects


def _delay_ms(value: Any) -> float:
    if not value:
        return 0.0
    m = re.fullmatch(r"([\d.]+)\s*(us|ms|s)?", str(value))
    if not m:
        raise ConfigError(f"link delay {value!r} is not a time such as '10ms'")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def report_userspace_effects(effects: dict[str, dict[str, float]]) -> None:
    """One line on stderr naming the delay and loss left to the packet handler, if any."""
    if effects:
        parts = [f"{host}: delay {e['delay_ms']:g} ms, loss {e['loss_pct']:g} %"
                 for host, e in effects.items()]
        print(f"testbed: no sch_netem in this kernel; left to the packet handler in user "
              f"space: {'; '.join(parts)}", file=sys.stderr)


# -- shaping: one script per node, then read back ----------------------------------------


def shaping_commands(intf: str, spec: LinkSpec, tag: str) -> list[str]:
    """Shell commands that tag, de-offload and shape one interface."""
    cmds = [f"ip link set dev {intf} alias {tag}",
            f"ethtool -K {intf} tx off tso off gso off gro off >/dev/null",
            f"tc qdisc replace dev {intf} root handle {HTB_HANDLE} htb default 1",
            f"tc class add dev {intf} parent {HTB_HANDLE} classid {HTB_CLASS} htb "
            f"rate {spec.bw:g}mbit burst 15k quantum 1514"]
    if spec.delay_ms or spec.loss_pct:
        netem = f"netem delay {spec.delay_ms:g}ms loss {spec.loss_pct:g}%"
        if spec.queue:
            netem += f" limit {spec.queue}"
        cmds.append(f"tc qdisc add dev {intf} parent {HTB_CLASS} handle {CHILD_HANDLE} {netem}")
    elif spec.queue:
        cmds.append(f"tc qdisc add dev {intf} parent {HTB_CLASS} handle {CHILD_HANDLE} "
                    f"pfifo limit {spec.queue}")
    return cmds


def readback_commands(intf: str) -> list[str]:
    pattern = "|".join(OFFLOADS)
    return [f"echo '@@ {intf}'", f"tc qdisc show dev {intf}", f"tc class show dev {intf}",
            f"ethtool -k {intf} | grep -E '^({pattern}):'"]


def node_script(work: list[tuple[str, LinkSpec]], tag: str, extra: Iterable[str] = ()) -> str:
    """A POSIX sh script: every command checked, then the read-back of every interface."""
    lines = ["fail() { echo \"$1\" >&2; exit 1; }"]
    for cmd in list(extra) + [c for intf, spec in work for c in shaping_commands(intf, spec, tag)]:
        quoted = cmd.split(" >", 1)[0].replace("'", "")
        lines.append(f"{cmd} || fail '{quoted}'")
    for intf, _ in work:
        lines.extend(readback_commands(intf))
    return "\n".join(lines) + "\n"


def parse_readback(out: str) -> dict[str, str]:
    """Split the read-back output into one text block per interface."""
    blocks, name = {}, None
    for line in out.splitlines():
        if line.startswith("@@ "):
            name = line[3:].strip()
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line + "\n"
    return blocks


def verify_readback(work: list[tuple[str, LinkSpec]], out: str) -> None:
    """Check every interface of a node's script (``work`` as given to :func:`node_script`)
    against its read-back output; ShapingError names the first that is wrong."""
    blocks = parse_readback(out)
    for intf, spec in work:
        verify_interface(intf, spec, blocks.get(intf, ""))


_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def _rate_bits(text: str) -> Optional[float]:
    m = re.search(r"\brate (\d+(?:\.\d+)?)([KMG]?bit)\b", text, re.I)
    return float(m.group(1)) * _RATE_UNITS[m.group(2).lower()] if m else None


def verify_interface(intf: str, spec: LinkSpec, block: str) -> None:
    """Raise ShapingError naming the link unless ``intf`` is shaped as ``spec`` says."""
    where = f"link {spec.label}, interface {intf}"
    if not re.search(rf"^qdisc htb {HTB_HANDLE} root\b", block, re.M):
        root = re.search(r"^qdisc (\S+ \S+) root", block, re.M)
        raise ShapingError(f"{where}: root qdisc is {root.group(1) if root else 'missing'}, "
                           f"expected htb {HTB_HANDLE} (shaping not in place)")
    rate = _rate_bits(block.split(f"class htb {HTB_CLASS}", 1)[-1]) \
        if f"class htb {HTB_CLASS}" in block else None
    if rate is None or abs(rate - spec.bw * 1e6) > 0.01 * spec.bw * 1e6:
        raise ShapingError(f"{where}: htb class {HTB_CLASS} rate is "
                           f"{'missing' if rate is None else f'{rate / 1e6:g} Mbit/s'}, "
                           f"expected {spec.bw:g} Mbit/s")
    if spec.delay_ms or spec.loss_pct:
        if not re.search(rf"^qdisc netem {CHILD_HANDLE} parent {HTB_CLASS}", block, re.M):
            raise ShapingError(f"{where}: netem child for delay/loss is missing")
    elif spec.queue and not re.search(
            rf"^qdisc pfifo {CHILD_HANDLE} parent {HTB_CLASS} limit {spec.queue}p", block, re.M):
        raise ShapingError(f"{where}: queue limit of {spec.queue} packets is not in place")
    for name in OFFLOADS:
        if not re.search(rf"^{name}: off", block, re.M):
            raise ShapingError(f"{where}: {name} is still on (ethtool -K had no effect)")
