"""``testbed doctor``: can this machine run the testbed? One line per check.

Each line is ``OK``, ``MISSING`` or ``WARN`` with what was found and, when not OK, a
one-line fix (a warning's fix is followed by a line saying what the fix changes). The
exit status is non-zero only when something that blocks a run is missing (root,
mnexec, bridges, htb, tgtd, ...); a missing ``sch_netem`` or dockerd's settings are
reported, not fatal: delay and loss move to user space, and the testbed's bridges live
in their own namespaces, out of dockerd's FORWARD DROP. Plain ``mn``'s bridge does not:
that is the ``WARN``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import cleanup
from ..capabilities import BRIDGE_NF_CALL_IPTABLES, Capabilities, DockerState, probe

# The least invasive way out of dockerd's leftovers for root-namespace bridges: only
# bridged frames stop meeting iptables; routed traffic, containers' included, is filtered
# as before. `iptables -P FORWARD ACCEPT` would instead let this machine route anything
# between its interfaces, which dockerd's DROP (and its FORWARD rules) are there to
# prevent.
ROOT_BRIDGE_FIX = f"sysctl -w {BRIDGE_NF_CALL_IPTABLES}=0"
ROOT_BRIDGE_FIX_CHANGES = (
    "what the fix changes: frames bridged in the root namespace, mn's and docker0's, skip "
    "iptables; routed traffic, to and from containers too, is filtered as before; only "
    "Docker's filtering between containers on one bridge (--icc=false) stops; dockerd sets "
    "it back to 1 when it next sets up a bridge network. To change nothing instead, run mn "
    "under `unshare --net --`")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True
    problem: str = "MISSING"   # the label when not ok: MISSING, or WARN for a hazard
    note: str = ""             # printed under the line when not ok


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
        _kernel_client_check(),
        _root_bridge_check(caps.docker),
        _leftovers_check(),
    ]
    if caps.probe_error:
        out.append(Check("kernel probe", False, caps.probe_error, "run as root", True))
    return out


def _kernel_client_check() -> Check:
    """client.kind: kernel: QEMU and the build tools, and the guest image (optional)."""
    from ..guest.image import status
    ok, detail = status()
    return Check("kernel client", ok, detail, "make guest-image (after scripts/setup.sh)",
                 blocking=False)


def _docker_check(caps: Capabilities) -> Check:
    d = caps.docker
    state = f"dockerd running (pid {d.pid})" if d.running else "dockerd not running"
    return Check("docker", True, f"{state}; root namespace: {_settings(d)}", blocking=False)


def _settings(d: DockerState) -> str:
    """The two settings dockerd leaves behind (they stay after it stops)."""
    policy = d.forward_policy or "unknown (needs root and iptables)"
    nf = ("absent (br_netfilter not loaded)" if d.bridge_nf_call_iptables is None
          else str(d.bridge_nf_call_iptables))
    return f"FORWARD policy {policy}, bridge-nf-call-iptables={nf}"


def _root_bridge_check(d: DockerState) -> Check:
    """Can a Linux bridge in the root namespace (plain `mn --switch lxbr`) forward?

    With bridge-nf-call-iptables=1, br_netfilter passes every bridged IPv4 frame through
    iptables' FORWARD chain, whose DROP policy (dockerd's) then drops it; ARP still
    passes, so hosts resolve each other and every ping times out. ``testbed up`` and
    ``testbed run`` are not concerned: their bridge lives in a namespace of its own,
    with its own (empty, ACCEPT) FORWARD chain.
    """
    name = "plain mn"
    if d.forward_policy is None:
        return Check(name, True, "cannot tell: FORWARD policy unknown (needs root and "
                     "iptables)", blocking=False)
    if d.forward_policy != "DROP":
        return Check(name, True, f"bridges in the root namespace forward: FORWARD policy "
                     f"{d.forward_policy}", blocking=False)
    if d.bridge_nf_call_iptables != 1:
        return Check(name, True, "bridges in the root namespace forward: bridged frames "
                     "skip iptables (bridge-nf-call-iptables off)", blocking=False)
    return Check(name, False,
                 "FORWARD policy DROP and bridge-nf-call-iptables=1 (dockerd sets both and "
                 "leaves them after it stops): frames bridged in the root namespace go "
                 "through FORWARD and are dropped, so plain `mn --switch lxbr` loses every "
                 "ping; testbed up/run are unaffected (their bridge has its own namespace)",
                 ROOT_BRIDGE_FIX, blocking=False, problem="WARN", note=ROOT_BRIDGE_FIX_CHANGES)


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
        print(_line(c))
        if not c.ok:
            blocked += c.blocking
            if c.note:
                print(f"{'':8} {'':16} ({c.note})")
    print(f"doctor: {'ready' if not blocked else f'{blocked} blocking problem(s)'}")
    return 1 if blocked else 0


def _line(c: Check) -> str:
    line = f"{'OK' if c.ok else c.problem:8} {c.name:16} {c.detail}"
    if not c.ok:
        # a missing extra is optional; a warning's fix is needed only for what it names
        line += f"  -> fix: {c.fix}" + (" (optional)" if c.problem == "MISSING"
                                        and not c.blocking else "")
    return line
