"""The storage client's memory configuration: flat, typed, and checked by the schema.

Every field is a plain value named for what it is. Sizes are MiB (``memory_mb``,
``total_mb``), rates MiB/s (``rate_mbps``: megabytes, not megabits), times carry their
unit in the name. The constraints are declared on the fields (type hints, ``Literal``
choices, :func:`testbed.schema.bounded` ranges) and checked by the one checker in
:mod:`testbed.schema`, whichever way the configuration arrives: a scenario's ``client:``
section (YAML, with file and line), the JSON the storage client is handed
(:meth:`MachineConfig.from_dict`), or an object built in code (:meth:`MachineConfig.validate`).
The one rule that spans fields is :meth:`MachineConfig.rules`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

from .. import schema
from ..schema import Alternative, Problem, SchemaError, alternative, bounded
from .policy import POLICIES
from .policy.loader import is_policy_file, load_policy_file, resolve

WORKLOAD_KINDS = ("writer", "mmap_writer", "downloader")
WorkloadKind = Literal[WORKLOAD_KINDS]
PolicyName = Literal[tuple(POLICIES)]


def _policy_file(value: str, file: str, line: int) -> str:
    """``client.policy: ./mypolicy.py``: the file, next to the scenario that names it,
    loaded and checked now (nothing starts with a broken policy); its absolute path."""
    path = resolve(value, file)
    if not path.is_file():
        raise SchemaError([Problem(file, line, "", f"{value}: no such policy file "
                                                   f"(looked for {path})")])
    load_policy_file(path)
    return str(path)


POLICY_FILE = Alternative(is_policy_file, _policy_file, "a policy file (a path ending in .py)")


@dataclass
class WorkloadConfig:
    """One workload thread on the storage client."""

    kind: WorkloadKind = "writer"   # writer | mmap_writer | downloader
    rate_mbps: float = bounded(0.0, min=0)      # MiB/s the workload tries to write; 0 = as fast as it can
    # MiB written (downloader: at most this much, or until EOF). At most 1 TiB: room for
    # "more than it can write in the time" (tests do that), while a float near 1e308
    # would overflow total_bytes
    total_mb: float = bounded(16.0, gt=0, max=1048576)
    files: int = bounded(1, min=1)              # files the bytes are spread over (round robin by chunk)
    seed: int = 1                               # fixes the written data (writers)
    # KiB per write() call, whole pages; at most 64 MiB: a larger buffer only costs this
    # machine's memory (the call is split into pages anyway)
    chunk_kb: int = bounded(64, min=4, max=65536, multiple_of=4)
    start_after_s: float = bounded(0.0, min=0)  # delay after the machine starts
    request: str = ""                           # downloader: sent to the server after connecting
    rcvbuf_kb: int = bounded(0, min=0)          # downloader: socket receive buffer (0 = kernel default)

    @property
    def total_bytes(self) -> int:
        return int(self.total_mb * (1 << 20))


@dataclass
class MachineConfig:
    """Memory, policy, writeback and workloads of the storage client."""

    # At most 16 GiB: a large machine of the 2005-2012 era these policies come from (a
    # 2012 server had 8-32 GiB, a 2005 desktop 0.5-2). The page cache keeps each page's
    # bytes in the storage client's process, so memory_mb is real RAM here too, and this
    # project's development machine has 24 GiB for the client, tgtd and everything else.
    memory_mb: int = bounded(64, min=4, max=16384)
    # emulated: this package's model (nodes/storage_client); kernel: a Linux guest under
    # QEMU with these memory and writeback knobs as its sysctls (testbed.guest)
    kind: Literal["emulated", "kernel"] = "emulated"
    min_free_kbytes: Optional[int] = bounded(None, min=16)  # None: clamp(int_sqrt(kbytes * 16), 128, 262144)
    watermark_scale_factor: int = bounded(10, min=1, max=3000)
    # net.ipv4.tcp_mem in pages [low, pressure, high]; None: as the era's tcp_init() sizes it
    tcp_mem: Optional[list[int]] = None
    policy: PolicyName = alternative("gorman-3.6", POLICY_FILE)   # or a policy file, *.py
    rx_reserve: int = bounded(50, min=0)        # per-device cap of reserve skbs (phillips)
    threshold: float = bounded(0.5, min=0, max=1)   # fraction of rx_reserve (phillips-2005-threshold)
    reserve_pages: Optional[int] = bounded(None, min=0)  # per device; None: estimate_skb_pages(rx_reserve, buffer)
    dirty_background_ratio: int = bounded(10, min=0, max=100)
    dirty_ratio: int = bounded(20, min=1, max=100)
    dirty_writeback_ms: int = bounded(500, min=1)
    dirty_expire_ms: int = bounded(3000, min=0)
    lockup_after_s: float = bounded(5.0, gt=0)
    metrics_interval_ms: int = bounded(100, min=10)
    writeback_inflight: int = bounded(8, min=1)        # device requests in flight at most
    writeback_batch_kb: int = bounded(128, min=4, multiple_of=4)  # largest writeback request
    congestion_wait_ms: int = bounded(20, min=1)       # a sleeping allocation's wait step
    workloads: list[WorkloadConfig] = field(default_factory=list)

    @property
    def total_pages(self) -> int:
        return self.memory_mb * 256

    def rules(self) -> Iterator[tuple[str, str]]:
        """What spans fields: (key relative to this section, message)."""
        if self.min_free_kbytes is not None and self.min_free_kbytes >= self.memory_mb * 1024 // 4:
            yield ("min_free_kbytes", f"{self.min_free_kbytes} KiB leaves too little of "
                                      f"{self.memory_mb} MiB (must be below a quarter)")
        if self.tcp_mem is not None and (len(self.tcp_mem) != 3 or self.tcp_mem[0] < 1
                                         or sorted(self.tcp_mem) != self.tcp_mem):
            yield ("tcp_mem", f"{self.tcp_mem}: give three page counts [low, pressure, high], "
                              f"each at least 1 and none below the one before")

    def validate(self, where: str = "client") -> None:
        """Raise SchemaError (a ConfigError) listing every problem, each under ``where``."""
        schema.validate(self, where)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "client") -> "MachineConfig":
        """Build and check from a mapping (e.g. JSON); every problem raises one SchemaError."""
        return schema.build(cls, data, where)
