"""python -m nodes.verify (--portal IP:PORT --iqn IQN | --file DISK) --manifest FILE --out FILE.json

Logs in to the target with the project's initiator (a fresh session, from whichever
host it runs in: the orchestrator runs it in the target host, so the read-back is not
slowed by the client's shaped link), reads every page the storage client's manifest
lists and compares CRC-32s. Writes ``{"bytes_checked", "pages_checked", "mismatches",
"examples"}`` to ``--out``; exit status 0 when every page matched, 1 when some did not,
2 when the check could not be done. With ``--file`` it reads a local disk's backing
file instead (the local-disk baseline). With ``--journal`` it also checks every page of
the run's write journal (a client restarted mid-run, :mod:`testbed.journal`), in the
same session, into ``journal`` of the output; its mismatches count toward the status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.blockdev import BlockDevice
from testbed.errors import TestbedError
from testbed.integrity import Manifest, verify, verify_journal
from testbed.blockdev.iscsi import IscsiBlockDevice
from testbed.iscsi.chap import ChapCredentials
from testbed.iscsi.session import SessionConfig
from testbed.blockdev.local import LocalDisk

INITIATOR_NAME = "iqn.2026-11.org.testbed:verify"


def open_device(args: argparse.Namespace) -> BlockDevice:
    if args.file is not None:
        return LocalDisk(str(args.file), args.file.stat().st_size)
    if not args.iqn:
        raise ValueError("--portal needs --iqn")
    chap = None
    if args.chap_user:
        chap = ChapCredentials(user=args.chap_user, secret=args.chap_secret,
                               mutual_user=args.mutual_user, mutual_secret=args.mutual_secret)
    config = SessionConfig(initiator_name=INITIATOR_NAME, target_name=args.iqn, chap=chap)
    return IscsiBlockDevice.open(args.portal, args.iqn, lun=args.lun, config=config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="verify", description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--portal", help="iSCSI target portal IP:PORT (with --iqn)")
    where.add_argument("--file", type=Path, help="a local disk's backing file")
    ap.add_argument("--iqn")
    ap.add_argument("--lun", type=int, default=1)
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--journal", type=Path, help="the run's write journal (journal.ndjson)")
    ap.add_argument("--chap-user")
    ap.add_argument("--chap-secret")
    ap.add_argument("--mutual-user")
    ap.add_argument("--mutual-secret")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    try:
        manifest = Manifest.load(args.manifest)
        dev = open_device(args)
        try:
            result = verify(dev, manifest, timeout=args.timeout)
            journal = (verify_journal(dev, args.journal, timeout=args.timeout)
                       if args.journal is not None else None)
        finally:
            dev.close()
    except (OSError, ValueError, KeyError, TestbedError) as exc:
        args.out.write_text(json.dumps({"error": str(exc)}))
        print(f"verify: {exc}", file=sys.stderr)
        return 2
    out = result.to_dict()
    if journal is not None:
        out["journal"] = journal
        print(f"verify: journal: {journal['pages_checked']} pages, "
              f"{journal['mismatches']} mismatches, {journal['restarts']} restarts"
              + "".join(f"; {n}" for n in journal["notes"]))
    args.out.write_text(json.dumps(out, indent=1))
    print(f"verify: {result.pages_checked} pages, {result.mismatches} mismatches")
    return 0 if result.ok and (journal is None or not journal["mismatches"]) else 1


if __name__ == "__main__":
    sys.exit(main())
