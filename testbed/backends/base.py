"""What every backend shares: checked topology parameters and the network's shape.

A backend turns *parameters* into a running *network* of *hosts* inside a
:class:`testbed.runctx.RunContext`, and removes it when the run closes:

- :class:`ContentionParams` is the contention topology's parameters, whose ranges are
  declared on its fields (:func:`testbed.schema.bounded`) and checked by the schema when
  the object is made: a bad value raises a one-line :class:`ConfigError` that names the
  parameter, before anything exists on the machine. :func:`make_params` builds the
  parameters of a topology named by a string (scenario files, the command line).
- :class:`Backend` is what the orchestrator calls: ``Backend(run).up(params)``.
- :class:`Network` and :class:`Host` are what it gets back: hosts by name, with their
  address, interface, and ``popen``/``run`` for processes inside them (tracked, tagged
  with the run id, ended by pid at teardown).

The Mininet backend (:mod:`testbed.backends.mininet`) is the default.
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Optional

from .. import schema
from ..errors import ConfigError, TimeoutExpired
from ..runctx import RunContext
from ..schema import bounded


@dataclass(frozen=True)
class ContentionParams:
    """Parameters of the contention topology (see topologies/contention.py).

    n: bulk hosts; bw_client: Mbit/s of the client's access link, the bottleneck; bw:
    Mbit/s of the other links; delay (ms, one way) and loss (%) of the client link;
    queue: packets per shaped interface (None: the qdisc's default); trunk_delay,
    trunk_loss: delay and loss on the target and bulk links; mtu: bytes, every interface
    of every link (the client's packet handler and its memory model take their wire's).
    The ranges are declared here only: a scenario's ``topology:`` keys mirror these fields.
    """

    n: int = bounded(2, min=0, max=64)
    bw_client: float = bounded(10.0, gt=0, max=1000)    # Mbit/s, at most as Mininet's TCIntf
    bw: float = bounded(100.0, gt=0, max=1000)
    delay: float = bounded(0.0, min=0, max=60_000)
    loss: float = bounded(0.0, min=0, max=100)
    queue: Optional[int] = bounded(None, min=1, max=1_000_000)
    trunk_delay: float = bounded(0.0, min=0, max=60_000)
    trunk_loss: float = bounded(0.0, min=0, max=100)
    # IPv4's minimum datagram to the usual jumbo frame (iSCSI networks run 9000)
    mtu: int = bounded(1500, min=576, max=9000)

    topology: ClassVar[str] = "contention"
    # Set on the interfaces by the backend, not a link option of the layout
    # (topologies/contention_layout.py): Mininet's Link has no MTU option.
    link_wide: ClassVar[tuple[str, ...]] = ("mtu",)
    # The host whose packet handler can add delay and loss in user space.
    userspace_host: ClassVar[str] = "client"

    def __post_init__(self) -> None:
        _check_params(self)

    def topo(self):
        """The Mininet Topo for these parameters."""
        from topologies.contention import ContentionTopo
        return ContentionTopo(**self.layout())

    def layout(self) -> dict[str, Any]:
        """The arguments of the layout's ``contention_links``: all but :attr:`link_wide`."""
        return {k: v for k, v in asdict(self).items() if k not in self.link_wide}

    @property
    def host_names(self) -> list[str]:
        return ["client", "target"] + [f"bulk{i}" for i in range(1, self.n + 1)]


TOPOLOGIES: dict[str, type] = {"contention": ContentionParams}


def _check_params(params: Any) -> None:
    """Raise a one-line ConfigError naming every bad parameter and its requirement.

    The schema checks the declared fields; the sentence is worded for the command line
    (``contention: parameter n must be at least 0 and at most 64, got -1``).
    """
    first: dict[str, schema.Problem] = {}
    for problem in schema.problems(params):
        first.setdefault(problem.key, problem)     # one clause per parameter
    if first:
        clauses = [f"parameter {key} must be {p.requirement}, got {getattr(params, key)!r}"
                   for key, p in first.items()]
        raise ConfigError(f"{params.topology}: " + "; ".join(clauses))


def make_params(topology: str, **values: Any) -> ContentionParams:
    """Checked parameters of the topology named ``topology``; ConfigError names what is wrong."""
    cls = TOPOLOGIES.get(topology)
    if cls is None:
        raise ConfigError(f"topology {topology!r} is unknown (known: {', '.join(TOPOLOGIES)})")
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            raise ConfigError(f"{topology}: unknown parameter {key!r} (known: {', '.join(known)})")
    return cls(**values)


class HostCommandTimeout(TimeoutExpired, subprocess.TimeoutExpired):
    """A command run in a host did not finish in time (catchable as either parent)."""

    def __init__(self, host: str, cmd: list[str], timeout: float,
                 output: Any = None, stderr: Any = None):
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)
        TimeoutExpired.__init__(self, f"host {host}: {' '.join(map(str, cmd))} did not finish "
                                      f"in {timeout:g}s")
        self.host = host

    def __str__(self) -> str:
        return str(self.args[0])


class Host(ABC):
    """A host of a running network."""

    name: str
    ip: str       # IPv4 address, no prefix
    mac: str
    intf: str     # its interface, e.g. "client-eth0"

    @abstractmethod
    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start a process in the host: tracked, tagged, ended by pid at teardown."""

    def run(self, argv: list[str], timeout: float = 10.0,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a command in the host to completion; output captured as text unless told
        otherwise. On timeout the command is killed (:meth:`kill`) and HostCommandTimeout
        raised."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = self.popen(argv, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, err = proc.communicate()
            raise HostCommandTimeout(self.name, list(argv), timeout, out, err) from None
        finally:
            self.forget(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def kill(self, proc: subprocess.Popen) -> None:
        """End a command started by :meth:`popen` at once (its children too, where the
        backend can)."""
        proc.kill()

    def forget(self, proc: subprocess.Popen) -> None:
        """A command that ended: no need to end it at teardown."""


class Network(ABC):
    """A running network: hosts by name, and what the kernel could not do."""

    hosts: dict[str, Host]
    # Link effects the kernel cannot do here and the host's packet handler must:
    # {"client": {"delay_ms": 10.0, "loss_pct": 1.0}}; empty if none.
    userspace_link_effects: dict[str, dict[str, float]]

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise ConfigError(f"no host {name!r} in this network "
                              f"(hosts: {', '.join(self.hosts)})") from None

    @property
    def bulk_hosts(self) -> list[Host]:
        return [h for name, h in self.hosts.items() if name.startswith("bulk")]

    @abstractmethod
    def cli(self) -> None:
        """An interactive prompt on the network (returns when the user leaves it)."""


class Backend(ABC):
    """Brings a topology up inside a run; the run's teardown brings it down."""

    name: ClassVar[str]

    def __init__(self, run: RunContext):
        self.run = run

    @abstractmethod
    def up(self, params: ContentionParams) -> Network:
        """Build, shape and verify the network for ``params``."""
