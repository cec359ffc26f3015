"""The grading library's errors: the message is what a student or instructor reads."""

from __future__ import annotations

from ..errors import TestbedError


class LabError(TestbedError):
    """A lab cannot be found, started or graded (the message names the lab or folder)."""


class CheckFailed(TestbedError):
    """One grader check failed; the message is the sentence shown to the student."""
