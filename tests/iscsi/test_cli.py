"""`testbed iscsi ...` against a real tgtd, as a student would run it."""

from __future__ import annotations

import pytest

from testbed.cli import main

pytestmark = pytest.mark.tgtd


def run(capsys, *args):
    code = main(["iscsi", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_discover_inq_write_read(tgt, capsys, tmp_path):
    portal = f"127.0.0.1:{tgt.daemon.port}"
    code, out, _ = run(capsys, "discover", "--portal", portal)
    assert code == 0 and tgt.iqn in out
    code, out, _ = run(capsys, "inq", "--portal", portal, "--target", tgt.iqn)
    assert code == 0 and "VIRTUAL-DISK" in out and "131072 blocks of 512" in out
    src = tmp_path / "in.bin"
    src.write_bytes(b"hello, iSCSI\n" * 100)
    code, out, _ = run(capsys, "write", "--portal", portal, "--target", tgt.iqn, "--lba", "3",
                       "--in", str(src))
    assert code == 0 and "1300 bytes (3 blocks of 512)" in out
    dst = tmp_path / "out.bin"
    code, out, _ = run(capsys, "read", "--portal", portal, "--target", tgt.iqn, "--lba", "3",
                       "--blocks", "3", "--out", str(dst))
    assert code == 0 and dst.read_bytes() == src.read_bytes() + bytes(3 * 512 - 1300)
    code, out, _ = run(capsys, "read", "--portal", portal, "--target", tgt.iqn, "--lba", "3",
                       "--blocks", "1")
    assert code == 0 and "00000600  68 65 6c 6c 6f" in out and "hello, iSCSI.hel" in out


def test_bench_and_errors(tgt, capsys):
    portal = f"127.0.0.1:{tgt.daemon.port}"
    code, out, _ = run(capsys, "bench", "--portal", portal, "--target", tgt.iqn,
                       "--seconds", "1", "--size", "4k", "--qd", "8", "--rw", "write")
    assert code == 0 and "IOPS" in out
    code, _, err = run(capsys, "inq", "--portal", portal, "--target", "iqn.2026-11.x:none")
    assert code == 1 and "target not found" in err
    code, _, err = run(capsys, "read", "--portal", portal, "--target", tgt.iqn,
                       "--lba", str(1 << 40), "--blocks", "1")
    assert code == 1 and "ILLEGAL REQUEST" in err and "OUT OF RANGE" in err
    code, _, err = run(capsys, "inq", "--portal", portal, "--target", tgt.iqn, "--chap-user", "x")
    assert code == 1 and "go together" in err
