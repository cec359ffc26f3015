"""Shared pytest configuration.

Tests that need root, a real Mininet or a real tgtd are marked (see pyproject.toml).
On CI they all run (CI runs as root with everything installed); on a laptop without
root the root-only ones are skipped with a reason, never silently passed.
"""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def results_db(tmp_path_factory):
    """Runs the tests make (and the ``testbed`` commands they start, which inherit the
    environment) are recorded in a results database of the session's own, never in
    the working tree's ``runs/results.db``."""
    path = tmp_path_factory.getbasetemp() / "results.db"
    old = os.environ.get("TESTBED_RESULTS_DB")
    os.environ["TESTBED_RESULTS_DB"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TESTBED_RESULTS_DB", None)
    else:
        os.environ["TESTBED_RESULTS_DB"] = old


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (run `make test` as root)")
    for item in items:
        if "root" in item.keywords or "mininet" in item.keywords:
            item.add_marker(skip)
