"""The project's typed exceptions.

Every error a user can cause (bad input, a missing tool, a dead peer) is raised as a
subclass of :class:`TestbedError`, whose message is one line that names the place
(file and line, parameter, host, PDU field). The CLI prints that line and exits
non-zero; anything else reaching the top is a bug.
"""


class TestbedError(Exception):
    """Base class of every error the testbed reports to a user."""

    __test__ = False  # not a pytest test class despite the name


class ConfigError(TestbedError):
    """A scenario, topology parameter or command-line value is wrong."""


class EnvironmentProblem(TestbedError):
    """The machine lacks something a run needs (root, a package, a kernel feature)."""


class TimeoutExpired(TestbedError):
    """A wait ran out of time."""
