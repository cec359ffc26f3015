"""docs/architecture.md's map of the parts stays true to the tree.

The map is the fenced blocks of the section "## Map of the parts": one line per package
or module, its name first, then at least two spaces and what it is. Each level of
indentation (two spaces) is one folder deeper; a name ending in ``/`` is a folder.

- Every path the map names must exist (a file as a file, a folder as a folder).
- Every Python module of ``testbed/`` (``__init__.py`` and ``__pycache__`` aside) must be
  in the map, and so must every module of ``nodes/``, ``topologies/``, ``tests/support/``
  and ``bench/`` (``__init__.py`` and ``__main__.py`` aside). A module someone adds
  later fails here, by name, until the map has its line.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
SECTION = "## Map of the parts"
INDENT = 2
LINE = re.compile(r"^(?P<indent> *)(?P<name>\S+)(?: {2,}(?P<what>\S.*))?$")

# Folders whose Python modules must all be in the map, and the files left out.
REQUIRED = {
    "testbed": {"__init__.py"},
    "nodes": {"__init__.py", "__main__.py"},
    "topologies": {"__init__.py"},
    "tests/support": {"__init__.py"},
    "bench": {"__init__.py"},
}


def map_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every line inside the map section's fenced blocks."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == SECTION)
    except StopIteration:
        raise AssertionError(f"{DOC.relative_to(ROOT)}: no section {SECTION!r}") from None
    out, fenced = [], False
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if not fenced and line.startswith("## "):
            break
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced and line.strip():
            out.append((i + 1, line))
    return out


def map_entries(text: str) -> list[tuple[int, str]]:
    """(line number, path relative to the repository) of every entry of the map."""
    entries: list[tuple[int, str]] = []
    stack: list[str] = []          # the folders of the levels above the current line
    for number, line in map_lines(text):
        m = LINE.match(line)
        assert m, f"{DOC.name}:{number}: not 'name  description': {line!r}"
        indent = len(m["indent"])
        assert indent % INDENT == 0, f"{DOC.name}:{number}: indentation of {indent} spaces"
        level = indent // INDENT
        assert level <= len(stack), \
            f"{DOC.name}:{number}: {m['name']!r} is indented under no folder"
        assert m["what"], f"{DOC.name}:{number}: {m['name']!r} says nothing about what it is"
        del stack[level:]
        name = m["name"]
        entries.append((number, "".join(stack) + name))
        if name.endswith("/"):
            stack.append(name)
    return entries


def python_modules(folder: str, left_out: set[str]) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts and p.name not in left_out)


def test_the_map_is_there():
    entries = map_entries(DOC.read_text())
    assert len(entries) > 20, f"{DOC.name}: the map of the parts has {len(entries)} lines"


def test_every_path_in_the_map_exists():
    wrong = []
    for number, rel in map_entries(DOC.read_text()):
        path = ROOT / rel.rstrip("/")
        if rel.endswith("/") and not path.is_dir():
            wrong.append(f"{DOC.name}:{number}: {rel} is not a folder of the tree")
        elif not rel.endswith("/") and not path.is_file():
            wrong.append(f"{DOC.name}:{number}: {rel} is not a file of the tree"
                         + (" (a folder: write it with a trailing /)" if path.is_dir() else ""))
    assert not wrong, "the map names paths that do not exist:\n" + "\n".join(wrong)


def test_every_module_is_in_the_map():
    named = {rel for _, rel in map_entries(DOC.read_text())}
    missing = [module for folder, left_out in REQUIRED.items()
               for module in python_modules(folder, left_out) if module not in named]
    assert not missing, (
        f"modules missing from the map of the parts in docs/architecture.md (add one line "
        f"each, what it is, under its folder):\n" + "\n".join(missing))


def test_the_parser_reads_nesting():
    text = "\n".join([SECTION, "", "```", "a/          folder", "  b.py      module",
                      "  c/        sub", "    d.py    deep", "e.py        top", "```",
                      "## Next", "```", "x.py  not in the map", "```"])
    assert [rel for _, rel in map_entries(text)] == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e.py"]
