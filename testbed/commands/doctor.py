"""``testbed doctor``: can this machine run the testbed? One line per check.

Each line is ``OK`` or ``MISSING`` with what was found and, when missing, a one-line
fix. The exit status is non-zero only when something that blocks a run is missing
(root, mnexec, bridges, htb, tgtd, ...); a missing ``sch_netem`` or a running dockerd
are reported, not fatal: delay and loss move to user space, and the testbed's
bridges live in their own namespaces, out of dockerd's FORWARD DROP.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import cleanup
from ..capabilities import Capabilities, probe


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True


def _tool(caps: Capabilities, tool: str, package: str, blocking: bool = True,
          why: str = "") -> Check:
    path = caps.tool(tool)
    return Check(tool, bool(path), path or f"not on PATH{why}",
                 f"apt-get install {package}", blocking)


def checks(caps: Capabilities) -> list[Check]:
    q = caps.has_qdisc
    out = [
        Check("root", caps.root, "running as root" if caps.root else "not root",
              "run as root: sudo testbed doctor"),
        _tool(caps, "mnexec", "mininet"),
        _tool(caps, "brctl", "bridge-utils"),
        _tool(caps, "tc", "iproute2"),
        _tool(caps, "ethtool", "ethtool"),
        _tool(caps, "tgtd", "tgt"),
        _tool(caps, "tgtadm", "tgt"),
        Check("kernel: veth", caps.veth, "veth pairs", "a kernel with CONFIG_VETH"),
        Check("kernel: bridge", caps.bridge, "Linux bridges", "modprobe bridge (CONFIG_BRIDGE)"),
        Check("kernel: htb", q("htb"), "qdisc htb (link rates)", "modprobe sch_htb"),
        Check("kernel: tbf", q("tbf"), "qdisc tbf", "modprobe sch_tbf", blocking=False),
        Check("kernel: pfifo", q("pfifo"), "qdisc pfifo (queue limits)", "modprobe sch_fifo",
              blocking=False),
        Check("kernel: netem", q("netem"),
              "qdisc netem" if q("netem") else "no sch_netem: client-link delay/loss are done "
              "in user space, other links refuse them", "modprobe sch_netem (if your kernel "
              "has it)", blocking=False),
        Check("kernel: tun", caps.tun, "/dev/net/tun (the client's packet handler)",
              "modprobe tun"),
        _tool(caps, "iptables", "iptables", blocking=False),
        _tool(caps, "nft", "nftables", blocking=False),
        _tool(caps, "iperf3", "iperf3", blocking=False, why=" (fidelity checks)"),
        _tool(caps, "iscsi-inq", "libiscsi-bin", blocking=False, why=" (reference initiator)"),
        _tool(caps, "ping", "iputils-ping", blocking=False),
        _docker_check(caps),
        _leftovers_check(),
    ]
    if caps.probe_error:
        out.append(Check("kernel probe", False, caps.probe_error, "run as root", True))
    return out


def _docker_check(caps: Capabilities) -> Check:
    d = caps.docker
    state = f"dockerd running (pid {d.pid})" if d.running else "dockerd not running"
    state += f"; FORWARD policy {d.forward_policy or '?'}, bridge-nf-call-iptables=" \
             f"{'?' if d.bridge_nf_call_iptables is None else d.bridge_nf_call_iptables}"
    state += " (no effect: the testbed's bridge has its own namespace)"
    return Check("docker", True, state, blocking=False)


def _leftovers_check() -> Check:
    try:
        dead = [left for left in cleanup.find_dead_runs() if not left.empty]
    except OSError as exc:
        return Check("leftovers", False, f"cannot scan: {exc}", "run as root", False)
    return Check("leftovers", not dead,
                 f"{len(dead)} dead run(s) left things behind" if dead else "none from dead runs",
                 "testbed clean", blocking=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check what this machine has for the testbed",
                              description=__doc__.split("\n\n")[0])
    p.set_defaults(func=run)


def run(_args: argparse.Namespace) -> int:
    blocked = 0
    for c in checks(probe()):
        line = f"{'OK' if c.ok else 'MISSING':8} {c.name:16} {c.detail}"
        if not c.ok:
            line += f"  -> fix: {c.fix}" + ("" if c.blocking else " (optional)")
            blocked += c.blocking
        print(line)
    print(f"doctor: {'ready' if not blocked else f'{blocked} blocking problem(s)'}")
    return 1 if blocked else 0
