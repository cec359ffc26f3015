"""docs/kernels.md's table of policy against mechanism, generated from :mod:`testbed.mm.era`.

``python -m testbed.mm.kernels_doc`` rewrites the table between the two markers of
docs/kernels.md (the prose around it is written by hand); ``tests/mm/test_era.py``
fails when the file and the profiles disagree.
"""

from __future__ import annotations

import pathlib
import sys

from .era import markdown_table, policy_profiles

START = "<!-- era table: generated -->\n"
END = "<!-- end of era table -->"
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "kernels.md"


def table() -> str:
    """The table as the profiles say it should be."""
    return markdown_table(policy_profiles())


def documented(text: str) -> str:
    """The table as ``text`` (docs/kernels.md) has it."""
    return text[text.index(START) + len(START):text.index(END)]


def update(path: pathlib.Path = DOC) -> bool:
    """Put the generated table into ``path``; True if it changed."""
    text = path.read_text()
    new = text.replace(START + documented(text) + END, START + table() + END)
    if new == text:
        return False
    path.write_text(new)
    return True


if __name__ == "__main__":
    changed = update()
    print(f"{DOC}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
