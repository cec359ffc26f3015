"""python -m nodes.kernel_client --config FILE.json

Runs the kernel client of one scenario run in the current (client) host: the guest on a
TAP behind the client's wire, QEMU, and the outcome and manifest written where the
config says (testbed.guest.node). SIGTERM/SIGINT stop QEMU and give the wire back.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from testbed.guest.node import GuestRunner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kernel_client", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="kernel client configuration (JSON)")
    args = ap.parse_args(argv)
    try:
        with open(args.config) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"kernel_client: bad config {args.config}: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    runner = GuestRunner(cfg)
    try:
        result = runner.run()
    except KeyboardInterrupt:
        print("kernel_client: stopped", file=sys.stderr)
        return 130
    finally:
        runner.stop()
    print(f"kernel_client: {result.get('verdict')} {result.get('detail', '')}", flush=True)
    return 0 if result.get("verdict") != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
