"""A pure-Python iSCSI initiator (RFC 7143), the storage client's way to its disk.

The kernel here has no iSCSI initiator, and the testbed must own the socket (to mark
its flow memalloc) and the memory of every PDU, so the initiator is the project's own.
The layers, bottom up:

=================  ============================================================
``pdu``            PDU layouts described once (rows of bit fields), fast codec
``layers``         scapy layers generated from the same layouts (port 3260)
``text``, ``chap`` login keys and their negotiation; CHAP (MD5, mutual)
``connection``     socket, hooks, batched sending, the receive buffer
``login``          login stages, discovery (SendTargets)
``session``        full feature phase, CmdSN window, R2T, keepalive, ERL 0 recovery
``scsi``           CDBs, sense decoding
``perf``           the load generator of ``testbed iscsi perf``
``errors``         the typed errors
=================  ============================================================

Typical use::

    from testbed.blockdev.iscsi import IscsiBlockDevice
    dev = IscsiBlockDevice.open("10.0.0.2", "iqn.2026-11.org.testbed:t1", lun=1)
"""

from .chap import ChapCredentials
from .connection import SessionHooks
from .login import discover
from .session import Session, SessionConfig, Task

__all__ = ["ChapCredentials", "Session", "SessionConfig", "SessionHooks",
           "Task", "discover"]
