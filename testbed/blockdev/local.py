"""A local, file-backed block device with a latency, a bandwidth and a stall switch.

The stand-in for the iSCSI LUN when the memory manager runs alone (and the
"buy a local disk" baseline). Requests queue in order and are served by one
I/O thread: a request finishes no sooner than ``latency_s`` after it was
submitted (latencies of queued requests overlap) and the device moves at most
``bandwidth`` bytes a second (transfers do not). ``stall()`` freezes the
device - queued and new requests wait - until ``resume()``; ``set_latency`` and
``set_bandwidth`` make it slow or fast again while it runs. ``flush()`` is an
ordered request that fsyncs the file (SYNCHRONIZE CACHE). ``close()`` fails
whatever is still queued with :class:`BlockDeviceError`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Optional

from . import BlockDeviceError, Buffer, ReadCallback, WriteCallback, check_range
from ..errors import ConfigError, TimeoutExpired

IO_POLL_S = 0.1


class _Request:
    __slots__ = ("kind", "offset", "data", "length", "callback", "arrival", "due")

    def __init__(self, kind: str, offset: int, data: Optional[bytes], length: int,
                 callback, arrival: float) -> None:
        self.kind = kind
        self.offset = offset
        self.data = data
        self.length = length
        self.callback = callback
        self.arrival = arrival
        self.due: Optional[float] = None    # set when it reaches the head of the queue


class LocalDisk:
    """A :class:`~testbed.blockdev.BlockDevice` on a (sparse) local file."""

    def __init__(self, path: str, capacity: int, *, block_size: int = 4096,
                 latency_s: float = 0.0, bandwidth: Optional[float] = None) -> None:
        if block_size not in (512, 4096):
            raise ConfigError(f"LocalDisk {path}: block_size must be 512 or 4096 (got {block_size})")
        if capacity <= 0 or capacity % block_size:
            raise ConfigError(f"LocalDisk {path}: capacity {capacity} must be a positive "
                              f"multiple of {block_size}")
        self._check_speed(latency_s, bandwidth)
        self.path = path
        self._block_size = block_size
        self._capacity = capacity
        self.latency_s = latency_s
        self.bandwidth = bandwidth
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size < capacity:
            os.ftruncate(self._fd, capacity)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._stalled = False
        self._closed = False
        self._busy_until = 0.0
        self.bytes_written = 0
        self.bytes_read = 0
        self.requests_done = 0
        self._thread = threading.Thread(target=self._serve, name=f"localdisk:{os.path.basename(path)}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ properties
    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def queued(self) -> int:
        """Requests submitted and not yet completed."""
        with self._cond:
            return len(self._queue)

    # -------------------------------------------------------------- controls
    @staticmethod
    def _check_speed(latency_s: float, bandwidth: Optional[float]) -> None:
        if latency_s < 0:
            raise ConfigError(f"LocalDisk: latency_s must be >= 0 (got {latency_s})")
        if bandwidth is not None and bandwidth <= 0:
            raise ConfigError(f"LocalDisk: bandwidth must be > 0 bytes/s or None (got {bandwidth})")

    def set_latency(self, latency_s: float) -> None:
        self._check_speed(latency_s, self.bandwidth)
        with self._cond:
            self.latency_s = latency_s
            self._reschedule_locked()

    def set_bandwidth(self, bandwidth: Optional[float]) -> None:
        """Bytes per second, or None for as fast as the file allows."""
        self._check_speed(self.latency_s, bandwidth)
        with self._cond:
            self.bandwidth = bandwidth
            self._reschedule_locked()

    def _reschedule_locked(self) -> None:
        """A new speed applies to every request not yet completed."""
        self._busy_until = time.monotonic()
        for req in self._queue:
            req.due = None
        self._cond.notify_all()

    def stall(self) -> None:
        """Freeze the device: no request completes until :meth:`resume`."""
        with self._cond:
            self._stalled = True

    def resume(self) -> None:
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    # --------------------------------------------------------------- requests
    def submit_write(self, offset: int, data: Buffer, callback: WriteCallback) -> None:
        check_range(self, offset, len(data))
        self._enqueue(_Request("write", offset, bytes(data), len(data), callback, time.monotonic()))

    def submit_read(self, offset: int, length: int, callback: ReadCallback) -> None:
        check_range(self, offset, length)
        self._enqueue(_Request("read", offset, None, length, callback, time.monotonic()))

    def flush(self, timeout: Optional[float] = None) -> None:
        done = threading.Event()
        result: list[Optional[BaseException]] = []

        def cb(exc: Optional[BaseException]) -> None:
            result.append(exc)
            done.set()

        self._enqueue(_Request("flush", 0, None, 0, cb, time.monotonic()))
        if not done.wait(timeout):
            raise TimeoutExpired(f"LocalDisk {self.path}: flush not done after {timeout}s")
        if result[0] is not None:
            raise result[0]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread (waiting at most ``timeout``); queued requests fail. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            failed = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=timeout)
        for req in failed:
            self._complete(req, None, BlockDeviceError(f"LocalDisk {self.path}: device closed"))
        os.close(self._fd)

    def _enqueue(self, req: _Request) -> None:
        with self._cond:
            if self._closed:
                raise BlockDeviceError(f"LocalDisk {self.path}: device closed")
            self._queue.append(req)
            self._cond.notify_all()

    # -------------------------------------------------------------- I/O thread
    def _serve(self) -> None:
        while True:
            with self._cond:
                req = self._next_locked()
                if req is None:
                    return
            data, exc = self._do(req)
            with self._cond:
                if self._queue and self._queue[0] is req:
                    self._queue.popleft()
                else:                               # closed meanwhile: close() fails the rest
                    return
            self._complete(req, data, exc)

    def _next_locked(self) -> Optional[_Request]:
        """Wait until the head request is due (and the device not stalled); None when closed."""
        while not self._closed:
            if not self._queue or self._stalled:
                self._cond.wait(IO_POLL_S)
                continue
            req = self._queue[0]
            now = time.monotonic()
            if req.due is None:
                transfer = req.length / self.bandwidth if self.bandwidth else 0.0
                self._busy_until = max(now, self._busy_until) + transfer
                req.due = max(self._busy_until, req.arrival + self.latency_s)
            if req.due <= now:
                return req
            self._cond.wait(min(req.due - now, IO_POLL_S))
        return None

    def _do(self, req: _Request) -> tuple[Optional[bytes], Optional[BaseException]]:
        try:
            if req.kind == "write":
                os.pwrite(self._fd, req.data, req.offset)
                self.bytes_written += req.length
            elif req.kind == "read":
                data = os.pread(self._fd, req.length, req.offset)
                self.bytes_read += req.length
                return data, None
            else:
                os.fsync(self._fd)
            return None, None
        except OSError as exc:
            return None, BlockDeviceError(f"LocalDisk {self.path}: {req.kind} at {req.offset}: {exc}")

    def _complete(self, req: _Request, data: Optional[bytes], exc: Optional[BaseException]) -> None:
        self.requests_done += 1
        if req.kind == "read":
            req.callback(data, exc)
        else:
            req.callback(exc)

    def __repr__(self) -> str:
        state = "stalled" if self._stalled else "running"
        return f"<LocalDisk {self.path} {self._capacity} bytes {state}>"
