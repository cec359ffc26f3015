"""python -m nodes.storage_client --config FILE.json

Runs the storage client of one scenario run in the current (client) host and writes
its metrics stream and outcome where the config says. SIGTERM/SIGINT stop it cleanly:
the packet handler gives the client's address back to the wire interface.
"""

from __future__ import annotations

import argparse
import signal
import sys

from testbed.errors import TestbedError

from .agent import AgentConfig, StorageClient


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="storage_client", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="agent configuration (JSON)")
    args = ap.parse_args(argv)
    try:
        with open(args.config) as f:
            cfg = AgentConfig.from_json(f.read())
    except (OSError, ValueError, TypeError, KeyError, TestbedError) as exc:
        print(f"storage_client: bad config {args.config}: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    client = StorageClient(cfg)
    try:
        result = client.run()
    except KeyboardInterrupt:
        client.stop()
        print("storage_client: stopped", file=sys.stderr)
        return 130
    print(f"storage_client: {result.get('verdict')} {result.get('detail', '')}", flush=True)
    return 0 if result.get("verdict") != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
