"""Reads and writes of every shape against a real tgtd.

What must hold: whatever was written is read back, and is in the LUN's backing
file, for sizes from one block to 8 MiB, sizes that are not multiples of the bursts,
writes that need several R2Ts and writes longer than MaxBurstLength, with 1 to 64
commands in flight, from several threads, with digests on and off.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from testbed.blockdev import BlockDeviceError, read_sync, write_sync
from testbed.iscsi import scsi
from testbed.blockdev.iscsi import IscsiBlockDevice
from testbed.iscsi.errors import ScsiError, SessionFailed

pytestmark = pytest.mark.tgtd

BS = 512
KiB = 1024
# 8 KiB is the target's default MRDSL (all immediate), 64 KiB its FirstBurstLength,
# 256 KiB its MaxBurstLength: sizes on, just past and far past each boundary.
SIZES = [512, 4 * KiB, 8 * KiB, 8 * KiB + 512, 64 * KiB - 512, 64 * KiB, 64 * KiB + 512,
         100 * KiB + 512, 256 * KiB, 256 * KiB + 8 * KiB + 512, 1024 * KiB + 1536, 8 << 20]

DIGESTS = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"}


def roundtrip(target, session, sizes):
    lba = 16
    placed = []
    for n in sizes:
        data = os.urandom(n)
        session.write(1, lba, data, BS)
        placed.append((lba, data))
        lba += n // BS + 3                   # leave gaps: a stray write would show
    for lba, data in placed:
        assert session.read(1, lba, len(data) // BS, BS) == data, f"read-back of {len(data)} B"
    session.synchronize_cache(1)
    for lba, data in placed:
        assert target.backing(lba * BS, len(data)) == data, f"backing file, {len(data)} B"


def test_every_size_default_parameters(tgt):
    with tgt.session() as s:
        s.test_unit_ready(1)
        assert s.params.target_mrdsl == 8192 and s.params.initial_r2t
        roundtrip(tgt, s, SIZES)


@pytest.mark.parametrize("digests", [False, True], ids=["no-digests", "crc32c"])
def test_every_size_large_segments(make_tgt, digests):
    params = {"MaxRecvDataSegmentLength": "262144", "FirstBurstLength": "262144"}
    if digests:
        params.update(DIGESTS)
    tgt = make_tgt(params)
    with tgt.session(header_digest=digests, data_digest=digests,
                     max_recv_data_segment_length=65536) as s:
        assert s.params.header_digest is digests and s.params.data_digest is digests
        assert s.params.target_mrdsl == 262144
        s.test_unit_ready(1)
        roundtrip(tgt, s, SIZES)


def test_unsolicited_data_out_when_initial_r2t_is_no(make_tgt):
    tgt = make_tgt({"InitialR2T": "No", "FirstBurstLength": "131072"})
    with tgt.session(initial_r2t=False) as s:
        assert not s.params.initial_r2t and s.params.first_burst_length == 131072
        s.test_unit_ready(1)
        roundtrip(tgt, s, [512, 8 * KiB + 512, 128 * KiB, 128 * KiB + 512, 1 << 20])


def test_without_immediate_data(make_tgt):
    tgt = make_tgt({"ImmediateData": "No"})
    with tgt.session(immediate_data=False) as s:
        assert not s.params.immediate_data
        s.test_unit_ready(1)
        roundtrip(tgt, s, [512, 64 * KiB + 512, 300 * KiB])


@pytest.mark.parametrize("qd", [1, 8, 32, 64])
def test_queue_depths(tgt, qd):
    """``qd`` random writes in flight at once, then the whole area read back."""
    rng = random.Random(qd)
    with tgt.session() as s:
        s.test_unit_ready(1)
        area = 16 << 20
        image = bytearray(os.urandom(area))
        s.write(1, 0, image, BS)
        tasks, done = [], threading.Semaphore(0)
        stripe = area // BS // (qd * 4)        # each write owns a stripe: no overlaps
        for i in range(qd * 4):
            blocks = min(stripe, rng.choice([1, 8, 16, 100, 128, 129]))
            lba = i * stripe + rng.randrange(0, stripe - blocks + 1)
            data = os.urandom(blocks * BS)
            image[lba * BS:lba * BS + len(data)] = data
            tasks.append(s.submit(scsi.write16(lba, blocks), 1, data=data,
                                  callback=lambda t: done.release()))
            if len(tasks) % qd == 0:
                for _ in range(qd):
                    assert done.acquire(timeout=30)
        for _ in range(len(tasks) % qd):
            assert done.acquire(timeout=30)
        assert all(t.done and t.error is None for t in tasks)
        reads = [s.submit(scsi.read16(lba, 256), 1, read_length=256 * BS, wait=True)
                 for lba in range(0, area // BS, 256)]
        got = b"".join(bytes(t.wait(30)) for t in reads)
        assert got == bytes(image)


def test_many_submitter_threads(tgt):
    with tgt.session() as s:
        s.test_unit_ready(1)
        errors = []

        def worker(k: int) -> None:
            try:
                base = k * 2048
                for i in range(20):
                    data = os.urandom(BS * (1 + (i * 7 + k) % 64))
                    s.write(1, base + i * 64, data, BS)
                    assert s.read(1, base + i * 64, len(data) // BS, BS) == data
            except BaseException as exc:            # reported below, not lost
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert s.stats.commands >= 6 * 40


def test_block_device_contract(tgt):
    dev = IscsiBlockDevice.open(f"127.0.0.1:{tgt.daemon.port}", tgt.iqn, lun=1,
                                max_transfer=128 * KiB)
    try:
        assert dev.block_size == 512 and dev.capacity == 64 << 20
        assert dev.max_transfer == 128 * KiB
        data = os.urandom(1 << 20)                # 8 pieces of 128 KiB
        write_sync(dev, 4096, data)
        assert read_sync(dev, 4096, len(data)) == data
        dev.flush(10)
        assert tgt.backing(4096, len(data)) == data
        with pytest.raises(BlockDeviceError, match="not aligned"):
            write_sync(dev, 100, b"x" * 512)
        with pytest.raises(BlockDeviceError, match="past the device"):
            read_sync(dev, dev.capacity - 512, 1024)
    finally:
        dev.close()
    with pytest.raises(BlockDeviceError, match="closed"):
        write_sync(dev, 0, bytes(512))


def test_scsi_errors_are_decoded(tgt):
    with tgt.session() as s:
        s.test_unit_ready(1)
        with pytest.raises(ScsiError) as err:
            s.read(1, (64 << 20) // BS, 1, BS)
        assert err.value.sense_key == 5 and (err.value.asc, err.value.ascq) == (0x21, 0)
        assert "ILLEGAL REQUEST" in str(err.value) and "OUT OF RANGE" in str(err.value)
        with pytest.raises(ScsiError, match="LOGICAL UNIT NOT SUPPORTED"):
            s.test_unit_ready(7)
        inq = s.inquiry(1)
        assert (inq.vendor, inq.product, inq.peripheral_type) == ("IET", "VIRTUAL-DISK", 0)
        assert s.inquiry(0).peripheral_type == 0x0C
        assert s.report_luns() == [0, 1]
        assert s.read_capacity(1).bytes == 64 << 20
    with pytest.raises(SessionFailed):
        s.test_unit_ready(1)
