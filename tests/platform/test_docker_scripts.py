"""scripts/docker-up.sh and docker-down.sh leave the machine's forwarding as they found it.

dockerd turns the root namespace's FORWARD policy to DROP (where it has to turn on
ip_forward) and bridge-nf-call-iptables to 1, and leaves both after it stops; plain
`mn` then loses every frame. docker-up.sh keeps the two settings as they were and
docker-down.sh puts them back, after stopping exactly the dockerd it started.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import NF, ROOT, docker_answers, forward_policy, sh

pytestmark = [pytest.mark.root, pytest.mark.docker]


def script(name: str, pidfile: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_RUN"}
    return subprocess.run([str(ROOT / "scripts" / name), pidfile], env=env,
                          capture_output=True, text=True, timeout=120)


def test_docker_down_puts_forwarding_back(tmp_path):
    if docker_answers():
        pytest.skip("a dockerd runs already: not ours to start and stop")
    had_nf = NF.exists()                # br_netfilter: dockerd loads it if it is not
    saved = forward_policy(), (NF.read_text().strip() if had_nf else None)
    pidfile = str(tmp_path / "dockerd.pid")
    try:
        sh("iptables", "-P", "FORWARD", "ACCEPT")
        if had_nf:
            NF.write_text("0")
        up = script("docker-up.sh", pidfile)
        assert up.returncode == 0, up.stderr
        assert docker_answers()
        sh("iptables", "-P", "FORWARD", "DROP")     # as dockerd sets it on a new machine
        NF.write_text("1")
        down = script("docker-down.sh", pidfile)
        assert down.returncode == 0, down.stderr
        assert not docker_answers()
        # br_netfilter absent before: no bridged frame met iptables, which 0 restores
        assert (forward_policy(), NF.read_text().strip()) == ("ACCEPT", "0")
        assert not os.path.exists(pidfile) and not os.path.exists(pidfile + ".net")
    finally:
        if os.path.exists(pidfile):
            script("docker-down.sh", pidfile)
        sh("iptables", "-P", "FORWARD", saved[0])
        if saved[1] is not None:
            NF.write_text(saved[1])
