"""The reserve-aware packet handler: the storage client's NIC driver in user space.

The client's address lives on a TAP device; its wire interface keeps none and is
read and written raw by :class:`PacketHandler`, which allocates an skb from the
emulated memory manager for every frame, applies the policy's drop rule, and
delivers to the stack or drops, counting everything. See ``docs/architecture.md``
("Packet handler") for the contract and the design notes in each module:

- :mod:`.device`   attach/isolate the wire, TAP and raw socket, virtio headers;
- :mod:`.handler`  the receive and transmit paths;
- :mod:`.headers`  the struct-based header parse;
- :mod:`.flows`    FlowKey and the flow registry (rcv_nxt accounting);
- :mod:`.counters` counters whose totals add up;
- :mod:`.link`     user-space delay, loss and fault hooks;
- :mod:`.capture`  pcapng capture with drops marked;
- :mod:`.dissect`  the scapy slow path;
- :mod:`.netns`    namespace entry.

The tests' and the benchmark's helpers (namespace networks, a pinger, the plain
forwarder baseline) live in ``tests/support``, outside the library.
"""

from .errors import AttachError, HandlerConfigError, NetdevError
from .flows import Flow, FlowKey, FlowRegistry
from .handler import PacketHandler

__all__ = ["PacketHandler", "FlowKey", "FlowRegistry", "Flow",
           "NetdevError", "AttachError", "HandlerConfigError"]
