"""Block devices: the contract between the page cache and whatever stores the blocks.

The emulated page cache (``testbed.mm``) writes dirty pages back through a
:class:`BlockDevice`. This package holds the contract and both of its kinds:
:mod:`.iscsi` (a LUN over the project's initiator, ``testbed.iscsi``) and
:mod:`.local` (a file-backed disk with a latency and a bandwidth, the "buy a local
disk" baseline). The interface is asynchronous, as the
kernel's block layer is: ``submit_*`` queue a request and return at once, and the
callback runs when it completes (on the device's own I/O thread, so it must be
short and must not block). The synchronous helpers wait with a timeout.

Offsets and lengths are in bytes and must be multiples of ``block_size``.
A write whose callback reported success is on the device (after ``flush`` it is
durable); a failed request reports a :class:`BlockDeviceError` and is never
silently dropped.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Protocol, Union, runtime_checkable

from ..errors import TestbedError, TimeoutExpired

Buffer = Union[bytes, bytearray, memoryview]
WriteCallback = Callable[[Optional[BaseException]], None]
ReadCallback = Callable[[Optional[bytes], Optional[BaseException]], None]


class BlockDeviceError(TestbedError):
    """A block request failed (I/O error, device gone, out of range)."""


@runtime_checkable
class BlockDevice(Protocol):
    """What the page cache needs of a disk."""

    @property
    def block_size(self) -> int:
        """Logical block size in bytes (512 or 4096)."""

    @property
    def capacity(self) -> int:
        """Size of the device in bytes."""

    def submit_write(self, offset: int, data: Buffer, callback: WriteCallback) -> None:
        """Queue a write; ``callback(None)`` on success, ``callback(exc)`` on failure."""

    def submit_read(self, offset: int, length: int, callback: ReadCallback) -> None:
        """Queue a read; ``callback(data, None)`` or ``callback(None, exc)``."""

    def flush(self, timeout: Optional[float] = None) -> None:
        """Make every completed write durable (SYNCHRONIZE CACHE); blocks."""

    def close(self, timeout: float = 10.0) -> None:
        """Release the device (bounded by ``timeout``); outstanding requests fail."""


def check_range(dev: BlockDevice, offset: int, length: int) -> None:
    """Raise BlockDeviceError unless [offset, offset+length) is aligned and inside dev."""
    bs = dev.block_size
    if offset < 0 or length < 0 or offset % bs or length % bs:
        raise BlockDeviceError(
            f"request offset={offset} length={length} is not aligned to the {bs}-byte block size")
    if offset + length > dev.capacity:
        raise BlockDeviceError(
            f"request offset={offset} length={length} ends past the device's {dev.capacity} bytes")


def write_sync(dev: BlockDevice, offset: int, data: Buffer, timeout: float = 30.0) -> None:
    """Write and wait for completion, raising the device's error or TimeoutExpired."""
    done = threading.Event()
    result: list[Optional[BaseException]] = []

    def cb(exc: Optional[BaseException]) -> None:
        result.append(exc)
        done.set()

    dev.submit_write(offset, data, cb)
    if not done.wait(timeout):
        raise TimeoutExpired(f"write at offset {offset} ({len(data)} bytes) not done after {timeout}s")
    if result[0] is not None:
        raise result[0]


def read_sync(dev: BlockDevice, offset: int, length: int, timeout: float = 30.0) -> bytes:
    """Read and wait for completion, raising the device's error or TimeoutExpired."""
    done = threading.Event()
    result: list = []

    def cb(data: Optional[bytes], exc: Optional[BaseException]) -> None:
        result.extend((data, exc))
        done.set()

    dev.submit_read(offset, length, cb)
    if not done.wait(timeout):
        raise TimeoutExpired(f"read at offset {offset} ({length} bytes) not done after {timeout}s")
    if result[1] is not None:
        raise result[1]
    return result[0]
