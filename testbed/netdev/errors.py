"""Typed errors of the packet handler (all :class:`testbed.errors.TestbedError`)."""

from __future__ import annotations

from ..errors import ConfigError, TestbedError


class NetdevError(TestbedError):
    """A device, namespace or command step of the packet handler failed."""


class AttachError(NetdevError):
    """The wire could not be attached to (or restored from) the TAP device."""


class HandlerConfigError(ConfigError):
    """A bad parameter was given to the packet handler (names the parameter)."""
