"""The grading library's errors: the message is what a student or instructor reads."""

from __future__ import annotations

from ..errors import TestbedError


class LabError(TestbedError):
    """A lab cannot be found, started or graded (the message names the lab or folder)."""


class CheckFailed(TestbedError):
    """One grader check failed; the message is the sentence shown to the student.

    The sentence names the answer's key, what it was compared with and the tolerance,
    never a measured or expected figure (a student who wrote zeros must not be able to
    copy the figures back from the grader). ``values`` says what was written and what was
    measured, for an instructor (``testbed lab check --show-values``). ``credit`` is the
    fraction of the check's points earned all the same (a mapping with some entries
    right), 0 by default.
    """

    def __init__(self, sentence: str, values: str = "", credit: float = 0.0):
        super().__init__(sentence)
        self.values = values
        self.credit = min(max(float(credit), 0.0), 1.0)


class NotGradedHere(TestbedError):
    """A check whose key (a multiple-choice answer) is only in the instructor's copy."""


class NotApplicable(TestbedError):
    """A check with nothing to read in the student's runs (questions about a lockup when
    no run locked up, and the student said so): it passes, with this sentence."""
