"""The kernel client: guest boot time, run cost against the emulated client, link rate.

Three figures, each measured here (needs root; builds the guest image if there is none):

1. **boot**: the image's kernel and initramfs to power-off with a trivial init, under the
   accelerator the kernel client uses (``testbed.guest.qemu.probe_boot``), ``--rounds``
   times; and, from the runs below, QEMU's start to the guest's first sample (boot,
   modules, iscsid, login);
2. **run cost**: one writer of ``--mb`` MiB as fast as it can go on a ``--bw`` Mbit/s
   client link, no bulk hosts, run through the orchestrator on both clients: each run's
   wall time and the kernel's extra;
3. **link rate**: the writeback rate each client achieved on that link (written back over
   the load's time), against the link's configured rate.

    .venv/bin/python bench/bench_guest.py [--rounds 3] [--mb 16] [--bw 20]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed import scenario as scenario_mod                  # noqa: E402
from testbed.guest.image import ensure_image                    # noqa: E402
from testbed.guest.qemu import choose_accel, probe_boot         # noqa: E402
from testbed.orchestrator import Orchestrator, Progress         # noqa: E402

SCENARIO = """name: bench-guest-{kind}
duration_s: 60
deadline_s: 90
topology: {{bulk_hosts: 0, client_bw_mbit: {bw}, bw_mbit: 100}}
client:
  kind: {kind}
  memory_mb: {memory}
  workloads: [{{kind: writer, total_mb: {mb}, rate_mbps: 0}}]
target: {{lun_mb: {lun}}}
"""


def run_once(kind: str, mb: int, bw: float, base: Path) -> dict[str, float]:
    path = base / f"{kind}.yaml"
    path.write_text(SCENARIO.format(kind=kind, bw=bw, mb=mb, lun=max(16, 2 * mb),
                                    memory=128 if kind == "kernel" else 32))
    out = base / f"run-{kind}-{time.monotonic_ns()}"
    t0 = time.monotonic()
    res = Orchestrator(scenario_mod.load(path), out_dir=out, progress=Progress(io.StringIO())).run()
    wall = time.monotonic() - t0
    s = res.summary
    if s["verdict"] != "completed":
        raise SystemExit(f"bench: the {kind} run did not complete: {s.get('detail')}")
    got = {"wall_s": wall, "load_s": s["writeback"]["time_s"],
           "mbit_s": s["writeback"]["bytes"] * 8 / 1e6 / s["writeback"]["time_s"]}
    if kind == "kernel":
        k = json.loads((out / "client-outcome.json").read_text())["kernel"]
        got["first_sample_s"] = k["first_sample_s"]
        got["cpu_busy_pct"] = k["cpu_busy_pct"]
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mb", type=int, default=16)
    ap.add_argument("--bw", type=float, default=20.0)
    args = ap.parse_args()
    image = ensure_image()
    accel = choose_accel(image)
    boots = [probe_boot(image, accel.accel, accel.cpu, timeout=60.0)[0] for _ in range(args.rounds)]
    print(f"guest {image.kernel_release} under {accel.accel} ({accel.detail})")
    ok = [b for b in boots if b is not None]
    print(f"boot to power-off, trivial init: median {statistics.median(ok):.2f} s of "
          f"{len(ok)}/{args.rounds} ({', '.join(f'{b:.2f}' for b in ok)})")
    with tempfile.TemporaryDirectory(prefix="bench-guest-") as tmp:
        base = Path(tmp)
        emu = run_once("emulated", args.mb, args.bw, base)
        ker = run_once("kernel", args.mb, args.bw, base)
    print(f"QEMU start to the first sample (boot, iscsid, login): {ker['first_sample_s']:.1f} s")
    print(f"a {args.mb} MiB writer, flat out, {args.bw:g} Mbit/s link, no bulk hosts:")
    for name, r in (("emulated", emu), ("kernel", ker)):
        busy = f", guest CPU {r['cpu_busy_pct']:.0f} % busy" if "cpu_busy_pct" in r else ""
        print(f"  {name:8s} run {r['wall_s']:6.1f} s wall, load {r['load_s']:5.1f} s, "
              f"writeback {r['mbit_s']:5.1f} Mbit/s = {100 * r['mbit_s'] / args.bw:3.0f} % "
              f"of the link{busy}")
    print(f"  the kernel client's run costs {ker['wall_s'] - emu['wall_s']:+.1f} s "
          f"({ker['wall_s'] / emu['wall_s']:.1f}x the emulated client's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
