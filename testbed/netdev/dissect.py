"""The slow path: scapy for what is not per frame.

- :func:`summary` dissects one unusual frame (a malformed one, say) for a log line
  (the handler logs the first few malformed frames it drops this way);
- :func:`bind_iscsi_layers` imports the project's iSCSI scapy layers when
  ``testbed.iscsi`` provides them, so that ``rdpcap`` of a capture shows the PDUs;
- :func:`dissect` gives a frame as a scapy packet (tests, labs);
- :meth:`FlowKey.from_packet` (in :mod:`.flows`) turns a scapy packet into a flow rule.

Nothing here runs per frame: scapy costs about 90 us to dissect a frame.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .headers import explain

log = logging.getLogger(__name__)
_iscsi_bound: bool | None = None


def bind_iscsi_layers() -> bool:
    """Make scapy dissect TCP port 3260 as iSCSI, if the layers exist. Idempotent."""
    global _iscsi_bound
    if _iscsi_bound is None:
        try:
            importlib.import_module("testbed.iscsi.layers")   # binds on import
            _iscsi_bound = True
        except ImportError as exc:
            log.debug("iSCSI scapy layers not available: %s", exc)
            _iscsi_bound = False
    return _iscsi_bound


def summary(frame: bytes) -> str:
    """One line about ``frame``: scapy's summary, plus why the fast parse rejects it."""
    bind_iscsi_layers()
    from scapy.layers.l2 import Ether
    try:
        text = Ether(bytes(frame)).summary()
    except Exception as exc:   # scapy itself may choke on a fuzzed frame
        text = f"undissectable ({type(exc).__name__})"
    why = explain(frame)
    return f"{len(frame)} bytes: {text}" + (f" [{why}]" if why else "")


def dissect(frame: bytes) -> Any:
    """The frame as a scapy packet (``Ether``), iSCSI layers bound."""
    bind_iscsi_layers()
    from scapy.layers.l2 import Ether
    return Ether(bytes(frame))
