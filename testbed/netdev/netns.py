"""Network namespaces, entered per thread.

On Linux a network namespace belongs to a *thread*, not to a process, and a file
descriptor keeps its namespace for life. So the packet handler can run inside any
process: :func:`enter` switches only the calling thread into a named namespace (the
ones ``ip netns add`` makes under ``/run/netns``), opens the TAP device and the raw
socket there, runs ``ip``/``nft`` as children (a child inherits the namespace of the
thread that forks it) and switches back. The descriptors then work from any thread.

The storage client already runs inside its host's namespace and passes ``netns=None``;
tests and the benchmark, which run in the root namespace, pass the name.

Python 3.11 has no ``os.setns`` (3.12 has), hence ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from typing import Iterator, Optional, Sequence

from .errors import NetdevError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


def _setns(fd: int, where: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetdevError(f"setns({where}): {os.strerror(err)}")


@contextlib.contextmanager
def enter(name: Optional[str]) -> Iterator[None]:
    """Run the body with the calling thread in namespace ``name`` (None: stay)."""
    if name is None:
        yield
        return
    path = os.path.join(NETNS_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetdevError(f"network namespace {name!r} ({path}): {exc.strerror}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, f"enter namespace {name!r}")
        try:
            yield
        finally:
            _setns(home, f"return from namespace {name!r}")
    finally:
        os.close(target)
        os.close(home)


def run(argv: Sequence[str], *, where: str, check: bool = True,
        timeout: float = 10.0, stdin: Optional[str] = None) -> str:
    """Run a command in the calling thread's namespace; return its stdout.

    ``where`` names the step for the error message (``attach tap0: move address``).
    """
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise NetdevError(f"{where}: command {argv[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise NetdevError(f"{where}: {' '.join(argv)} did not finish in {timeout} s") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetdevError(f"{where}: {' '.join(argv)} failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


def read_sysctl(path: str) -> str:
    """Read ``/proc/sys/<path>`` of the calling thread's namespace."""
    with open(os.path.join("/proc/sys", path)) as f:
        return f.read().strip()


def write_sysctl(path: str, value: str, *, where: str) -> None:
    """Write ``/proc/sys/<path>`` of the calling thread's namespace."""
    try:
        with open(os.path.join("/proc/sys", path), "w") as f:
            f.write(value)
    except OSError as exc:
        raise NetdevError(f"{where}: sysctl {path}={value}: {exc.strerror}") from None
