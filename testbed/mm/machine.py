"""The emulated storage client: memory, page cache, writeback, workloads, watchers.

:class:`Machine` composes, from one :class:`~testbed.mm.config.MachineConfig`:

* ``mm``          the :class:`MemoryManager` (zone, policy, network API), made from
                  the config or given (the storage client makes it first, for the
                  packet handler);
* ``page_cache``  over any :class:`~testbed.blockdev.BlockDevice` (the local
                  disk in the tests, the iSCSI LUN in the testbed);
* ``throttle``    dirty limits and ``balance_dirty_pages()``;
* ``flusher``, ``kswapd``, the workloads, the ``lockup`` detector, ``metrics``.

The workloads are the OOM killer's candidates (``mm.oom``, where the era's kernel
had one and ``oom_kill`` does not turn it off). A workload it killed counts as
ended; every kill - victim, points, pages freed - is in the outcome's
``oom_kills`` and in each metrics sample.

Life cycle::

    m = Machine(config, device, mm=mm, netdevs=[("eth0", 1500)], socket_hook=hook,
                download_servers=[("10.0.0.2", 5001)], metrics_path="client.ndjson",
                storage_flow=flow, horizon=RecoveryHorizon.from_session(session_config))
    m.start()
    outcome = m.wait(deadline_s=60)      # completed | lockup | deadline | stopped
    m.stop()                             # bounded, even while the machine is locked up
    result = m.verify()                  # read back every acknowledged byte

``completed`` means every workload wrote all its bytes, the flusher wrote every
dirty page back, and the device's ``flush()`` (SYNCHRONIZE CACHE) returned.
``lockup`` carries the detector's evidence: the state proven stuck for the recovery
``horizon`` of the storage's initiator, and the wait-for cycle (``storage_flow`` is
what the detector asks of the network storage; without one there is no lockup, only
stalls). Every outcome lists the stalls recorded on the way. A workload or kernel
thread that failed on a bug or a bad parameter makes ``wait`` raise it, named.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Iterable, Optional, Sequence

from .. import integrity
from ..blockdev import BlockDevice
from ..integrity import Extent, Manifest, VerifyResult
from ..errors import TimeoutExpired
from .config import MachineConfig
from .errors import MMError
from .flusher import Flusher
from .lockup import LockupDetector, LockupEvidence, RecoveryHorizon, StorageFlow
from .manager import MemoryManager
from .metrics import MetricSource, Metrics
from .oom_kill import OomKill
from .page_writeback import DirtyThrottle
from .pagecache import PageCache
from .policy.loader import is_policy
from .skbuff import NetDev
from .vmscan import Kswapd
from .workload import WORKLOAD_CLASSES, Downloader, SocketHook, Workload
from .zone import PAGE_SIZE

POLL_S = 0.05


@dataclass
class Outcome:
    """How a run ended, with its figures."""

    verdict: str                    # completed | lockup | deadline | stopped
    t: float                        # seconds since start
    bytes_written: int              # by the workloads into the page cache
    bytes_written_back: int         # completed writeback
    longest_stall_s: float
    lockup: Optional[LockupEvidence] = None     # the first lockup proven (even if it recovered)
    stalls: list[dict[str, Any]] = field(default_factory=list)     # every stall episode
    detail: str = ""
    oom_kills: list[OomKill] = field(default_factory=list)     # the OOM killer's victims

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Machine:
    """The storage client's emulated kernel and its workloads."""

    def __init__(self, config: MachineConfig, device: BlockDevice, *,
                 mm: Optional[MemoryManager] = None,
                 socket_hook: Optional[SocketHook] = None,
                 metric_sources: Iterable[MetricSource] = (),
                 netdevs: Iterable[tuple[str, int]] = (),
                 download_servers: Sequence[tuple[str, int]] = (),
                 metrics_path: Optional[str] = None,
                 metrics_stream: Optional[IO[str]] = None,
                 storage_flow: Optional[StorageFlow] = None,
                 horizon: Optional[RecoveryHorizon] = None,
                 patience: int = 1,
                 oom_kill: Optional[bool] = None) -> None:
        config.validate()
        self.config = config
        self.device = device
        if mm is None:          # oom_kill None: client.oom_kill if the config has it, else the era's
            mm = MemoryManager.from_config(config, oom_kill=oom_kill)
        elif mm.zone.managed_pages != config.total_pages or not is_policy(mm.policy, config.policy):
            raise MMError(f"machine: the given mm ({mm.zone.managed_pages} pages, {mm.policy.name}) "
                          f"does not match client.memory_mb/policy ({config.total_pages} pages, "
                          f"{config.policy})")
        self.mm = mm
        self.throttle = DirtyThrottle(self.mm, config.dirty_background_ratio, config.dirty_ratio)
        self.page_cache = PageCache(self.mm, device, self.throttle)
        self.flusher = Flusher(self.mm, self.page_cache, self.throttle,
                               writeback_interval_s=config.dirty_writeback_ms / 1000,
                               expire_s=config.dirty_expire_ms / 1000,
                               inflight=config.writeback_inflight,
                               batch_pages=config.writeback_batch_kb // 4)
        self.kswapd = Kswapd(self.mm)
        self.lockup = LockupDetector(self.mm, self.page_cache, config.lockup_after_s,
                                     horizon=horizon, storage=storage_flow, patience=patience)
        self.metrics = Metrics(self.mm, config.metrics_interval_ms / 1000,
                               path=metrics_path, stream=metrics_stream)
        self.metrics.add_source(self._own_metrics)
        for source in metric_sources:
            self.metrics.add_source(source)
        self.workloads = self._build_workloads(download_servers, socket_hook)
        if self.mm.oom is not None:
            for wl in self.workloads:
                self.mm.oom.register(wl)
        self.lockup.tasks = list(self.workloads)        # their wchan and sockets: the cycle
        self.netdevs: dict[str, NetDev] = {}
        for name, mtu in netdevs:
            self.netdevs[name] = self.mm.register_netdev(name, mtu)
        self.started: Optional[float] = None
        self._stopped = False

    def _build_workloads(self, servers: Sequence[tuple[str, int]],
                         hook: Optional[SocketHook]) -> list[Workload]:
        workloads: list[Workload] = []
        downloaders = 0
        for i, wl in enumerate(self.config.workloads):
            cls = WORKLOAD_CLASSES[wl.kind]
            if cls is Downloader:
                if not servers:
                    raise MMError(f"client.workloads[{i}]: a downloader needs a server address "
                                  f"(download_servers is empty)")
                server = servers[downloaders % len(servers)]
                if (len(server) != 2 or not isinstance(server[0], str)
                        or not isinstance(server[1], int) or not 0 < server[1] < 65536):
                    raise MMError(f"client.workloads[{i}]: download server {server!r} is not "
                                  f"(host, port)")
                server = (server[0], server[1])
                downloaders += 1
                workloads.append(Downloader(i, wl, self.mm, self.page_cache, server, hook))
            else:
                workloads.append(cls(i, wl, self.mm, self.page_cache))
        return workloads

    # ------------------------------------------------------------- life cycle
    def start(self) -> None:
        if self.started is not None:
            raise MMError("machine: already started")
        self.started = time.monotonic()
        self.lockup.started = self.metrics.started = self.started
        if self.mm.oom is not None:
            self.mm.oom.started = self.started
        for thread in (self.kswapd, self.flusher, self.lockup, self.metrics, *self.workloads):
            thread.start()

    def netdev(self, name: str) -> NetDev:
        try:
            return self.netdevs[name]
        except KeyError:
            raise MMError(f"machine: no netdev {name!r} (have {', '.join(self.netdevs) or 'none'})") from None

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def wait(self, deadline_s: float, stop_on_lockup: bool = True) -> Outcome:
        """Wait until the workloads are done and written back, a lockup, or ``deadline_s``.

        ``deadline_s`` counts from :meth:`start`. A lockup ends the wait once the
        detector fires (proven, and lasted its ``patience`` horizons); with
        ``stop_on_lockup`` False it is recorded and waiting goes on (to watch a recovery).
        """
        if self.started is None:
            raise MMError("machine: wait() before start()")
        deadline = self.started + deadline_s
        while not all(w.ended for w in self.workloads):       # done, or OOM-killed
            ended = self._check(deadline, stop_on_lockup)
            if ended is not None:
                return ended
        self.flusher.request_sync()
        while not self.flusher.is_clean():
            ended = self._check(deadline, stop_on_lockup)
            if ended is not None:
                return ended
        try:
            self.device.flush(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutExpired as exc:
            return self._outcome("deadline", f"device flush: {exc}")
        return self._outcome("completed", "all bytes written back and flushed")

    def _check(self, deadline: float, stop_on_lockup: bool) -> Optional[Outcome]:
        self._raise_errors()
        if stop_on_lockup and self.lockup.fired.is_set():
            return self._outcome("lockup", "stuck for the recovery horizon, held by a wait-for cycle")
        if self.mm.stopping:
            return self._outcome("stopped", "the machine was stopped")
        if time.monotonic() >= deadline:
            return self._outcome("deadline", "the deadline passed first")
        self.mm.wait_stopping(POLL_S)
        return None

    def _raise_errors(self) -> None:
        for thread in (*self.workloads, self.flusher, self.kswapd):
            if thread.error is not None:
                raise MMError(f"machine: {thread.name} failed: {thread.error}") from thread.error

    def _outcome(self, verdict: str, detail: str) -> Outcome:
        with self.mm.lock:
            written_back = self.mm.vm.writeback_bytes
            kills = list(self.mm.oom.kills) if self.mm.oom is not None else []
        if kills:
            detail += "; the OOM killer killed " + ", ".join(k.victim for k in kills)
        return Outcome(verdict=verdict, t=round(self.elapsed(), 3),
                       bytes_written=sum(w.bytes_written for w in self.workloads),
                       bytes_written_back=written_back,
                       longest_stall_s=round(self.lockup.longest_stall_s, 3),
                       lockup=self.lockup.evidence, stalls=self.lockup.stalls(),
                       detail=detail, oom_kills=kills)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop every thread (bounded by ``timeout``); True if all ended. Idempotent."""
        self.mm.shutdown()
        for wl in self.workloads:
            wl.stop()
        deadline = time.monotonic() + timeout
        threads = (*self.workloads, self.flusher, self.kswapd, self.lockup, self.metrics)
        for thread in threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        if not self._stopped:
            self._stopped = True
            for dev in self.netdevs.values():
                if dev.registered:
                    self.mm.unregister_netdev(dev)
        return not any(t.is_alive() for t in threads)

    def __enter__(self) -> "Machine":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ read-back
    def manifest(self) -> Manifest:
        """Every acknowledged page the workloads wrote: where it is and its checksum."""
        extents = []
        for wl in self.workloads:
            for inode in wl.files:
                for first, offset, count in self.page_cache.acked_pages(inode):
                    pages = [(wl._valid(inode, i), wl.expected_crc(inode, i))
                             for i in range(first, first + count)]
                    extents.append(Extent(inode.name, first, offset, pages))
        return Manifest(extents)

    def verify(self, device: Optional[BlockDevice] = None, timeout: float = 30.0) -> VerifyResult:
        """Read back every acknowledged page the workloads wrote and compare checksums."""
        return integrity.verify(device or self.device, self.manifest(), timeout)

    # -------------------------------------------------------------- metrics
    def _own_metrics(self) -> dict[str, Any]:
        limits = self.throttle.limits()
        return {"bg_thresh": limits.bg_thresh, "thresh": limits.thresh,
                "write_bandwidth_kbps": round(self.throttle.write_bandwidth * PAGE_SIZE / 1024),
                "lockup": self.lockup.locked_up, "stalled_for_s": round(self.lockup.stalled_for_s, 3),
                "stuck_for_s": round(self.lockup.stuck_for_s, 3),
                "workload_bytes": sum(w.bytes_written for w in self.workloads),
                "device_inflight": self.page_cache.nr_inflight,
                "oom_kills": self.mm.oom.snapshot() if self.mm.oom is not None else []}
