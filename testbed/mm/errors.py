"""Typed errors of the emulated memory manager.

The emulated machine may lock up; the emulator must not. Every sleep inside
``testbed.mm`` (a sleeping allocation, a dirty-throttle pause, a wait for an
in-flight slot) is made of bounded steps that check whether the machine is
stopping, and raises :class:`MachineStopped` when it is, so threads unwind.
"""

from __future__ import annotations

from ..errors import TestbedError


class MMError(TestbedError):
    """Misuse of the memory manager (double free, negative reserve, unknown device)."""


class MachineStopped(MMError):
    """The emulated machine is stopping: a sleeping task gives up its wait."""


class NoSpace(MMError):
    """The block device has no room left for a file's next extent (ENOSPC)."""
