"""A run's own fidelity: did this machine emulate what the scenario asked for?

A run on a starved machine can reach a false verdict: the storage client's threads wake
late, so its lockup detector and its packet handler see a world slower than the one
configured, and the shaped link carries less than its rate. As Mininet-HiFi did, each
run therefore measures three figures of its own and is judged against bounds; a run past
one is ``invalid``. Its verdict is kept as measured, but nothing counts it (the claims
and the statistics of repeated runs leave it out and say how many they left out).

- **Scheduling lag** of the storage client's periodic work. The memory manager's sampler
  (``testbed.mm.metrics.Metrics``) wakes on a fixed schedule, ``t0 + k * interval``, and
  stamps each sample with the time it woke (``t``, 1 ms resolution, before any work): the
  lateness of wake-up ``k`` is ``t_k - t0 - k * interval``. It is read back from
  ``client.ndjson``, so it costs the client nothing and any run folder, old or new, can
  be judged. A restarted client (``client_restart``) starts a new schedule (its ``t``
  starts again from 0); the last sample of a schedule, written when the machine stops,
  is off schedule and is left out when it is early. Figures: max, p99 and the fraction
  of wake-ups later than ``bounds.lag_late_ms``.
- **Achieved rate of the bottleneck link** (the client's access link,
  ``topology.client_bw_mbit``): the busiest second of the frames that reached the
  client's packet handler (``net.rx.received.bytes``, every frame, dropped or not), over
  the configured rate. It is judged only when the bulk hosts offer at least the link's
  rate (``bulk.rate_mbit`` 0, "as fast as the link allows", or ``bulk_hosts * rate_mbit``
  at or above it) and, for downloads, for long enough (:data:`MIN_BUSY_S` at the link's
  rate; a UDP flood goes on all run): a link that was never asked to be busy says
  nothing about the machine. The downloads stop when the dirty limits block their
  readers, so the best second, not the mean, is the figure.
- **The host's CPU pressure** over the run (``/proc/pressure/cpu``, PSI): the share of
  the run's wall time in which some runnable task waited for a CPU (the ``some`` line's
  ``total`` delta, in microseconds, over the elapsed time), and the highest ``avg10``
  seen. The orchestrator reads the file when the load starts, every time it polls the
  client, and when the client ends (:class:`PressureWatch`), and writes
  ``host-pressure.json``; a kernel without PSI leaves the figure out, with the reason.

The bounds are the scenario's ``bounds:`` keys (:class:`testbed.scenario.BoundsSection`,
where their defaults and the reasons for them are declared); ``null`` turns one off.
"""

from __future__ import annotations

import errno
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from . import stats
from .errors import EnvironmentProblem

PSI_CPU = Path("/proc/pressure/cpu")
PRESSURE_FILE = "host-pressure.json"   # in the run folder, written by the orchestrator
LINK_WINDOW_S = 1.0                   # the link's rate is judged over its busiest second
# A download load is judged only if it is at least this long at the link's rate: TCP's
# slow start and the dirty limits' pauses take the first seconds, so a shorter one may
# never fill a second (lab 5's 8 MiB at 40 Mbit/s, 1.7 s: 0.86 of the rate at best, on
# a machine whose client woke on time); the contention load's 18 MiB at 20 Mbit/s
# (7.5 s) fills one at 0.97 to 1.00 (docs/measurements.md).
MIN_BUSY_S = 5.0
ROUNDING_S = 0.001                    # the samples' t is rounded to the millisecond

VALID, INVALID = "valid", "invalid"


# -- scheduling lag --------------------------------------------------------------------------

@dataclass(frozen=True)
class Lag:
    """How late the sampler's wake-ups were, in milliseconds."""

    wakeups: int
    max_ms: float
    p99_ms: float
    late_ms: float            # what counts as late
    late: int                 # wake-ups later than late_ms

    @property
    def late_fraction(self) -> float:
        return self.late / self.wakeups if self.wakeups else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "late_fraction": round(self.late_fraction, 5)}


def lateness(times: Iterable[float], interval_s: float) -> list[float]:
    """Seconds each wake-up of a fixed-rate loop came after its slot, from the times it
    woke (see the module docstring: schedules restart where ``t`` falls; a schedule's
    early last sample, the one written at stop, is left out)."""
    out: list[float] = []
    segment: list[float] = []
    for t in times:
        if segment and t < segment[-1]:
            out += _segment_lateness(segment, interval_s)
            segment = []
        segment.append(t)
    return out + _segment_lateness(segment, interval_s)


def _segment_lateness(times: list[float], interval_s: float) -> list[float]:
    late = [t - times[0] - k * interval_s for k, t in enumerate(times)]
    if len(late) > 1 and late[-1] < -ROUNDING_S:       # the sample taken at stop
        late.pop()
    return [max(0.0, x) for x in late[1:]]             # the first wake-up is the origin


def wakeup_lag(samples: Sequence[dict[str, Any]], interval_s: float,
               late_ms: float) -> Optional[Lag]:
    """The lag of the sampler's wake-ups in ``samples`` (None: fewer than two)."""
    got = lateness((float(s["t"]) for s in samples if isinstance(s.get("t"), (int, float))),
                   interval_s)
    if not got:
        return None
    ms = [x * 1000 for x in got]
    return Lag(wakeups=len(ms), max_ms=round(max(ms), 3), p99_ms=round(stats.quantile(ms, 0.99), 3),
               late_ms=late_ms, late=sum(1 for x in ms if x > late_ms))


# -- the bottleneck link ---------------------------------------------------------------------

def offered_mbit(scenario: Any) -> Optional[float]:
    """What the bulk hosts offer the client's link, Mbit/s (inf: as fast as it allows;
    None: they offer nothing it carries, e.g. no bulk hosts or forged segments)."""
    if scenario.topology.bulk_hosts == 0 or scenario.bulk.mode == "spoof":
        return None
    if scenario.bulk.rate_mbit == 0:
        return math.inf
    return scenario.topology.bulk_hosts * scenario.bulk.rate_mbit


def busy_s(scenario: Any) -> float:
    """Seconds of the link's rate the bulk load asks for: the downloads' bytes for TCP
    and HTTP; a UDP flood goes on all run (inf)."""
    if scenario.bulk.mode == "udp":
        return math.inf
    mb = sum(w.total_mb for w in scenario.client.workloads if w.kind == "downloader")
    return mb * 2**20 * 8 / (scenario.topology.client_bw_mbit * 1e6)


def peak_rate_mbit(points: Sequence[tuple[float, int]], window_s: float = LINK_WINDOW_S
                   ) -> Optional[float]:
    """The highest rate, Mbit/s, over any span of at least ``window_s`` between two of
    ``points`` (t, cumulative bytes) that is shorter than two windows; None: no such span."""
    best: Optional[float] = None
    j = 0
    for i in range(len(points)):
        while j < i and points[i][0] - points[j + 1][0] >= window_s:
            j += 1
        span = points[i][0] - points[j][0]
        if window_s <= span < 2 * window_s:
            rate = (points[i][1] - points[j][1]) * 8 / span / 1e6
            best = rate if best is None else max(best, rate)
    return best


def rx_points(samples: Sequence[dict[str, Any]]) -> list[tuple[float, int]]:
    """(t, bytes the client's handler received so far), per sample of one schedule (the
    last restart's: a restarted client counts from 0 again)."""
    out: list[tuple[float, int]] = []
    for s in samples:
        got = (((s.get("net") or {}).get("rx") or {}).get("received") or {}).get("bytes")
        if not isinstance(got, int) or not isinstance(s.get("t"), (int, float)):
            continue
        if out and s["t"] < out[-1][0]:
            out = []
        out.append((float(s["t"]), got))
    return out


def link_rate(samples: Sequence[dict[str, Any]], scenario: Any) -> dict[str, Any]:
    """The bottleneck link's busiest second against its configured rate, or why it is not
    judged (``judged`` false and a ``note``)."""
    configured = float(scenario.topology.client_bw_mbit)
    out: dict[str, Any] = {"configured_mbit": configured, "peak_mbit": None, "ratio": None,
                           "judged": False, "note": ""}
    offered = offered_mbit(scenario)
    if scenario.client.kind == "kernel":
        out["note"] = "no packet handler counts the frames of a kernel client's link"
    elif offered is None:
        out["note"] = "not judged: nothing offered the link a load (no bulk download)"
    elif offered < configured:
        out["note"] = (f"not judged: the bulk hosts offer {offered:g} Mbit/s, under the "
                       f"link's {configured:g} Mbit/s, so it is never saturated")
    elif busy_s(scenario) < MIN_BUSY_S:
        out["note"] = (f"not judged: the downloads are {busy_s(scenario):.1f} s of the link's "
                       f"rate, under {MIN_BUSY_S:g} s (TCP's slow start and the dirty limits "
                       f"may keep a short load from filling a second)")
    else:
        peak = peak_rate_mbit(rx_points(samples))
        if peak is None:
            out["note"] = "not judged: the run recorded less than a second of traffic"
        else:
            out.update(peak_mbit=round(peak, 3), ratio=round(peak / configured, 4), judged=True)
    return out


# -- the host's CPU pressure -----------------------------------------------------------------

@dataclass(frozen=True)
class PressureReading:
    """The ``some`` line of /proc/pressure/cpu, and when it was read (monotonic)."""

    avg10: float
    total_us: int
    at: float


def parse_pressure(text: str, source: str = str(PSI_CPU)) -> PressureReading:
    """The ``some`` line of a PSI file's text; EnvironmentProblem if it has none."""
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind != "some":
            continue
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        try:
            return PressureReading(float(fields["avg10"]), int(fields["total"]), time.monotonic())
        except (KeyError, ValueError):
            break
    raise EnvironmentProblem(f"{source}: no 'some avg10=... total=...' line (got {text[:80]!r})")


def read_pressure(path: Path = PSI_CPU) -> Optional[PressureReading]:
    """The host's CPU pressure now; None on a kernel without PSI (no such file)."""
    try:
        return parse_pressure(path.read_text(), str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:       # PSI compiled in but off (psi=0): reading fails
        if exc.errno == errno.EOPNOTSUPP:
            return None
        raise


class PressureWatch:
    """The host's CPU pressure over a run: :meth:`start`, :meth:`poll` as often as the
    caller looks (each reading is one small read), :meth:`finish` -> the figures."""

    def __init__(self, path: Path = PSI_CPU) -> None:
        self.path = path
        self.first: Optional[PressureReading] = None
        self.last: Optional[PressureReading] = None
        self.max_avg10 = 0.0

    def start(self) -> None:
        self.first = self.last = read_pressure(self.path)
        if self.first is not None:
            self.max_avg10 = self.first.avg10

    def poll(self) -> None:
        if self.first is None:
            return
        got = read_pressure(self.path)
        if got is not None:
            self.last = got
            self.max_avg10 = max(self.max_avg10, got.avg10)

    def finish(self) -> dict[str, Any]:
        """``{"some_fraction", "some_avg10_max", "elapsed_s"}``, or ``{"note"}`` without PSI."""
        if self.first is None:
            return {"note": f"{self.path}: not available (a kernel without PSI)"}
        self.poll()
        assert self.last is not None
        elapsed = self.last.at - self.first.at
        stalled = (self.last.total_us - self.first.total_us) / 1e6
        return {"some_fraction": round(stalled / elapsed, 4) if elapsed > 0 else None,
                "some_avg10_max": self.max_avg10, "elapsed_s": round(elapsed, 3)}


# -- the judgement ---------------------------------------------------------------------------

def measure(samples: Sequence[dict[str, Any]], scenario: Any,
            pressure: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The ``fidelity`` block of a run's summary: the three figures, the bounds they were
    held to, ``validity`` and the bounds missed (``invalid_by``)."""
    b = scenario.bounds
    lag: Optional[Lag] = None
    lag_note = ""
    if scenario.client.kind == "kernel":
        lag_note = "the guest kernel's timing is not the model's sampler"
    else:
        lag = wakeup_lag(samples, scenario.client.metrics_interval_ms / 1000, b.lag_late_ms)
        if lag is None:
            lag_note = "fewer than two samples of the client"
    out: dict[str, Any] = {
        "lag": lag.to_dict() if lag else {"note": lag_note},
        "link": link_rate(samples, scenario),
        "cpu_pressure": pressure or {"note": f"no {PRESSURE_FILE} in the run folder"},
        "bounds": {k: getattr(b, k) for k in ("max_lag_ms", "lag_late_ms", "max_late_fraction",
                                              "min_link_ratio", "max_cpu_pressure")},
    }
    missed = bounds_missed(lag, out["link"], out["cpu_pressure"], b)
    out.update(validity=INVALID if missed else VALID, invalid_by=missed)
    return out


def bounds_missed(lag: Optional[Lag], link: dict[str, Any], pressure: dict[str, Any],
                  b: Any) -> list[str]:
    """One sentence per fidelity bound the figures missed (a bound of None is off)."""
    out = []
    if lag is not None and b.max_lag_ms is not None and lag.max_ms > b.max_lag_ms:
        out.append(f"the client's sampler woke {lag.max_ms:.0f} ms late at worst "
                   f"(bounds.max_lag_ms {b.max_lag_ms:g})")
    if lag is not None and b.max_late_fraction is not None \
            and lag.late_fraction > b.max_late_fraction:
        out.append(f"{lag.late_fraction:.1%} of the client's wake-ups were more than "
                   f"{lag.late_ms:g} ms late (bounds.max_late_fraction "
                   f"{b.max_late_fraction:g})")
    if link.get("judged") and b.min_link_ratio is not None and link["ratio"] < b.min_link_ratio:
        out.append(f"the bottleneck link carried {link['peak_mbit']:.1f} of its "
                   f"{link['configured_mbit']:g} Mbit/s at best (ratio {link['ratio']:.2f}, "
                   f"bounds.min_link_ratio {b.min_link_ratio:g})")
    some = pressure.get("some_fraction")
    if some is not None and b.max_cpu_pressure is not None and some > b.max_cpu_pressure:
        out.append(f"some task waited for a CPU {some:.0%} of the run "
                   f"(/proc/pressure/cpu; bounds.max_cpu_pressure {b.max_cpu_pressure:g})")
    return out


def lines(summary: dict[str, Any]) -> list[str]:
    """The fidelity figures and judgement as lines a person reads (report, terminal)."""
    f = summary.get("fidelity")
    if not f:
        return []
    lag, link, cpu = f["lag"], f["link"], f["cpu_pressure"]
    parts = [
        (f"client wake-up lag max {lag['max_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms, "
         f"{lag['late_fraction']:.2%} later than {lag['late_ms']:g} ms "
         f"({lag['wakeups']} wake-ups)") if "max_ms" in lag else f"lag: {lag.get('note')}",
        (f"bottleneck link {link['peak_mbit']:.1f} of {link['configured_mbit']:g} Mbit/s "
         f"in its busiest second") if link.get("judged") else f"link: {link.get('note')}",
        (f"host CPU pressure (some) {cpu['some_fraction']:.0%} of the run, avg10 up to "
         f"{cpu['some_avg10_max']:g}") if cpu.get("some_fraction") is not None
        else f"CPU pressure: {cpu.get('note')}",
    ]
    head = "fidelity: " + "; ".join(parts)
    return [head] + [f"invalid: {r}" for r in f.get("invalid_by") or []]
