"""The testbed's Docker labels, and finding and removing what carries them.

Every container, network and volume the testbed makes on a Docker engine carries
labels, the Docker counterpart of a run's tags (see :mod:`testbed.runctx`):

- ``org.testbed.run=<run id>``: the run it belongs to (the Docker backend: the run's
  8-hex-digit id; docker-compose.yml: ``$TESTBED_COMPOSE_RUN``, default ``compose``);
- ``org.testbed.role=client|target|bulk``: the node it is (containers);
- ``org.testbed.managed=backend|compose``: who made it. What a swarm stack made from
  docker-compose.yml also carries swarm's ``com.docker.stack.namespace``.

:func:`scan` lists labelled objects through the Docker SDK, by the labels only: names,
images and everything unlabelled are never looked at. It leaves out what is alive:

- a compose or stack run while one of its containers runs, or while its newest object
  is younger than :data:`COMPOSE_GRACE` (``docker-compose up`` makes the network and the
  volume before it starts a container);
- whatever belongs to a stack that still has services (swarm would start a removed
  task again; ``docker stack rm`` removes the services and the network, and leaves the
  volumes, which are then leftovers like any other).

A swarm, and a node of one, carry labels in their specs: the two-engine check
(tests/support/swarm_engines.py) labels the swarm it made on the host's engine and its
worker's node entry, with ``org.testbed.managed=swarm-engines``; on a manager they are
listed too (kinds ``swarm`` and ``node``).

Whether a *backend* or *swarm-engines* run is alive is decided by :mod:`testbed.cleanup`
from the run's state file, as for every other tag. :func:`remove` removes containers
(with their anonymous volumes), then node entries, networks, volumes, and last the
swarm: the engine leaves it (which ends the stacks it held), then what is still
labelled with that run goes, and ``docker_gwbridge`` if the swarm's labels say that
it came with it.

Without the Docker SDK, or with no engine answering, there is nothing labelled to
find: both functions do nothing, quickly (a short timeout), so ``testbed clean`` and
every run's start-up sweep cost nothing on a machine without Docker.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

LABEL_RUN = "org.testbed.run"
LABEL_ROLE = "org.testbed.role"
LABEL_MANAGED = "org.testbed.managed"
SOCKET = "/var/run/docker.sock"
SCAN_TIMEOUT = 5.0        # seconds per engine request during a scan
REMOVE_TIMEOUT = 30.0     # seconds per removal (a container's processes are killed first)
ENDPOINT_GRACE = 30.0     # how long a network's "active endpoints" refusal is retried
# seconds: a compose or stack run this young counts as alive
COMPOSE_GRACE = float(os.environ.get("TESTBED_COMPOSE_GRACE", "120"))
STACK_LABEL = "com.docker.stack.namespace"   # set by swarm on what a stack made
LABEL_GWBRIDGE = "org.testbed.gwbridge"      # on a swarm: "made" if docker_gwbridge came with it
GWBRIDGE = "docker_gwbridge"


@dataclass(frozen=True)
class LabelledObject:
    """A container, network or volume with the testbed's labels."""

    kind: str                 # "container" | "network" | "volume" | "node" | "swarm"
    ident: str                # engine id (a volume's name)
    name: str
    run: str                  # value of org.testbed.run
    managed: str = ""         # value of org.testbed.managed
    running: bool = False     # containers: running now
    created: float = 0.0      # Unix time
    stack: str = ""           # the swarm stack that made it

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def api(timeout: float = SCAN_TIMEOUT) -> Optional[Any]:
    """A low-level client of the local engine, or None (no SDK, no socket, no answer)."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(SOCKET):
        return None
    try:
        import docker
        client = docker.APIClient(base_url=os.environ.get("DOCKER_HOST", f"unix://{SOCKET}"),
                                  timeout=timeout, version="auto")
        client.ping()
        return client
    except Exception:   # noqa: BLE001  the SDK raises several families; all mean "no engine"
        return None


def scan(client: Optional[Any] = None) -> list[LabelledObject]:
    """Labelled containers, networks and volumes that may be removed (see the docstring)."""
    client = client or api()
    if client is None:
        return []
    found: list[LabelledObject] = []
    try:
        for c in client.containers(all=True, filters={"label": LABEL_RUN}):
            found.append(_object("container", c["Id"], c["Names"][0].lstrip("/"), c["Labels"],
                                 c.get("State") == "running", float(c.get("Created", 0))))
        for n in client.networks(filters={"label": LABEL_RUN}):
            found.append(_object("network", n["Id"], n["Name"], n["Labels"], False,
                                 _unix_time(n.get("Created", ""))))
        for v in client.volumes(filters={"label": LABEL_RUN}).get("Volumes") or []:
            found.append(_object("volume", v["Name"], v["Name"], v["Labels"], False,
                                 _unix_time(v.get("CreatedAt", ""))))
    except Exception:   # noqa: BLE001  engine went away mid-scan: nothing reliable to act on
        return []
    found.extend(_swarm_objects(client))
    young = time.time() - COMPOSE_GRACE
    live = {o.run for o in found if o.managed in ("compose", "stack")
            and (o.running or o.created > young)}
    stacks = _deployed_stacks(client)
    return [o for o in found
            if not (o.managed in ("compose", "stack") and o.run in live)
            and not (o.managed == "stack" and o.stack in stacks)]


def _deployed_stacks(client: Any) -> set[str]:
    """Namespaces of the swarm stacks that have services now (none outside a swarm)."""
    try:
        services = client.services(filters={"label": STACK_LABEL})
    except Exception:   # noqa: BLE001  not a swarm manager: no stacks here
        return set()
    return {(svc["Spec"].get("Labels") or {}).get(STACK_LABEL, "") for svc in services}


def _swarm_objects(client: Any) -> list[LabelledObject]:
    """The labelled swarm this engine manages, and its labelled nodes (none elsewhere)."""
    try:
        swarm = client.inspect_swarm()
    except Exception:   # noqa: BLE001  not in a swarm, or not a manager
        return []
    found = []
    labels = (swarm.get("Spec") or {}).get("Labels") or {}
    if LABEL_RUN in labels:
        found.append(_object("swarm", swarm["ID"], "swarm", labels, False,
                             _unix_time(swarm.get("CreatedAt", ""))))
    try:
        nodes = client.nodes()
    except Exception:   # noqa: BLE001  the manager went away mid-scan
        return found
    for n in nodes:
        labels = n.get("Spec", {}).get("Labels") or {}
        if LABEL_RUN in labels:
            found.append(_object("node", n["ID"], n["Description"]["Hostname"], labels,
                                 n["Status"]["State"] == "ready",
                                 _unix_time(n.get("CreatedAt", ""))))
    return found


def _object(kind: str, ident: str, name: str, labels: Optional[dict[str, str]],
            running: bool, created: float) -> LabelledObject:
    labels = labels or {}
    stack = labels.get(STACK_LABEL, "")
    managed = "stack" if stack else labels.get(LABEL_MANAGED, "")
    return LabelledObject(kind, ident, name, labels[LABEL_RUN], managed, running, created,
                          stack)


def _unix_time(text: str) -> float:
    """Seconds since the epoch of the engine's RFC 3339 time (nanoseconds dropped)."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return 0.0
    zone = "+00:00" if m.group(2) == "Z" else m.group(2)
    return datetime.fromisoformat(m.group(1) + zone).timestamp()


def remove(objects: list[LabelledObject], client: Optional[Any] = None) -> list[str]:
    """Remove ``objects`` (containers, then networks, then volumes); returns the problems."""
    if not objects:
        return []
    client = client or api(timeout=REMOVE_TIMEOUT)
    if client is None:
        return [f"{len(objects)} Docker objects left: the engine does not answer"]
    import docker.errors
    problems = []
    order = {"container": 0, "node": 1, "network": 2, "volume": 3, "swarm": 4}
    for obj in sorted(objects, key=lambda o: order[o.kind]):
        try:
            if obj.kind == "container":
                client.remove_container(obj.ident, force=True, v=True)
            elif obj.kind == "node":
                client.remove_node(obj.ident, force=True)
            elif obj.kind == "network":
                remove_network(client, obj.ident)
            elif obj.kind == "volume":
                client.remove_volume(obj.ident, force=True)
            else:
                problems.extend(leave_swarm(client, obj.run))
        except docker.errors.NotFound:
            pass
        except Exception as exc:   # noqa: BLE001  report it, keep removing the rest
            problems.append(f"{obj}: {exc}")
    return problems


def leave_swarm(client: Any, run: str) -> list[str]:
    """Leave the swarm run ``run`` made, then remove all that is still labelled ``run``.

    Leaving as the last manager ends the swarm and the stacks it held, whose objects the
    scan had left out as alive; returns the problems met.
    """
    import docker.errors
    labels = (client.inspect_swarm().get("Spec") or {}).get("Labels") or {}
    client.leave_swarm(force=True)
    f = {"label": f"{LABEL_RUN}={run}"}
    problems = []
    steps: list[tuple[str, Any]] = (
        [(c["Id"], lambda i: client.remove_container(i, force=True, v=True))
         for c in client.containers(all=True, filters=f)]
        + [(n["Id"], lambda i: remove_network(client, i)) for n in client.networks(filters=f)]
        + [(v["Name"], lambda i: client.remove_volume(i, force=True))
           for v in client.volumes(filters=f).get("Volumes") or []])
    if labels.get(LABEL_GWBRIDGE) == "made":
        steps.append((GWBRIDGE, lambda i: remove_network(client, i)))
    for ident, step in steps:
        try:
            step(ident)
        except docker.errors.NotFound:
            pass
        except Exception as exc:   # noqa: BLE001  report it, keep removing the rest
            problems.append(f"{ident} (after leaving the swarm): {exc}")
    return problems


def remove_network(client: Any, ident: str, grace: float = ENDPOINT_GRACE) -> None:
    """Remove network ``ident`` (low-level API ``client``), past the engine's endpoint race.

    Docker 20.10 may refuse with "has active endpoints" although every container on
    the network was removed a moment before (moby/moby#42119; seen here when Ctrl-C
    lands during a loaded bring-up), and keeps a stale endpoint until it is
    disconnected by force. So what the engine still lists on the network is
    disconnected with ``force`` and the removal retried, for up to ``grace`` seconds;
    then the refusal is raised as it came. Only the testbed's own, labelled networks
    are passed here: whatever is attached to one is the run's.
    """
    import docker.errors
    deadline = time.monotonic() + grace
    while True:
        try:
            client.remove_network(ident)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "active endpoints" not in str(exc) or time.monotonic() > deadline:
                raise
        try:
            attached = client.inspect_network(ident).get("Containers") or {}
        except docker.errors.NotFound:
            return
        for ident_, endpoint in attached.items():
            try:   # a stale endpoint is named by its endpoint name, not a container id
                client.disconnect_container_from_network(endpoint.get("Name") or ident_,
                                                         ident, force=True)
            except docker.errors.APIError:
                pass   # already gone; the next removal attempt says whether that was all
        time.sleep(0.5)
