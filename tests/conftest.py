"""Shared pytest configuration.

Tests that need root, a real Mininet or a real tgtd are marked (see pyproject.toml).
On CI they all run (CI runs as root with everything installed); on a laptop without
root the root-only ones are skipped with a reason, never silently passed.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (run `make test` as root)")
    for item in items:
        if "root" in item.keywords or "mininet" in item.keywords:
            item.add_marker(skip)
