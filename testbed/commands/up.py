"""``testbed up contention --bulk N --bw MBIT ...``: a live network to look at.

Brings the topology up on Mininet inside a run, starts tgtd serving a LUN in the
target host (``nodes.iscsi_target``) and a TCP bulk source in each bulk host
(``nodes.bulk_source``), prints the hosts and their addresses, and drops into the
Mininet CLI (``mininet> client ping target``). Leaving the CLI (``exit`` or Ctrl-D),
Ctrl-C or SIGTERM tears everything down. ``--no-cli`` stays up without a prompt until
Ctrl-C or SIGTERM, for scripts.
"""

from __future__ import annotations

import argparse
import signal

from .. import launch
from ..backends.base import Network, make_params
from ..backends.mininet import MininetBackend
from ..errors import TestbedError
from ..launch import BULK_PORTS, TARGET_IQN, BulkSource, Target
from ..runctx import RunContext

BULK_MODE = "tcp"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="bring a topology up and open the Mininet CLI",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("topology", help="topology name (contention)")
    p.add_argument("--bulk", type=int, default=2, metavar="N", help="bulk hosts (0..64)")
    p.add_argument("--bw", type=float, default=100.0, metavar="MBIT",
                   help="Mbit/s of the target and bulk links")
    p.add_argument("--client-bw", type=float, metavar="MBIT",
                   help="Mbit/s of the client's access link (default: --bw)")
    p.add_argument("--delay", type=float, default=0.0, metavar="MS",
                   help="one-way delay of the client link")
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                   help="random loss on the client link")
    p.add_argument("--queue", type=int, metavar="PKTS", help="queue length per interface")
    p.add_argument("--lun-mb", type=int, default=64, help="size of the target's LUN (MiB)")
    p.add_argument("--runs-dir", default="runs", help="where the run folder goes")
    p.add_argument("--no-cli", action="store_true",
                   help="no prompt: stay up until Ctrl-C or SIGTERM")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = make_params(args.topology, n=args.bulk, bw=args.bw,
                         bw_client=args.bw if args.client_bw is None else args.client_bw,
                         delay=args.delay, loss=args.loss, queue=args.queue)
    if args.lun_mb <= 0:
        raise TestbedError(f"--lun-mb must be positive, got {args.lun_mb}")
    with RunContext.create(base_dir=args.runs_dir, name=f"up-{args.topology}") as run_ctx:
        net = MininetBackend(run_ctx).up(params)
        start_services(net, run_ctx, args.lun_mb)
        print_hosts(net, run_ctx)
        print(f"testbed: run {run_ctx.id} up; "
              f"{'Ctrl-C or SIGTERM' if args.no_cli else 'exit the CLI'} tears it down",
              flush=True)
        if args.no_cli:
            wait_for_signal()
        else:
            net.cli()
    return 0


def start_services(net: Network, run_ctx: RunContext, lun_mb: int) -> None:
    """tgtd with one LUN in the target host; a TCP bulk source in every bulk host.

    Each is ready when this returns; the run's teardown ends them."""
    target = net.host("target")
    launch.start(target, "target", Target(
        ip=target.ip, backing_file=run_ctx.dir / "lun.img", size_mb=lun_mb,
        workdir=run_ctx.scratch / "target"), run_ctx.dir).wait_ready()
    bulk = [launch.start(h, h.name, BulkSource(BULK_MODE), run_ctx.dir) for h in net.bulk_hosts]
    for node in bulk:
        node.wait_ready()


def print_hosts(net: Network, run_ctx: RunContext) -> None:
    print(f"{'host':10} {'address':12} {'interface':14} {'mac':18} namespace")
    for name, h in net.hosts.items():
        print(f"{name:10} {h.ip:12} {h.intf:14} {h.mac:18} {run_ctx.netns_name(name)}")
    print(f"services: iscsi://{launch.portal(net.host('target').ip)}/{TARGET_IQN}/1; "
          f"bulk TCP streams on port {BULK_PORTS[BULK_MODE]} of every bulk host")
    for host, eff in net.userspace_link_effects.items():
        print(f"note: {host} link delay {eff['delay_ms']:g} ms / loss {eff['loss_pct']:g} % "
              f"are not in the kernel (no sch_netem); the packet handler applies them")


def wait_for_signal() -> None:
    """Sleep until SIGINT or SIGTERM (both raise KeyboardInterrupt inside a run)."""
    while True:
        signal.pause()
