"""A :class:`testbed.blockdev.BlockDevice` on one LUN of an iSCSI session.

This is the disk the storage client's page cache writes back to. A request is
checked against the LUN's size and block size, split into READ(16)/WRITE(16)
commands of at most ``max_transfer`` bytes (by default the session's
MaxBurstLength, lowered to the LUN's MAXIMUM TRANSFER LENGTH from the Block Limits
VPD page when it reports one), submitted together (the session's CmdSN window
bounds how many are in flight) and completed once: the callback gets the first
error, as a :class:`testbed.blockdev.BlockDeviceError` whose cause is the iSCSI
error, or success when every piece succeeded. ``flush`` is SYNCHRONIZE CACHE.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from . import Buffer, BlockDeviceError, ReadCallback, WriteCallback, check_range
from ..iscsi import scsi
from ..iscsi.errors import IscsiError, ScsiError
from ..iscsi.session import Session, SessionConfig, Task


class _Request:
    """One block request split into ``parts`` commands; completes once."""

    __slots__ = ("remaining", "error", "lock", "finish", "what")

    def __init__(self, parts: int, finish: Any, what: str) -> None:
        self.remaining, self.error, self.finish, self.what = parts, None, finish, what
        self.lock = threading.Lock()

    def part_done(self, error: Optional[BaseException]) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            err = self.error
            if err is not None and not isinstance(err, BlockDeviceError):
                wrapped = BlockDeviceError(f"{self.what}: {err}")
                wrapped.__cause__ = err
                err = wrapped
            self.finish(err)


class IscsiBlockDevice:
    """Block device on LUN ``lun`` of ``session`` (opened and logged in)."""

    def __init__(self, session: Session, lun: int = 1, max_transfer: Optional[int] = None,
                 own_session: bool = False, timeout: float = 30.0) -> None:
        self.session, self.lun, self.own_session = session, lun, own_session
        self.timeout = timeout
        session.execute(scsi.test_unit_ready(), lun, timeout=timeout)   # eats the UNIT ATTENTION
        cap = session.read_capacity(lun)
        self._block_size, self._capacity = cap.block_size, cap.bytes
        limit = max_transfer or session.params.max_burst_length
        try:
            vpd = session.execute(scsi.inquiry(64, evpd=True, page=0xB0), lun, read_length=64,
                                  timeout=timeout)
            blocks = scsi.parse_block_limits(bytes(vpd))
            if blocks:
                limit = min(limit, blocks * cap.block_size)
        except ScsiError:
            pass                                    # page not supported: no limit reported
        self.max_transfer = max(cap.block_size, limit - limit % cap.block_size)

    @classmethod
    def open(cls, portal: str, target: str, lun: int = 1, config: Optional[SessionConfig] = None,
             hooks: Any = None, **kw: Any) -> "IscsiBlockDevice":
        """Log in to ``target`` at ``portal`` and return the device on ``lun``."""
        session = Session(portal, target, config, hooks).open()
        try:
            return cls(session, lun, own_session=True, **kw)
        except BaseException:
            session.close()
            raise

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def capacity(self) -> int:
        return self._capacity

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int]]:
        step = self.max_transfer
        return [(o, min(step, offset + length - o)) for o in range(offset, offset + length, step)]

    def submit_write(self, offset: int, data: Buffer, callback: WriteCallback) -> None:
        view = memoryview(data).cast("B")
        check_range(self, offset, len(view))
        pieces = self._pieces(offset, len(view))
        req = _Request(len(pieces), callback, f"write of {len(view)} bytes at offset {offset}")
        bs = self._block_size

        def done(task: Task) -> None:
            req.part_done(task.error)

        for off, n in pieces:
            self._submit(req, scsi.write16(off // bs, n // bs), done,
                         data=view[off - offset:off - offset + n])

    def submit_read(self, offset: int, length: int, callback: ReadCallback) -> None:
        check_range(self, offset, length)
        pieces = self._pieces(offset, length)
        bs = self._block_size
        if len(pieces) == 1:                      # the common case: no assembly copy
            def single(task: Task) -> None:
                if task.error is None:
                    callback(bytes(task.result), None)
                else:
                    err = BlockDeviceError(f"read of {length} bytes at offset {offset}: {task.error}")
                    err.__cause__ = task.error
                    callback(None, err)
            self._submit(None, scsi.read16(offset // bs, length // bs), single, read_length=length)
            return
        out = bytearray(length)

        def finish(err: Optional[BaseException]) -> None:
            if err is None:
                callback(bytes(out), None)
            else:
                callback(None, err)

        req = _Request(len(pieces), finish, f"read of {length} bytes at offset {offset}")
        for off, n in pieces:
            def piece(task: Task, off: int = off, n: int = n) -> None:
                if task.error is None:
                    out[off - offset:off - offset + n] = task.result
                req.part_done(task.error)
            self._submit(req, scsi.read16(off // bs, n // bs), piece, read_length=n)

    def _submit(self, req: Optional[_Request], cdb: scsi.Cdb, cb: Any, **kw: Any) -> None:
        try:
            self.session.submit(cdb, self.lun, callback=cb, **kw)
        except IscsiError as exc:                 # session already failed or closed
            if req is None:
                task = Task("SCSI", cdb, self.lun, kw.get("read_length", 0), None, None)
                task.error = exc
                cb(task)
            else:
                req.part_done(exc)

    def flush(self, timeout: Optional[float] = None) -> None:
        try:
            self.session.execute(scsi.synchronize_cache10(), self.lun,
                                 timeout=timeout if timeout is not None else self.timeout)
        except IscsiError as exc:
            raise BlockDeviceError(f"flush (SYNCHRONIZE CACHE) of LUN {self.lun}: {exc}") from exc

    def close(self, timeout: float = 10.0) -> None:
        """Log out (bounded by ``timeout``) if the session is ours."""
        if self.own_session:
            self.session.close(timeout)
