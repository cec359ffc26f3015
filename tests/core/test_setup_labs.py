"""make setup-labs: a student's install is a subset of the full one, without Docker or
the kernel client's guest builder, and its Python extra is enough for the graders."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def packages(mode: list[str]) -> list[str]:
    """The Debian packages scripts/setup.sh would install, read by bash itself."""
    script = (f"set -- {' '.join(mode)}; " + "source <(sed -n '/^LABS_PACKAGES=/,/^fi$/p' "
              f"{ROOT / 'scripts/setup.sh'}); echo \"${{APT_PACKAGES[@]}}|$EXTRAS\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    apt, extras = out.strip().split("|")
    return apt.split() + [f"extras:{extras}"]


@pytest.mark.cli              # reads the project's own setup script with bash
def test_the_labs_install_is_a_subset_without_docker_or_the_guest():
    full, labs = packages([]), packages(["--labs"])
    assert set(labs) - {"extras:labs"} < set(full) - {"extras:test,docker,results"}
    for heavy in ("docker.io", "docker-compose", "debootstrap", "qemu-system-x86"):
        assert heavy in full and heavy not in labs
    for need in ("mininet", "tgt", "iproute2", "tcpdump"):
        assert need in labs


def test_the_labs_extra_holds_what_the_graders_import():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=]", d)[0] for d in extras["labs"]}
    assert {"pytest", "pytest-timeout"} <= names
    assert names <= {re.split(r"[<>=]", d)[0] for d in extras["test"]}
