"""``testbed iscsi``: point the project's initiator at a target.

::

    testbed iscsi discover --portal 10.0.0.2
    testbed iscsi inq      --portal 10.0.0.2 --target iqn.2026-11.org.testbed:t1 [--lun 1]
    testbed iscsi read     --portal P --target IQN --lba 0 --blocks 8 [--out FILE]
    testbed iscsi write    --portal P --target IQN --lba 0 --in FILE
    testbed iscsi bench    --portal P --target IQN [--size 64k] [--qd 32] [--seconds 10]
                           [--rw read|write]

Every subcommand takes ``--chap-user/--chap-secret`` (and ``--mutual-user/
--mutual-secret`` to check the target too) and ``--digests`` (offer CRC32C header
and data digests). Errors come out as one line that says what went wrong, e.g. the
target's login status class and detail, or the sense key and ASC/ASCQ by name.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import ConfigError
from ..iscsi.chap import ChapCredentials
from ..iscsi.connection import parse_portal
from ..iscsi.login import DEFAULT_INITIATOR, discover
from ..iscsi.perf import run_load
from ..iscsi.session import Session, SessionConfig


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    t = text.strip().lower().rstrip("b")
    mult = units.get(t[-1:], 1)
    try:
        n = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 4096, 4k or 1m") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return n


def _portal(text: str) -> tuple[str, int]:
    try:
        return parse_portal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(p: argparse.ArgumentParser, target: bool = True) -> None:
    p.add_argument("--portal", required=True, type=_portal, help="target address IP[:PORT] (port 3260)")
    if target:
        p.add_argument("--target", required=True, help="target name (IQN), see `discover`")
        p.add_argument("--lun", type=int, default=1, help="logical unit (default 1; 0 is tgtd's controller)")
    p.add_argument("--initiator-name", default=DEFAULT_INITIATOR)
    p.add_argument("--chap-user")
    p.add_argument("--chap-secret")
    p.add_argument("--mutual-user", help="name the target must give in mutual CHAP")
    p.add_argument("--mutual-secret", help="secret the target must prove (mutual CHAP)")
    p.add_argument("--digests", action="store_true", help="offer CRC32C header and data digests")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the target")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("iscsi", help="the project's iSCSI initiator",
                                   description=__doc__.split("::")[0].strip(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="iscsi_command", metavar="ACTION", required=True)
    p = sub.add_parser("discover", help="list the targets a portal offers (SendTargets)")
    _common(p, target=False)
    p.set_defaults(func=cmd_discover)
    p = sub.add_parser("inq", help="log in and describe a LUN (INQUIRY, capacity, parameters)")
    _common(p)
    p.set_defaults(func=cmd_inq)
    p = sub.add_parser("read", help="read blocks")
    _common(p)
    p.add_argument("--lba", type=int, required=True)
    p.add_argument("--blocks", type=int, required=True)
    p.add_argument("--out", help="write the data to FILE (default: hex dump)")
    p.set_defaults(func=cmd_read)
    p = sub.add_parser("write", help="write a file's contents at an LBA")
    _common(p)
    p.add_argument("--lba", type=int, required=True)
    p.add_argument("--in", dest="infile", required=True, help="file to write (padded with zeros to a block)")
    p.set_defaults(func=cmd_write)
    p = sub.add_parser("bench", help="measure IOPS and throughput with many commands in flight")
    _common(p)
    p.add_argument("--size", type=_size, default=65536, help="I/O size (default 64k)")
    p.add_argument("--qd", type=int, default=32, help="commands in flight (default 32)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rw", choices=("read", "write"), default="read")
    p.set_defaults(func=cmd_bench)


def _chap(args: argparse.Namespace) -> Optional[ChapCredentials]:
    if bool(args.chap_user) != bool(args.chap_secret):
        raise ConfigError("--chap-user and --chap-secret go together")
    if (args.mutual_user or args.mutual_secret) and not args.chap_user:
        raise ConfigError("mutual CHAP (--mutual-user/--mutual-secret) needs --chap-user/--chap-secret")
    if args.mutual_user and not args.mutual_secret:
        raise ConfigError("--mutual-user needs --mutual-secret")
    if not args.chap_user:
        return None
    return ChapCredentials(args.chap_user, args.chap_secret, args.mutual_user, args.mutual_secret)


def _session(args: argparse.Namespace) -> Session:
    cfg = SessionConfig(initiator_name=args.initiator_name, chap=_chap(args),
                        header_digest=args.digests, data_digest=args.digests,
                        login_timeout=args.timeout, command_timeout=max(args.timeout, 5.0),
                        max_reconnects=1)
    return Session(args.portal, args.target, cfg).open()


def _ready(session: Session, lun: int) -> tuple[int, int]:
    session.test_unit_ready(lun)           # also takes the UNIT ATTENTION every login brings
    cap = session.read_capacity(lun)
    return cap.bytes, cap.block_size


def cmd_discover(args: argparse.Namespace) -> int:
    targets = discover(args.portal, args.initiator_name, _chap(args), args.timeout)
    host, port = args.portal
    if not targets:
        print(f"{host}:{port} offers no targets to {args.initiator_name}")
    for name, addrs in targets:
        print(f"{name}")
        for a in addrs:
            print(f"    portal {a}")
    return 0


def cmd_inq(args: argparse.Namespace) -> int:
    with _session(args) as s:
        inq = s.inquiry(args.lun)
        print(f"target      {args.target}")
        print(f"LUN {args.lun}       {inq.vendor} {inq.product} rev {inq.revision} "
              f"({inq.type_name}, SPC version {inq.version})")
        if inq.peripheral_type == 0:
            size, bs = _ready(s, args.lun)
            print(f"capacity    {size} bytes = {size // bs} blocks of {bs} bytes "
                  f"({size / 2**20:.1f} MiB)")
        print(f"LUNs        {', '.join(map(str, s.report_luns()))}")
        p = s.params
        print(f"digests     header {'CRC32C' if p.header_digest else 'none'}, "
              f"data {'CRC32C' if p.data_digest else 'none'}")
        print(f"bursts      ImmediateData={'Yes' if p.immediate_data else 'No'} "
              f"InitialR2T={'Yes' if p.initial_r2t else 'No'} FirstBurstLength={p.first_burst_length} "
              f"MaxBurstLength={p.max_burst_length}")
        print(f"segments    we send <= {p.target_mrdsl} bytes, target sends <= {p.initiator_mrdsl} bytes")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    if args.blocks <= 0 or args.lba < 0:
        raise ConfigError("--blocks must be positive and --lba not negative")
    with _session(args) as s:
        _, bs = _ready(s, args.lun)
        data = bytes(s.read(args.lun, args.lba, args.blocks, bs))
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
        print(f"read {len(data)} bytes from LBA {args.lba} into {args.out}")
    else:
        _hexdump(data, args.lba * bs)
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    try:
        with open(args.infile, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"--in {args.infile}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"--in {args.infile} is empty")
    with _session(args) as s:
        _, bs = _ready(s, args.lun)
        padded = data + bytes(-len(data) % bs)
        s.write(args.lun, args.lba, padded, bs)
        s.synchronize_cache(args.lun)
    print(f"wrote {len(data)} bytes ({len(padded) // bs} blocks of {bs}) at LBA {args.lba}, cache synchronized")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.qd <= 0 or args.seconds <= 0:
        raise ConfigError("--qd and --seconds must be positive")
    with _session(args) as s:
        size, bs = _ready(s, args.lun)
        print(f"{args.rw} {args.size} bytes x {args.qd} in flight for {args.seconds:g}s on "
              f"{args.target} LUN {args.lun} ...", flush=True)
        try:
            result = run_load(s, args.lun, args.size, args.qd, args.seconds, args.rw, size, bs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    print(result)
    return 1 if result.errors else 0


def _hexdump(data: bytes, base: int) -> None:
    out = sys.stdout
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.write(f"{base + i:08x}  {hexes:<47s}  {text}\n")
