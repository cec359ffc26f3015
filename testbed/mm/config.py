"""The storage client's memory configuration: flat, typed, validated.

The scenario layer maps the YAML ``client:`` section onto :class:`MachineConfig`
field by field (``MachineConfig.from_dict``), so every field is a plain value
named for what it is. Sizes are MiB (``memory_mb``, ``total_mb``), rates MiB/s
(``rate_mbps``: megabytes, not megabits), times carry their unit in the name.
``validate()`` raises :class:`~testbed.errors.ConfigError` naming the key, e.g.
``client.workloads[1].rate_mbps: must be >= 0 (got -3)``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

from ..errors import ConfigError
from .policy import POLICIES

WORKLOAD_KINDS = ("writer", "mmap_writer", "downloader")
WorkloadKind = Literal[WORKLOAD_KINDS]
PolicyName = Literal[tuple(POLICIES)]


@dataclass
class WorkloadConfig:
    """One workload thread on the storage client."""

    kind: WorkloadKind = "writer"   # writer | mmap_writer | downloader
    rate_mbps: float = 0.0          # MiB/s the workload tries to write; 0 = as fast as it can
    total_mb: float = 16.0          # MiB written (downloader: at most this much, or until EOF)
    files: int = 1                  # files the bytes are spread over (round robin by chunk)
    seed: int = 1                   # fixes the written data (writers)
    chunk_kb: int = 64              # bytes per write() call
    start_after_s: float = 0.0      # delay after the machine starts
    request: str = ""               # downloader: sent to the server after connecting
    rcvbuf_kb: int = 0              # downloader: socket receive buffer (0 = kernel default)

    def validate(self, where: str = "workload") -> None:
        _check_types(self, where)
        if self.kind not in WORKLOAD_KINDS:
            raise ConfigError(f"{where}.kind: must be one of {', '.join(WORKLOAD_KINDS)} (got {self.kind!r})")
        _positive(where, "total_mb", self.total_mb)
        _at_least(where, "rate_mbps", self.rate_mbps, 0)
        _at_least(where, "files", self.files, 1)
        _at_least(where, "start_after_s", self.start_after_s, 0)
        _at_least(where, "rcvbuf_kb", self.rcvbuf_kb, 0)
        if self.chunk_kb < 4 or self.chunk_kb % 4:
            raise ConfigError(f"{where}.chunk_kb: must be a positive multiple of 4 (got {self.chunk_kb})")

    @property
    def total_bytes(self) -> int:
        return int(self.total_mb * (1 << 20))


@dataclass
class MachineConfig:
    """Memory, policy, writeback and workloads of the storage client."""

    memory_mb: int = 64
    min_free_kbytes: Optional[int] = None       # None: clamp(int_sqrt(kbytes * 16), 128, 262144)
    watermark_scale_factor: int = 10
    policy: PolicyName = "gorman-3.6"
    rx_reserve: int = 50                        # per-device cap of reserve skbs (phillips)
    threshold: float = 0.5                      # fraction of rx_reserve (phillips-2005-threshold)
    reserve_pages: Optional[int] = None         # per device; None: estimate_skb_pages(rx_reserve, buffer)
    dirty_background_ratio: int = 10
    dirty_ratio: int = 20
    dirty_writeback_ms: int = 500
    dirty_expire_ms: int = 3000
    lockup_after_s: float = 5.0
    metrics_interval_ms: int = 100
    writeback_inflight: int = 8                 # device requests in flight at most
    writeback_batch_kb: int = 128               # largest writeback request
    congestion_wait_ms: int = 20                # a sleeping allocation's wait step
    workloads: list[WorkloadConfig] = field(default_factory=list)

    @property
    def total_pages(self) -> int:
        return self.memory_mb * 256

    def validate(self, where: str = "client") -> None:
        """Raise ConfigError naming the first bad key."""
        _check_types(self, where)
        _at_least(where, "memory_mb", self.memory_mb, 4)
        if self.min_free_kbytes is not None:
            _at_least(where, "min_free_kbytes", self.min_free_kbytes, 16)
            if self.min_free_kbytes >= self.memory_mb * 1024 // 4:
                raise ConfigError(f"{where}.min_free_kbytes: {self.min_free_kbytes} KiB leaves too little "
                                  f"of {self.memory_mb} MiB (must be below a quarter)")
        _between(where, "watermark_scale_factor", self.watermark_scale_factor, 1, 3000)
        if self.policy not in POLICIES:
            raise ConfigError(f"{where}.policy: must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        _at_least(where, "rx_reserve", self.rx_reserve, 0)
        _between(where, "threshold", self.threshold, 0, 1)
        if self.reserve_pages is not None:
            _at_least(where, "reserve_pages", self.reserve_pages, 0)
        _between(where, "dirty_background_ratio", self.dirty_background_ratio, 0, 100)
        _between(where, "dirty_ratio", self.dirty_ratio, 1, 100)
        _at_least(where, "dirty_writeback_ms", self.dirty_writeback_ms, 1)
        _at_least(where, "dirty_expire_ms", self.dirty_expire_ms, 0)
        _positive(where, "lockup_after_s", self.lockup_after_s)
        _at_least(where, "metrics_interval_ms", self.metrics_interval_ms, 10)
        _at_least(where, "writeback_inflight", self.writeback_inflight, 1)
        if self.writeback_batch_kb < 4 or self.writeback_batch_kb % 4:
            raise ConfigError(f"{where}.writeback_batch_kb: must be a positive multiple of 4 "
                              f"(got {self.writeback_batch_kb})")
        _at_least(where, "congestion_wait_ms", self.congestion_wait_ms, 1)
        for i, wl in enumerate(self.workloads):
            wl.validate(f"{where}.workloads[{i}]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "client") -> "MachineConfig":
        """Build and validate from a mapping (the YAML section); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a mapping (got {type(data).__name__})")
        values = dict(data)
        workloads = values.pop("workloads", [])
        if not isinstance(workloads, list):
            raise ConfigError(f"{where}.workloads: must be a list (got {type(workloads).__name__})")
        config = cls(**_known(cls, values, where))
        config.workloads = [_workload(w, f"{where}.workloads[{i}]") for i, w in enumerate(workloads)]
        config.validate(where)
        return config


def _workload(data: Any, where: str) -> WorkloadConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a mapping (got {type(data).__name__})")
    return WorkloadConfig(**_known(WorkloadConfig, dict(data), where))


def _known(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(names))})")
    return values


def _check_types(obj: Any, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        expected = hints[f.name]
        if f.name == "workloads":
            if not isinstance(value, list) or not all(isinstance(w, WorkloadConfig) for w in value):
                raise ConfigError(f"{where}.workloads: must be a list of workloads")
            continue
        if typing.get_origin(expected) is Literal:
            continue                    # checked against its choices by validate()
        optional = typing.get_origin(expected) is typing.Union
        base = [a for a in typing.get_args(expected) if a is not type(None)][0] if optional else expected
        if value is None and optional:
            continue
        ok = isinstance(value, base) and not isinstance(value, bool) if base in (int, float) else isinstance(value, base)
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{where}.{f.name}: must be {base.__name__}"
                              f"{' or null' if optional else ''} (got {value!r})")


def _at_least(where: str, key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{where}.{key}: must be >= {low} (got {value})")


def _positive(where: str, key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{where}.{key}: must be > 0 (got {value})")


def _between(where: str, key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key}: must be between {low} and {high} (got {value})")
