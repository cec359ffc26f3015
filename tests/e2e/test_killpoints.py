"""Kill points, a few of the campaign's (tests/support/killpoints.py; all 20 with
``make killpoints``): ``testbed run`` SIGKILLed in each step, then ``testbed clean``,
leaves nothing of the run, and its folder readable; Ctrl-C leaves nothing without a
clean and the folder marked ``interrupted``."""

from __future__ import annotations

import pytest

from tests.e2e.machine import snapshot
from tests.platform.conftest import assert_nothing_left, assert_untouched
from tests.support import killpoints

pytestmark = [pytest.mark.mininet, pytest.mark.root, pytest.mark.tgtd, pytest.mark.timeout(300)]


@pytest.mark.parametrize("how,point", [
    ("sigkill", "netns"), ("sigkill", "target-ready"), ("sigkill", "t1"),
    ("sigkill", "verify"), ("ctrl-c", "bulk-ready"), ("ctrl-c", "t1")])
def test_killed_at_a_point_leaves_nothing(tmp_path, how, point):
    before = snapshot()
    o = killpoints.run_point(killpoints.BY_NAME[point], how, tmp_path)
    assert o.hit, f"the run ended before {point}: see {tmp_path}/{how}-{point}.log"
    assert o.run_id is not None
    if how == "sigkill":
        assert o.exit_code == -9
        # the kill left the run's namespaces or processes, and its state: clean had work
        assert o.before_clean["netns"] or o.before_clean["processes"], o.before_clean
        assert o.before_clean["state_files"], o.before_clean
    else:
        assert o.exit_code == 130 and o.status == "interrupted"   # early: the CLI handles it
    assert o.total_left == 0, o.line()
    assert not o.problems, o.line()
    assert_nothing_left(o.run_id)
    assert_untouched(before, snapshot())


def test_the_counter_sees_a_live_run(tmp_path):
    """count_left is not blind: a run's namespaces, links, qdiscs, processes, tgtd socket
    and state are counted while it runs (then it is stopped with Ctrl-C)."""
    seen: dict[str, int] = {}

    def count_then_stop(w: killpoints.Watch) -> bool:
        if w.event("target.ndjson", "ready") and not seen:
            seen.update(killpoints.count_left(w.run_id, w.out))
        return bool(seen)
    point = killpoints.Point("counted", "nodes", count_then_stop, "counted while serving")
    o = killpoints.run_point(point, "ctrl-c", tmp_path)
    assert o.hit and o.total_left == 0 and not o.problems, o.line()
    for kind in ("netns", "links", "bridges", "qdiscs", "processes", "mounts",
                 "tgtd_sockets", "state_files"):
        assert seen[kind] > 0, (kind, seen)
