"""The checks a grader makes: a condition, or a stated figure against a measured one."""

from __future__ import annotations

from .errors import CheckFailed
from .readers import RunFolder

# -- checks ------------------------------------------------------------------------------

def expect(condition: bool, sentence: str) -> None:
    """Fail the check with ``sentence`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(sentence)


def expect_finished(run: RunFolder, again: str) -> None:
    """Fail unless ``run`` ran to its end; ``again`` tells the student what to rerun."""
    why = str(run.summary.get("status"))
    if run.summary.get("detail"):
        why += f": {run.summary['detail']}"
    expect(run.finished, f"{run.name} did not finish ({why}); {again}")


def within(stated: float, measured: float, rel: float = 0.0, abs_: float = 0.0) -> bool:
    """Is ``stated`` within ``rel`` (fraction) or ``abs_`` of ``measured``?"""
    return abs(stated - measured) <= max(abs_, rel * abs(measured))


def agrees(stated: float, measured: float, what: str, where: str,
           rel: float = 0.0, abs_: float = 0.0, unit: str = "") -> None:
    """A figure the student stated against the one in their own run folder."""
    if within(stated, measured, rel, abs_):
        return
    tol = []
    if rel:
        tol.append(f"{rel:.0%}")
    if abs_:
        tol.append(f"{abs_:g}{unit}")
    raise CheckFailed(f"{what}: you wrote {stated:g}{unit}, but {where} shows "
                      f"{_fmt(measured)}{unit} (tolerance {' or '.join(tol) or 'none'}); "
                      f"read it again from that run folder")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if isinstance(x, float) and x != int(x) else f"{x:g}"
