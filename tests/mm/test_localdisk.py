"""The file-backed local disk: latency, bandwidth, stall/resume, errors."""

from __future__ import annotations

import os
import threading
import time

import pytest

from testbed.blockdev import BlockDevice, BlockDeviceError, read_sync, write_sync
from testbed.errors import ConfigError, TimeoutExpired
from testbed.blockdev.local import LocalDisk


def test_is_a_block_device_that_keeps_bytes(disk):
    assert isinstance(disk, BlockDevice)
    write_sync(disk, 8192, b"a" * 4096)
    assert read_sync(disk, 8192, 4096) == b"a" * 4096
    assert read_sync(disk, 0, 4096) == bytes(4096)
    disk.flush(timeout=5)


def test_latency_delays_each_request_but_overlaps(disk):
    disk.set_latency(0.2)
    done = []
    t = time.monotonic()
    for i in range(5):
        disk.submit_write(i * 4096, bytes(4096), lambda exc: done.append(time.monotonic() - t))
    deadline = time.monotonic() + 5
    while len(done) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(done) == 5
    assert min(done) >= 0.19 and max(done) < 0.6          # queued latencies overlap


def test_bandwidth_limits_throughput(disk):
    disk.set_bandwidth(4 << 20)                             # 4 MiB/s
    t = time.monotonic()
    for i in range(8):
        write_sync(disk, i * (256 << 10), bytes(256 << 10))   # 2 MiB
    assert 0.45 <= time.monotonic() - t < 1.5


def test_stall_holds_requests_until_resume(disk):
    disk.stall()
    done = threading.Event()
    disk.submit_write(0, b"z" * 4096, lambda exc: done.set())
    assert not done.wait(0.4) and disk.stalled and disk.queued == 1
    with pytest.raises(TimeoutExpired):
        disk.flush(timeout=0.2)
    disk.resume()
    assert done.wait(2)
    assert read_sync(disk, 0, 4096) == b"z" * 4096


def test_close_fails_what_is_queued(tmp_path):
    dev = LocalDisk(os.path.join(tmp_path, "d"), 1 << 20)
    dev.stall()
    results = []
    dev.submit_write(0, bytes(4096), results.append)
    dev.close()
    assert isinstance(results[0], BlockDeviceError) and "closed" in str(results[0])
    with pytest.raises(BlockDeviceError, match="closed"):
        dev.submit_write(0, bytes(4096), results.append)
    dev.close()                                             # idempotent


def test_bad_requests_and_parameters_are_named(tmp_path, disk):
    with pytest.raises(BlockDeviceError, match="not aligned"):
        disk.submit_write(100, bytes(4096), lambda exc: None)
    with pytest.raises(BlockDeviceError, match="past the device"):
        disk.submit_read(disk.capacity, 4096, lambda d, e: None)
    with pytest.raises(ConfigError, match="block_size"):
        LocalDisk(os.path.join(tmp_path, "x"), 1 << 20, block_size=1000)
    with pytest.raises(ConfigError, match="capacity"):
        LocalDisk(os.path.join(tmp_path, "x"), 1000)
    with pytest.raises(ConfigError, match="latency_s"):
        disk.set_latency(-1)
    with pytest.raises(ConfigError, match="bandwidth"):
        disk.set_bandwidth(0)
