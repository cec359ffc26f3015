"""The storage client: the emulated machine whose block device lives across the network.

One process, in the client host, composes the parts of ``testbed``:

- the memory manager (``testbed.mm``) with the scenario's policy: one budget of
  emulated pages for the page cache, socket receive queues, PDU buffers and skbs;
- the packet handler (``testbed.netdev``): the client's NIC driver. It takes the
  client's address onto a TAP device, so every frame in or out needs an skb first;
- the iSCSI initiator (``testbed.iscsi``): the block device the page cache writes back
  to. Its connections are registered with the handler and marked ``SOCK_MEMALLOC``
  (when, the era says), its receive queue is uncharged as it reads, and its PDU buffers
  are charged to mm;
- the :class:`~testbed.mm.machine.Machine`: page cache, flusher, kswapd, workloads
  (writers, mmap writers, downloaders whose sockets are registered with the handler
  too), the lockup detector and the metrics stream, into which the handler's counters
  are merged.

Events go into the same stream: a sample's ``events`` list holds what happened since the
one before, each with its ``t`` on the samples' clock. An early sample says
``load_started`` with the machine's ``CLOCK_MONOTONIC`` start (the orchestrator's fault
injector lines its clock up by it); each recovery of the initiator is
``iscsi_connection_lost`` (its cause) then ``iscsi_reinstated`` (commands re-issued) or
``iscsi_recovery_failed``, from the session's recovery hooks.

It runs until the workloads are written back (``completed``), the lockup detector
fires (``lockup``) or the deadline passes, then writes its outcome as JSON and the
manifest of every acknowledged page (``testbed.integrity``), which the orchestrator
checks on the LUN from the target host.

The lockup detector is given what it needs to prove a lockup: the recovery horizon of
this initiator (its own timeouts and the DefaultTime2Wait the login negotiated:
:meth:`RecoveryHorizon.from_session`), and the storage flow - the interface and the
packet handler's counters of the SOCK_MEMALLOC class. ``TESTBED_LOCKUP_PATIENCE=N`` in
the environment makes it wait N horizons before it fires (the patience tests use 2 to
show that nothing moves in the extra time); the outcome records the value.

A client killed and started again (the ``client_restart`` fault) is a new process with
an empty machine: it journals every write and acknowledgement outside itself
(:mod:`testbed.journal`), and :mod:`nodes.storage_client.restart` says what it does
differently at start.

The ``local`` storage mode replaces the initiator with a file-backed disk (the "buy a
local disk" baseline) and may run without the packet handler.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from testbed.blockdev import BlockDevice
from testbed.errors import TestbedError
from testbed.blockdev.iscsi import IscsiBlockDevice
from testbed.iscsi.chap import ChapCredentials
from testbed.iscsi.connection import SessionHooks
from testbed.iscsi.session import RECOVERING, SessionConfig
from testbed.mm.config import MachineConfig
from testbed.mm.gfp import GFP_NOIO
from testbed.mm.lockup import RecoveryHorizon, StorageFlow, tally_from_counters
from testbed.mm.machine import Machine
from testbed.mm.manager import MemoryManager
from testbed.mm.sock import Sock
from testbed.netdev.flows import FlowKey
from testbed.netdev.handler import PacketHandler
from testbed.journal import Journal, JournalingDevice

from .restart import RunClockStream, reclaim_wire

INITIATOR_NAME = "iqn.2026-11.org.testbed:storage-client"
CLOSE_TIMEOUT_S = 3.0      # logout at the end; a locked-up machine may never get the reply
PATIENCE_ENV = "TESTBED_LOCKUP_PATIENCE"    # recovery horizons before a lockup is called


@dataclass
class TargetConfig:
    portal: str                        # IP:PORT
    iqn: str
    lun: int = 1
    chap: Optional[dict[str, str]] = None   # user, secret, mutual_user, mutual_secret
    digests: bool = False
    initiator_port: Optional[int] = None
    timeouts: dict[str, float] = field(default_factory=dict)   # SessionConfig fields (scenario's initiator:)


@dataclass
class NetdevConfig:
    wire: str = "client-eth0"
    tap: str = "tap0"
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    capture_dir: Optional[str] = None
    rx_ring: Optional[int] = None       # receive buffers the NIC keeps posted (None: the era's)


@dataclass
class AgentConfig:
    """What the orchestrator hands the storage client (as JSON)."""

    client: MachineConfig
    deadline_s: float
    metrics_path: str
    outcome_path: str
    manifest_path: str
    storage: str = "iscsi"             # iscsi | local
    target: Optional[TargetConfig] = None
    local_disk: dict[str, Any] = field(default_factory=dict)   # path, capacity_mb, latency_ms, bandwidth_mbps
    netdev: Optional[NetdevConfig] = None
    download_servers: list[tuple[str, int]] = field(default_factory=list)
    client_ip: Optional[str] = None    # the client's address (flows are keyed by it)
    run_id: Optional[str] = None
    # the client_restart fault (testbed.journal, .restart): the write journal, which
    # incarnation this is, the load's start (CLOCK_MONOTONIC) and the wire's address
    journal_path: Optional[str] = None
    incarnation: int = 1
    clock_origin: Optional[float] = None
    wire_cidr: Optional[str] = None

    @classmethod
    def from_json(cls, text: str) -> "AgentConfig":
        d = json.loads(text)
        d["client"] = MachineConfig.from_dict(d["client"])
        if d.get("target"):
            d["target"] = TargetConfig(**d["target"])
        if d.get("netdev"):
            d["netdev"] = NetdevConfig(**d["netdev"])
        d["download_servers"] = [tuple(s) for s in d.get("download_servers", [])]
        return cls(**d)


def flow_key(sock: socket.socket, local_ip: str, remote: tuple[str, int]) -> FlowKey:
    """The flow of a socket bound to the wildcard address, before it connects.

    Sockets bind to port 0 on 0.0.0.0 (the kernel picks the port); the address their
    frames carry is the client's, which the orchestrator tells us.
    """
    return FlowKey(socket.IPPROTO_TCP, local_ip, sock.getsockname()[1], remote[0], remote[1])


class KernelSocketHooks(SessionHooks):
    """Ties the initiator's connections to the emulated kernel.

    Every connection (reconnects included) becomes an emulated socket, registered with
    the packet handler by flow when it is bound (before its SYN). The block driver then
    takes it: ``sk_allocation = GFP_NOIO`` (as ``nbd``'s ``sock_xmit`` sets it) and
    ``SOCK_MEMALLOC`` (``sk_set_memalloc()``), at the moment the era's driver does
    (``mm.era.sk_memalloc_mark``): in 2005 as the I/O task creates the socket (Phillips),
    from 3.6 once user space has connected it (``nbd_do_it``; ``iscsi_sw_tcp_conn_bind``
    in the kernels whose iscsi_tcp marks), so the new connection's handshake runs on a
    plain socket. A closed socket keeps its count in ``sk_memalloc_socks()`` (no era's
    release clears it; ``Sock.close``). What the mark gives depends on the era: Phillips'
    2005 drop rule reads it; only from 3.6 does it open the reserves to the socket's own
    allocations. In every era it names the storage flow (the handler's counters; the
    transmit credit of ``PF_MEMALLOC`` senders, ``MemoryManager.memalloc_tx_credit``).
    Bytes the initiator reads uncharge its receive queue; its PDU buffers are charged to
    mm with its ``sk_allocation``, in the context of the task that builds them.
    """

    def __init__(self, mm: MemoryManager, handler: Optional[PacketHandler], local_ip: str):
        self.mm = mm
        self.handler = handler
        self.local_ip = local_ip
        self.events = Events()
        self._socks: dict[int, tuple[Optional[FlowKey], Any]] = {}
        self._lock = threading.Lock()

    def socket_bound(self, sock: socket.socket, target: tuple[str, int]) -> None:
        sk = self.mm.sock_create("iscsi")
        if self.mm.era.sk_memalloc_mark == "created":
            self._take(sk)
        key = None
        if self.handler is not None:
            key = flow_key(sock, self.local_ip, target)
            self.handler.flows.register(key, sk)
        with self._lock:
            self._socks[id(sock)] = (key, sk)

    def socket_connected(self, sock: socket.socket) -> None:
        if self.mm.era.sk_memalloc_mark != "connected":
            return
        with self._lock:
            entry = self._socks.get(id(sock))
        if entry is not None:
            self._take(entry[1])

    @staticmethod
    def _take(sk: Sock) -> None:
        """The block driver takes the socket: its allocation mode and the mark."""
        sk.sk_allocation = GFP_NOIO
        sk.set_memalloc()

    def socket_closed(self, sock: socket.socket) -> None:
        with self._lock:
            key, sk = self._socks.pop(id(sock), (None, None))
        if key is not None and self.handler is not None:
            self.handler.flows.unregister(key)
        if sk is not None:
            sk.close()

    def bytes_received(self, sock: socket.socket, n: int) -> None:
        entry = self._socks.get(id(sock))
        if entry is not None:
            entry[1].consume(n)

    def pdu_alloc(self, nbytes: int) -> bool:
        return self.mm.pdu_alloc(nbytes, self._current_sock())

    def _current_sock(self) -> Optional[Sock]:
        """The connection's socket (the latest, after a reconnect)."""
        with self._lock:
            entries = list(self._socks.values())
        return entries[-1][1] if entries else None

    def pdu_free(self, nbytes: int) -> None:
        self.mm.pdu_free(nbytes)

    def recovery_started(self, cause: str) -> None:
        self.events.note("iscsi_connection_lost", cause=cause)

    def recovery_ended(self, reinstated: bool, reissued: int) -> None:
        if reinstated:
            self.events.note("iscsi_reinstated", reissued=reissued)
        else:
            self.events.note("iscsi_recovery_failed")


class Events:
    """Events noted by any thread, handed to the metrics stream with the next sample.

    Each is stamped with ``CLOCK_MONOTONIC`` when noted and given its ``t`` (seconds
    since the machine started) when handed over, so events from before the machine
    started (a recovery while the device opens) are placed right too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[float, dict[str, Any]]] = []
        self.started: Optional[float] = None     # the machine's start, once known

    def note(self, event: str, **fields: Any) -> None:
        with self._lock:
            self._pending.append((time.monotonic(), {"event": event, **fields}))

    def source(self) -> dict[str, Any]:
        """A metric source: ``{"events": [...]}`` when there are any."""
        if self.started is None:
            return {}
        with self._lock:
            pending, self._pending = self._pending, []
        events = [{"t": round(mono - self.started, 3), **e} for mono, e in pending]
        return {"events": events} if events else {}


def lockup_patience() -> int:
    """``TESTBED_LOCKUP_PATIENCE`` (default 1): horizons a lockup must last before it is called."""
    text = os.environ.get(PATIENCE_ENV, "1")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise TestbedError(f"{PATIENCE_ENV}={text!r}: must be an integer >= 1")
    return value


class StorageClient:
    """Composes memory manager, packet handler, initiator and machine for one run."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.mm = MemoryManager.from_config(cfg.client)
        self.handler: Optional[PacketHandler] = None
        self.device: Optional[BlockDevice] = None
        self.machine: Optional[Machine] = None
        self.hooks = KernelSocketHooks(self.mm, None, cfg.client_ip or "0.0.0.0")

    # -- bring-up -----------------------------------------------------------------------

    def start(self) -> None:
        if self.cfg.netdev is not None:
            n = self.cfg.netdev
            if self.cfg.incarnation > 1 and self.cfg.wire_cidr:
                reclaim_wire(n.wire, self.cfg.wire_cidr)     # the dead one's TAP took it
            self.handler = PacketHandler(self.mm, wire=n.wire, tap=n.tap, delay_ms=n.delay_ms,
                                         loss_pct=n.loss_pct, capture_dir=n.capture_dir,
                                         run_id=self.cfg.run_id, rx_ring=n.rx_ring)
            self.handler.attach()
            self.handler.start()
            self.hooks.handler = self.handler
        self.device = self._open_device()
        sources = [self.hooks.events.source]
        if self.handler is not None:
            sources.append(self._net_metrics)
        device: BlockDevice = self.device
        if self.cfg.journal_path:
            device = JournalingDevice(self.device, Journal(self.cfg.journal_path,
                                                           self.cfg.incarnation))
        stream = None
        if self.cfg.clock_origin is not None:    # a restart: the run's stream and time axis
            origin = self.cfg.clock_origin
            stream = RunClockStream(open(self.cfg.metrics_path, "a", encoding="utf-8"),
                                    lambda: self.machine.started - origin)
        self.machine = Machine(self.cfg.client, device, mm=self.mm,
                               socket_hook=self._downloader_socket,
                               metric_sources=sources,
                               download_servers=self.cfg.download_servers,
                               metrics_path=None if stream else self.cfg.metrics_path,
                               metrics_stream=stream,
                               storage_flow=self._storage_flow(), horizon=self._horizon(),
                               patience=lockup_patience())
        self.machine.start()
        # the first sample may go out before this: the event carries its own t (0.0)
        self.hooks.events.note("load_started", monotonic=self.machine.started)
        if self.cfg.incarnation > 1:
            self.hooks.events.note("client_restarted", incarnation=self.cfg.incarnation)
        # events are on the run's axis: a restarted client's samples are moved onto it
        self.hooks.events.started = self.cfg.clock_origin or self.machine.started

    def _horizon(self) -> Optional[RecoveryHorizon]:
        """The recovery horizon of the initiator in use: its timeouts, the negotiated T2W."""
        session = getattr(self.device, "session", None)
        if session is None:
            return None                 # a local disk: the detector's default applies
        return RecoveryHorizon.from_session(session.config, session.params.default_time2wait)

    def _storage_flow(self) -> Optional[StorageFlow]:
        """The iSCSI flow as the detector sees it; None without the handler or the initiator."""
        session = getattr(self.device, "session", None)
        handler = self.handler
        if handler is None or session is None or handler.dev is None:
            return None

        def status() -> str:
            failure = f": {session.failure}" if session.failure is not None else ""
            return f"session {session.state}, {session.stats.recoveries} recoveries{failure}"

        return StorageFlow("iSCSI", handler.dev, lambda: tally_from_counters(handler.counters()),
                           status, handler.tx_wait.oldest,
                           lambda: session.recovering_since if session.state == RECOVERING else None)

    def _open_device(self) -> BlockDevice:
        if self.cfg.storage == "local":
            from testbed.blockdev.local import LocalDisk
            d = self.cfg.local_disk
            bw = d.get("bandwidth_mbps")
            return LocalDisk(d["path"], int(d["capacity_mb"]) << 20,
                             latency_s=d.get("latency_ms", 0.0) / 1000,
                             bandwidth=bw * (1 << 20) if bw else None)
        t = self.cfg.target
        chap = None
        if t.chap:
            chap = ChapCredentials(user=t.chap["user"], secret=t.chap["secret"],
                                   mutual_user=t.chap.get("mutual_user"),
                                   mutual_secret=t.chap.get("mutual_secret"))
        config = SessionConfig(initiator_name=INITIATOR_NAME, target_name=t.iqn, chap=chap,
                               header_digest=t.digests, data_digest=t.digests,
                               source_port=t.initiator_port or 0, **t.timeouts)
        return IscsiBlockDevice.open(t.portal, t.iqn, lun=t.lun, config=config, hooks=self.hooks)

    def _downloader_socket(self, sock: socket.socket, sk: Any, server: tuple[str, int]) -> None:
        """A downloader's socket: registered with the handler so its queue is charged."""
        if self.handler is not None:
            self.handler.flows.register(flow_key(sock, self.hooks.local_ip, server), sk)

    def _net_metrics(self) -> dict[str, Any]:
        return {"net": self.handler.counters()}

    # -- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Start, wait for the outcome, verify, stop; return the outcome as a dict."""
        started = time.monotonic()
        result: dict[str, Any] = {"verdict": "error"}
        try:
            self.start()
            outcome = self.machine.wait(self._deadline_left())
            result = outcome.to_dict()
            result["writeback_s"] = round(time.monotonic() - started, 3)
        except TestbedError as exc:
            result.update(verdict="error", detail=str(exc))
        finally:
            result["net"] = self.handler.counters() if self.handler is not None else None
            session = getattr(self.device, "session", None)
            if session is not None:     # the initiator's own counts, beside the events
                result["iscsi"] = {"recoveries": session.stats.recoveries,
                                   "reissued": session.stats.reissued}
            if self.machine is not None:
                manifest = self.machine.manifest()
                manifest.save(self.cfg.manifest_path)
                result["manifest_pages"] = manifest.pages
            # The outcome is written before the clean-up, which may be slow when the
            # emulated machine is locked up (the logout itself needs memory).
            Path(self.cfg.outcome_path).write_text(json.dumps(result, indent=1, default=str))
            self.stop()
        return result

    def _deadline_left(self) -> float:
        """The scenario's deadline from this machine's start (a restart came later)."""
        if self.cfg.clock_origin is None:
            return self.cfg.deadline_s
        return max(0.0, self.cfg.deadline_s - (self.machine.started - self.cfg.clock_origin))

    def stop(self) -> None:
        """Stop everything this process started; bounded; idempotent."""
        if self.machine is not None:
            self.machine.stop()
        if self.device is not None:
            try:
                self.device.close(timeout=CLOSE_TIMEOUT_S)
            except TestbedError:
                pass
        if self.handler is not None:
            self.handler.stop()
            self.handler.detach()
