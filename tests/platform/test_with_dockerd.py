"""The same checks while dockerd runs (FORWARD DROP, bridge-nf-call-iptables=1).

dockerd drops forwarded traffic in the root namespace and makes bridged frames pass
iptables; both settings stay after it stops. (It sets the FORWARD policy only on a
machine where it has to turn on ip_forward; the module sets both itself, as dockerd
leaves them, and puts them back afterwards.) The testbed's bridge lives in its own
namespace, so connectivity, shaping and clean-up must not notice.
"""

import pytest

from testbed.backends.base import ContentionParams
from testbed.backends.mininet import MininetBackend
from testbed.runctx import RunContext

from . import test_leftovers as leftovers
from .conftest import docker_answers, after_docker_state, assert_nothing_left, sh
from .test_mininet import pingall

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.docker]


@pytest.fixture(scope="module", autouse=True)
def docker_forwarding(dockerd):
    with after_docker_state():
        yield


def test_docker_settings_are_in_force():
    """What every test here runs under: dockerd answering, and its forwarding settings."""
    assert docker_answers()
    assert "-P FORWARD DROP" in sh("iptables", "-S", "FORWARD")
    assert open("/proc/sys/net/bridge/bridge-nf-call-iptables").read().strip() == "1"


def test_pingall(tmp_path):
    with RunContext.create(base_dir=tmp_path, name="docker") as run:
        net = MininetBackend(run).up(ContentionParams(n=3, bw_client=20, bw=50))
        assert pingall(net) == []
    assert_nothing_left(run.id)


def test_normal_stop(tmp_path, bystanders):
    leftovers.check_normal_stop(tmp_path, bystanders)


def test_sigint_during_bring_up(tmp_path, bystanders):
    leftovers.check_sigint_during_bring_up(tmp_path, bystanders, "netns")


def test_sigkill_then_clean(tmp_path, bystanders):
    leftovers.check_sigkill_then_clean(tmp_path, bystanders)
