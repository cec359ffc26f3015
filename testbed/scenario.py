"""Scenario files: what a run is, as YAML, with defaults for everything.

A scenario names a topology (bulk hosts, link rates, delay and loss of the client's link
and of the trunks), the storage client (memory, policy and its knobs, dirty ratios,
workloads), the target (LUN, CHAP), the bulk traffic, the faults to inject while the load
runs (:mod:`testbed.faults`), how long to run, and the verdict it is expected to reach. Every key
but ``name`` and ``client.workloads`` has a default, so the smallest scenario is a name and
one workload (a run without one would end at once, having done nothing).

Variants say ``extends: other.yaml`` (a path relative to the file): the base is loaded
first, then the variant's keys are merged over it (mappings key by key, lists and
scalars replaced; an empty mapping ``{}`` clears the base's). Command-line overrides (``--set client.policy=none``) are applied
last, the same way.

Loading never starts anything. Every mistake in the file (wrong type, unknown key,
impossible value, a misspelt policy) is reported at once, each with the file, the line
and the dotted key, by :class:`testbed.schema.SchemaError`. The sections are dataclasses
whose fields declare their constraints (:mod:`testbed.schema`); the ``topology:`` keys
mirror :class:`~testbed.backends.base.ContentionParams`, where their ranges live.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .backends.base import ContentionParams, make_params
from .errors import ConfigError
from .faults import Fault, scenario_rules as fault_rules
from .guest.qemu import scenario_rules as kernel_client_rules
from .iscsi.session import SessionConfig
from .mm.config import MachineConfig
from .mm.policy import POLICIES
from .schema import (Problem, SchemaError, bounded, build, check_mirrors, compose_mapping, mirror,
                     mirrored, scalar_value, unreadable)

POLICY_NAMES = tuple(POLICIES)
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

Verdict = Literal["completed", "lockup", "degraded"]
Policy = Literal[POLICY_NAMES]


def _param(name: str, default: Any = dataclasses.MISSING) -> Any:
    """A scenario key that is ContentionParams' parameter ``name``: its range (and, unless
    given, its default) are declared there once."""
    return mirror(ContentionParams, name, default)


@check_mirrors
@dataclass
class TopologySection:
    """The contention topology: client, target and N bulk hosts on one switch.

    Each key mirrors a parameter of :class:`testbed.backends.base.ContentionParams`,
    which declares its range; :meth:`params` hands the values over by those names.
    """

    bulk_hosts: int = _param("n", 3)
    client_bw_mbit: float = _param("bw_client", 20.0)   # the client's access link: the bottleneck
    bw_mbit: float = _param("bw")                # every other link
    delay_ms: float = _param("delay")            # client link, one way (user space where no sch_netem)
    loss_pct: float = _param("loss")             # client link (user space where no sch_netem)
    queue_pkts: Optional[int] = _param("queue")
    trunk_delay_ms: float = _param("trunk_delay")    # target and bulk links, one way (needs sch_netem)
    trunk_loss_pct: float = _param("trunk_loss")     # target and bulk links (needs sch_netem)
    mtu: int = _param("mtu")                     # every link, bytes (the Mininet backend only)

    def params(self) -> ContentionParams:
        return make_params("contention", **mirrored(self))


@dataclass
class ChapSection:
    """CHAP accounts: the initiator's (incoming at the target) and, for mutual, the target's."""

    user: str
    secret: str
    mutual_user: Optional[str] = None
    mutual_secret: Optional[str] = None

    def rules(self) -> Iterator[tuple[str, str]]:
        if not 12 <= len(self.secret) <= 16:
            yield ("secret", "must be 12 to 16 characters (RFC 7143 CHAP)")
        if (self.mutual_user is None) != (self.mutual_secret is None):
            yield ("mutual_secret", "mutual_user and mutual_secret go together")


@dataclass
class TargetSection:
    """The iSCSI target: tgtd serving one file-backed LUN."""

    lun_mb: int = bounded(512, min=1, max=65536)
    block_size: Literal[512, 4096] = 512
    chap: Optional[ChapSection] = None
    digests: bool = False
    initiator_port: Optional[int] = bounded(None, min=1024, max=65535)
    # the client's iSCSI source port; None: the kernel picks one (a spoofer must know it)


@dataclass
class InitiatorSection:
    """The storage client's iSCSI initiator: its timeouts, as an administrator sets them.

    Linux's counterparts: the SCSI command timeout (``/sys/block/sdX/device/timeout``,
    30 s by default) and open-iscsi's ``node.conn[0].timeo.noop_out_interval``,
    ``noop_out_timeout`` and ``login_timeout`` (iscsid.conf). The lockup detector's
    recovery horizon follows from them (``RecoveryHorizon``, testbed/mm/lockup.py): a
    shorter command timeout lets a lockup be proven sooner, as it lets a real initiator
    give up sooner. The defaults are the initiator's own (``SessionConfig``).
    """

    command_timeout_s: float = bounded(SessionConfig.command_timeout, min=1, max=600)
    noop_out_interval_s: float = bounded(SessionConfig.keepalive_interval, min=0, max=600)
    noop_out_timeout_s: float = bounded(SessionConfig.keepalive_timeout, min=1, max=600)
    login_timeout_s: float = bounded(SessionConfig.login_timeout, min=1, max=120)
    # open-iscsi's node.session.timeo.replacement_timeout, the kernel's recovery_tmo: how
    # long a failed session is retried before session_recovery_timedout()
    # (drivers/scsi/scsi_transport_iscsi.c) fails its commands. The kernel client only:
    # the emulated initiator bounds its reinstatement by its own attempts (SessionConfig)
    replacement_timeout_s: float = bounded(120.0, min=1, max=3600)

    def session_config(self) -> dict[str, float]:
        """The :class:`SessionConfig` fields these set."""
        return {"command_timeout": self.command_timeout_s,
                "keepalive_interval": self.noop_out_interval_s,
                "keepalive_timeout": self.noop_out_timeout_s,
                "login_timeout": self.login_timeout_s}


@dataclass
class BulkSection:
    """What the bulk hosts do: serve downloads (tcp, http), flood the client (udp), or
    forge segments of the client's iSCSI flow (spoof; needs target.initiator_port)."""

    mode: Literal["tcp", "http", "udp", "spoof"] = "tcp"
    rate_mbit: float = bounded(0.0, min=0)     # 0: as fast as the link allows
    udp_size: int = bounded(1400, min=64, max=1472)


@dataclass
class LocalDiskSection:
    """The "buy a local disk" baseline: a file-backed disk in the client instead of iSCSI."""

    latency_ms: float = bounded(0.5, min=0)
    bandwidth_mbps: Optional[float] = bounded(None, gt=0)  # MiB/s


@dataclass
class BoundsSection:
    """The scenario's own bounds: missing one of the first three turns a finished run into
    ``degraded``; missing a fidelity bound makes the run ``invalid``."""

    max_stall_s: float = bounded(10.0, gt=0)
    max_other_drops: Optional[int] = bounded(None, min=0)
    min_goodput_mbit: Optional[float] = bounded(None, min=0)
    # The run's own fidelity (testbed/fidelity.py); missing one makes the run ``invalid``
    # (its verdict kept, never counted). None turns a bound off. Why these defaults:
    # a client paused for 1 s lets the target's TCP time out on it (TCP_TIMEOUT_INIT,
    # an RTO the machine caused, not the policy);
    max_lag_ms: Optional[float] = bounded(1000.0, gt=0)
    # a wake-up later than the lockup detector's and the sampler's period (100 ms) missed
    # a whole check; 1 % of them may (a few per run, the machine's own hiccups);
    lag_late_ms: float = bounded(100.0, gt=0)
    max_late_fraction: Optional[float] = bounded(0.01, min=0, max=1)
    # a saturated link reaches its rate within a second on a machine that keeps up
    # (0.97 to 1.00 in docs/measurements.md); under 0.9 the shaping was not what was asked;
    min_link_ratio: Optional[float] = bounded(0.9, gt=0, max=2)
    # the share of the run in which some task waited for a CPU (/proc/pressure/cpu):
    # recorded, not bounded by default - it counts every task of the host, and runs at
    # 99 % beside six busy loops kept their lag, link rate and verdict (measurements.md)
    max_cpu_pressure: Optional[float] = bounded(None, min=0, max=1)


@dataclass
class Scenario:
    """One reproducible run and the verdict it should reach."""

    name: str
    description: str = ""
    expect: Verdict = "completed"
    expect_by_policy: dict[Policy, Verdict] = field(default_factory=dict)  # overrides expect
    # At most a day: no experiment here runs longer, and a wait of 1e300 s overflows.
    duration_s: float = bounded(30.0, gt=0, max=86400)
    deadline_s: float = bounded(90.0, gt=0, max=86400)
    backend: Literal["mininet", "docker"] = "mininet"
    capture: bool = False
    storage: Literal["iscsi", "local"] = "iscsi"
    topology: TopologySection = field(default_factory=TopologySection)
    client: MachineConfig = field(default_factory=MachineConfig)
    target: TargetSection = field(default_factory=TargetSection)
    initiator: InitiatorSection = field(default_factory=InitiatorSection)
    bulk: BulkSection = field(default_factory=BulkSection)
    local_disk: LocalDiskSection = field(default_factory=LocalDiskSection)
    bounds: BoundsSection = field(default_factory=BoundsSection)
    faults: list[Fault] = field(default_factory=list)   # injected during the load (testbed.faults)

    def rules(self) -> Iterator[tuple[str, str]]:
        if not self.client.workloads:   # the run would "complete" at once, having done nothing
            yield ("client.workloads", "a scenario needs at least one workload, e.g. "
                                       "[{kind: writer, total_mb: 16}]")
        if self.bulk.mode == "spoof" and self.target.initiator_port is None:
            yield ("bulk.mode", "spoof needs target.initiator_port (the port of the flow "
                                "the bulk hosts claim)")
        if self.deadline_s < self.duration_s:
            yield ("deadline_s", f"{self.deadline_s} must not be shorter than duration_s "
                                 f"({self.duration_s})")
        yield from kernel_client_rules(self)       # client.kind: kernel (testbed.guest)
        # last: a fault list already reported as wrong ends only its own checks
        yield from fault_rules(self.faults, self.topology.bulk_hosts, self.backend,
                               self.storage, self.deadline_s)

    @property
    def expected(self) -> str:
        """The verdict this scenario expects under its client's policy."""
        return self.expect_by_policy.get(self.client.policy, self.expect)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- loading --------------------------------------------------------------------------

def resolve(name: str | Path) -> Path:
    """A scenario path as given, or a built-in one by name (``contention-none``)."""
    p = Path(name)
    if p.exists():
        return p
    for candidate in (SCENARIO_DIR / p, SCENARIO_DIR / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.yaml")))
    raise ConfigError(f"{name}: no such scenario file or built-in scenario (built-in: {known})")


def load(name: str | Path, overrides: Optional[list[str]] = None) -> Scenario:
    """Load, merge (extends, overrides) and validate a scenario; raise SchemaError."""
    path = resolve(name)
    node = _compose_with_extends(path, chain=())
    for item in overrides or []:
        node = _merge(node, _override_node(item))
    return build(Scenario, node)


def _compose(path: Path) -> yaml.Node:
    return compose_mapping(path, "a scenario is a mapping of keys (name:, client:, ...)",
                           empty="a scenario needs at least name: and client: workloads:")


def _compose_with_extends(path: Path, chain: tuple[Path, ...]) -> yaml.Node:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"{path}: extends forms a cycle: {cycle}")
    node = _compose(path)
    base_ref = None
    for knode, vnode in list(node.value):
        if scalar_value(knode) == "extends":
            base_ref = vnode
            node.value.remove((knode, vnode))
    if base_ref is None:
        return node
    ref = scalar_value(base_ref) if isinstance(base_ref, yaml.ScalarNode) else None
    if not isinstance(ref, str):
        raise SchemaError([Problem(str(path), base_ref.start_mark.line + 1, "extends",
                                   "expected the path of another scenario file")])
    base_path = (path.parent / ref)
    if not base_path.exists():
        raise SchemaError([Problem(str(path), base_ref.start_mark.line + 1, "extends",
                                   f"{ref}: no such file next to {path.name}")])
    return _merge(_compose_with_extends(base_path, chain + (path,)), node)


def _merge(base: yaml.Node, over: yaml.Node) -> yaml.Node:
    """Merge ``over`` into a copy of ``base``: mappings key by key, anything else replaced.

    An empty mapping replaces (clears) the base's mapping.
    """
    if not (isinstance(base, yaml.MappingNode) and isinstance(over, yaml.MappingNode)) \
            or not over.value:
        return over
    merged = copy.copy(base)
    merged.value = list(base.value)
    index = {scalar_value(k): i for i, (k, _) in enumerate(merged.value)}
    for k, v in over.value:
        name = scalar_value(k)
        if name in index:
            i = index[name]
            merged.value[i] = (k, _merge(merged.value[i][1], v))
        else:
            index[name] = len(merged.value)
            merged.value.append((k, v))
    return merged


def _override_node(item: str) -> yaml.Node:
    """``a.b.c=value`` as a nested mapping node whose marks name the --set option."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. client.policy=none")
    try:
        value = yaml.compose(raw or '""', Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"--set {key}: {raw!r} is not a valid value")
    if value is None or unreadable(value):
        raise ConfigError(f"--set {key}: {raw!r} is not a valid value")
    _rename_marks(value, f"--set {key}")
    node = value
    for part in reversed(key.split(".")):
        knode = yaml.ScalarNode("tag:yaml.org,2002:str", part, value.start_mark, value.end_mark)
        node = yaml.MappingNode("tag:yaml.org,2002:map", [(knode, node)],
                                value.start_mark, value.end_mark)
    return node


def _rename_marks(node: yaml.Node, name: str) -> None:
    for mark in (node.start_mark, node.end_mark):
        mark.name = name
        mark.line = -1  # reported as line 0: "no line"
    if isinstance(node, yaml.SequenceNode):
        for n in node.value:
            _rename_marks(n, name)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _rename_marks(k, name)
            _rename_marks(v, name)


def dump(scenario: Scenario) -> str:
    """The scenario as run, as YAML (for the run folder)."""
    return yaml.safe_dump(scenario.to_dict(), sort_keys=False)
