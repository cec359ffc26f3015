"""The testbed's Docker labels, and finding and removing what carries them.

Every container, network and volume the testbed makes on a Docker engine carries
labels, the Docker counterpart of a run's tags (see :mod:`testbed.runctx`):

- ``org.testbed.run=<run id>``: the run it belongs to (the Docker backend: the run's
  8-hex-digit id; docker-compose.yml: ``$TESTBED_RUN``, default ``compose``);
- ``org.testbed.role=client|target|bulk``: the node it is (containers);
- ``org.testbed.managed=backend|compose|stack``: who made it.

:func:`scan` lists labelled objects through the Docker SDK, using the labels only:
names, images and everything unlabelled are never looked at. It leaves out what is
alive by construction: objects of a compose run while one of its containers still runs
(a ``docker-compose up`` in progress), and everything a swarm stack made (swarm would
start a removed task again; ``docker stack rm`` removes a stack). Whether a *backend*
run is alive is decided by :mod:`testbed.cleanup`, from the run's state file, as for
every other tag. :func:`remove` removes containers (with their anonymous volumes),
then networks, then volumes.

Without the Docker SDK, or with no engine answering, there is nothing labelled to
find: both functions do nothing, quickly (a short timeout), so ``testbed clean`` and
every run's start-up sweep cost nothing on a machine without Docker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

LABEL_RUN = "org.testbed.run"
LABEL_ROLE = "org.testbed.role"
LABEL_MANAGED = "org.testbed.managed"
SOCKET = "/var/run/docker.sock"
SCAN_TIMEOUT = 5.0        # seconds per engine request during a scan
REMOVE_TIMEOUT = 30.0     # seconds per removal (a container's processes are killed first)


@dataclass(frozen=True)
class LabelledObject:
    """A container, network or volume with the testbed's labels."""

    kind: str                 # "container" | "network" | "volume"
    ident: str                # engine id (a volume's name)
    name: str
    run: str                  # value of org.testbed.run
    managed: str = ""         # value of org.testbed.managed
    running: bool = False     # containers: running now

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
            labels = c.get("Labels") or {}
            found.append(LabelledObject("container", c["Id"], c["Names"][0].lstrip("/"),
                                        labels[LABEL_RUN], labels.get(LABEL_MANAGED, ""),
                                        c.get("State") == "running"))
        for n in client.networks(filters={"label": LABEL_RUN}):
            labels = n.get("Labels") or {}
            found.append(LabelledObject("network", n["Id"], n["Name"], labels[LABEL_RUN],
                                        labels.get(LABEL_MANAGED, "")))
        for v in client.volumes(filters={"label": LABEL_RUN}).get("Volumes") or []:
            labels = v.get("Labels") or {}
            found.append(LabelledObject("volume", v["Name"], v["Name"], labels[LABEL_RUN],
                                        labels.get(LABEL_MANAGED, "")))
    except Exception:   # noqa: BLE001  engine went away mid-scan: nothing reliable to act on
        return []
    live_compose = {o.run for o in found if o.managed == "compose" and o.running}
    return [o for o in found
            if o.managed != "stack" and not (o.managed == "compose" and o.run in live_compose)]


def remove(objects: list[LabelledObject], client: Optional[Any] = None) -> list[str]:
    """Remove ``objects`` (containers, then networks, then volumes); returns the problems."""
    if not objects:
        return []
    client = client or api(timeout=REMOVE_TIMEOUT)
    if client is None:
        return [f"{len(objects)} Docker objects left: the engine does not answer"]
    import docker.errors
    problems = []
    order = {"container": 0, "network": 1, "volume": 2}
    for obj in sorted(objects, key=lambda o: order[o.kind]):
        try:
            if obj.kind == "container":
                client.remove_container(obj.ident, force=True, v=True)
            elif obj.kind == "network":
                client.remove_network(obj.ident)
            else:
                client.remove_volume(obj.ident, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:   # noqa: BLE001  report it, keep removing the rest
            problems.append(f"{obj}: {exc}")
    return problems
