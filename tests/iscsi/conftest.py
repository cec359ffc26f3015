"""Fixtures for the initiator's tests: a real tgtd per test, on its own port.

Each test that asks for ``tgt`` gets its own tgtd (its own control socket and
free port, picked by tgtd) with target 1 backed by a file in the test's tmp_path,
and the daemon is stopped at the end whatever happened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from testbed.iscsi.session import Session, SessionConfig
from testbed.tgt import TgtDaemon

IQN = "iqn.2026-11.org.testbed:t1"
LUN_SIZE = 64 << 20


@dataclass
class Target:
    daemon: TgtDaemon
    lun_path: Path
    iqn: str = IQN

    @property
    def portal(self) -> tuple[str, int]:
        return ("127.0.0.1", self.daemon.port)

    def session(self, **cfg) -> Session:
        cfg.setdefault("login_timeout", 5.0)
        cfg.setdefault("command_timeout", 10.0)
        return Session(self.portal, self.iqn, SessionConfig(**cfg)).open()

    def backing(self, offset: int, length: int) -> bytes:
        with open(self.lun_path, "rb") as f:
            f.seek(offset)
            return f.read(length)


def _lun_dir(tmp_path: Path) -> Path:
    # tmpfs keeps the I/O tests fast and spares the disk; fall back to tmp_path
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="tb-iscsi-", dir=shm))
    return tmp_path


def start_target(tmp_path: Path, params: Optional[dict] = None, port: int = 0,
                 lun_path: Optional[Path] = None, **daemon_kw) -> Target:
    d = TgtDaemon(tmp_path / "tgtd", portal=f"127.0.0.1:{port}", **daemon_kw)
    d.start(timeout=10)
    try:
        path = lun_path or _lun_dir(tmp_path) / "lun1.img"
        d.add_target(tid=1, iqn=IQN, backing_file=path,
                     size_bytes=None if path.exists() else LUN_SIZE, block_size=512)
        for name, value in (params or {}).items():
            d.set_param(tid=1, name=name, value=value)
    except BaseException:
        d.stop()
        raise
    return Target(d, path)


@pytest.fixture
def make_tgt(tmp_path: Path) -> Iterator:
    """Factory: ``make_tgt(params={...}, port=0, lun_path=None, nop_interval=...)``."""
    started: list[Target] = []

    def make(params: Optional[dict] = None, port: int = 0, lun_path: Optional[Path] = None,
             **daemon_kw) -> Target:
        sub = tmp_path / f"t{len(started)}"
        sub.mkdir()
        t = start_target(sub, params, port, lun_path,
                         **daemon_kw)
        started.append(t)
        return t

    try:
        yield make
    finally:
        for t in started:
            t.daemon.stop()
        for t in started:
            if t.lun_path.parent.parent == Path("/dev/shm"):
                shutil.rmtree(t.lun_path.parent, ignore_errors=True)


@pytest.fixture
def tgt(make_tgt) -> Target:
    """A tgtd with target 1, LUN 1 on a 64 MiB file, default parameters."""
    return make_tgt()
