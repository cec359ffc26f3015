"""The students' disk image (``make vm-image``, testbed/guest/vmimage.py).

Without a guest: the rule that picks Debian's or PyPI's package for each dependency,
the package list kept in step with ``make setup-labs``, the cache keys, the partition
table, QEMU's command line, and the errors of bad input.

With one (root, slow; the image is built on first use and cached): the image boots by
its own bootloader under QEMU (TCG, the NIC on restricted user-mode networking: the
guest reaches nothing but QEMU's DHCP), root is logged in on the serial console, the
student copy holds no instructor file, what a run imports imports, and ``testbed lab check 2`` grades a right and
a wrong hand-in shared from the host over 9p: the right one passes with full marks,
the wrong one fails with the same sentences as on the host and no figure.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
from packaging.requirements import Requirement

from testbed import grading
from testbed.guest import image, vmimage

SETUP = Path(vmimage.ROOT) / "scripts" / "setup.sh"


def test_the_upstream_version_drops_epoch_revision_and_repack():
    assert vmimage.upstream_version("1:1.24.2-1+deb12u1") == "1.24.2"
    assert vmimage.upstream_version("2.5.0+dfsg-2") == "2.5.0"
    assert vmimage.upstream_version("6.0-3+b2") == "6.0"
    assert vmimage.upstream_version("2.1.0") == "2.1.0"


def plan(reqs: list[str], debian: dict[str, str], venv: dict[str, str]) -> vmimage.PythonPlan:
    return vmimage.python_plan([Requirement(r) for r in reqs], debian.__getitem__, venv.get)


def test_debian_packages_unless_too_old_then_the_venvs_version_from_pypi():
    got = plan(["pyyaml>=6", "scipy>=1.15", "pytest>=7"],
               {"python3-yaml": "6.0-3+b2", "python3-scipy": "1.10.1-2",
                "python3-pytest": "7.2.1-2"},
               {"scipy": "1.17.1"})
    assert got.debian == ("python3-yaml", "python3-pytest")
    assert got.overlays == ("scipy==1.17.1",)


def test_a_dependency_without_a_debian_package_or_a_usable_version_is_named():
    with pytest.raises(vmimage.VmImageError, match=r"pyproject.toml: dependency 'leftpad' "
                                                   r"has no Debian package.*DEBIAN_PYTHON"):
        plan(["leftpad>=1"], {}, {})
    with pytest.raises(vmimage.VmImageError, match=r"scipy>=1.15 is newer than Debian's "
                                                   r"python3-scipy.*\.venv has 1.14.0"):
        plan(["scipy>=1.15"], {"python3-scipy": "1.10.1-2"}, {"scipy": "1.14.0"})


def test_every_dependency_of_the_project_and_the_graders_has_its_debian_package():
    reqs = vmimage.requirements()
    assert {"pytest", "scipy", "pyyaml"} <= {r.name.lower() for r in reqs}
    assert all(r.name.lower() in vmimage.DEBIAN_PYTHON for r in reqs)


def test_a_broken_pyproject_is_named_with_the_missing_key(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[project]\nname = 'x'\ndependencies = []\n")
    with pytest.raises(vmimage.VmImageError, match=rf"{bad}: no key 'optional-dependencies'"):
        vmimage.requirements(bad)
    bad.write_text("[project\n")
    with pytest.raises(vmimage.VmImageError, match=rf"{bad}: cannot read it"):
        vmimage.requirements(bad)


def test_the_image_has_every_package_make_setup_labs_installs_but_the_compilers():
    text = SETUP.read_text()
    m = re.search(r"LABS_PACKAGES=\(([^)]*)\)", text)
    assert m, f"{SETUP}: no LABS_PACKAGES=(...)"
    labs = set(m.group(1).split())
    assert labs - vmimage.SETUP_ONLY <= set(vmimage.VM_PACKAGES), \
        labs - vmimage.SETUP_ONLY - set(vmimage.VM_PACKAGES)


def test_pip_is_given_every_manylinux_tag_bookworm_runs():
    args = vmimage.wheel_platforms()
    tags = args[1::2]
    assert set(args[::2]) == {"--platform"}
    assert {"manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
            "manylinux2014_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags


def test_the_partitions_boot_first_root_aligned_after_it():
    script, root_start = vmimage.partition_table(98304, 400000)
    assert root_start % 2048 == 0 and root_start >= vmimage.BOOT_START + 98304
    assert "start=2048, size=98304, type=e, bootable" in script
    assert f"start={root_start}, size=400000, type=83" in script


def test_the_disk_key_follows_the_project_the_labs_and_the_system_files(monkeypatch):
    project = {"testbed/cli.py": b"print(1)\n"}
    key = vmimage.disk_key("base-k", project, "aa")
    assert key.startswith("base-k-disk-") and key == vmimage.disk_key("base-k", dict(project), "aa")
    others = {vmimage.disk_key("base-j", project, "aa"),
              vmimage.disk_key("base-k", {"testbed/cli.py": b"print(2)\n"}, "aa"),
              vmimage.disk_key("base-k", project, "bb")}
    monkeypatch.setattr(vmimage, "KERNEL_ARGS", vmimage.KERNEL_ARGS + " quiet")
    others.add(vmimage.disk_key("base-k", project, "aa"))
    assert key not in others and len(others) == 4


def test_the_cache_keeps_the_newest_disks_and_every_base(tmp_path):
    for i, name in enumerate(["k-disk-a", "k-disk-b", "k-disk-c"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / vmimage.DISK_NAME).write_bytes(b"x")
        (tmp_path / name / "vm.json").write_text("{}")
        os.utime(tmp_path / name / "vm.json", (1000 + i, 1000 + i))
    (tmp_path / "base-k").mkdir()
    (tmp_path / "j-disk-unfinished").mkdir()
    assert vmimage.prune_disks(tmp_path, keep=2) == [tmp_path / "k-disk-a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-k", "j-disk-unfinished",
                                                          "k-disk-b", "k-disk-c"]


def test_the_base_key_is_the_kernel_clients_rule_with_the_vms_inputs(monkeypatch):
    monkeypatch.setattr(image, "resolve_kernel", lambda: ("linux-image-6.1.0-56-amd64", "6.1.192-2"))
    p = vmimage.PythonPlan(("python3-yaml",), ("scipy==1.17.1",), ("scipy==1.17.1",))
    a = vmimage.base_inputs(p)
    assert a.packages == vmimage.VM_PACKAGES + ("python3-yaml",)
    assert a.initramfs_modules == vmimage.VM_MODULES and "ahci" in a.initramfs_modules
    b = vmimage.base_inputs(dataclasses.replace(p, overlays=("scipy==1.18.0",)))
    assert a.key() != b.key() != image.current_inputs().key()


def test_the_project_goes_in_without_tests_or_the_instructors_tree():
    files = vmimage.project_files()
    assert "testbed/cli.py" in files and "testbed/guest/vmimage.py" in files
    assert not [f for f in files if f.startswith(("tests/", "instructor/", "labs/", "bench/"))]


def test_the_student_copy_has_no_instructor_file_and_a_leak_is_found(tmp_path):
    labs = vmimage.student_labs(tmp_path / "course")
    assert (labs / "01-deadlock" / "README.md").is_file()
    assert vmimage.instructor_files(labs) == []
    (labs / "01-deadlock" / "solve.py").write_text("")
    (tmp_path / "course" / "instructor").mkdir()
    assert vmimage.instructor_files(tmp_path / "course") == ["instructor",
                                                              "labs/01-deadlock/solve.py"]


def test_qemu_boots_the_disk_by_its_bootloader_and_restricts_the_network(tmp_path):
    disk = tmp_path / vmimage.DISK_NAME
    argv = vmimage.qemu_argv(disk, share=tmp_path, network="restricted", snapshot=True,
                             serial_stdio=True, memory_mb=1024, cpus=1)
    line = " ".join(argv)
    assert "-kernel" not in argv and "-initrd" not in argv
    assert argv[argv.index("-cpu") + 1] == "max"          # the wheels' instructions
    assert f"file={disk},if=virtio,format=qcow2,snapshot=on" in argv
    assert "user,model=virtio-net-pci,restrict=on" in argv
    assert f"local,path={tmp_path},mount_tag=share,security_model=none" in line
    assert argv[argv.index("-serial") + 1] == "stdio" and "-nodefaults" in argv
    assert vmimage.qemu_argv(disk, network="none")[-2:] == ["-nic", "none"]
    with pytest.raises(vmimage.VmImageError, match="network: 'tap' is not one of"):
        vmimage.qemu_argv(disk, network="tap")
    with pytest.raises(vmimage.VmImageError, match="memory_mb: 256 is below"):
        vmimage.qemu_argv(disk, memory_mb=256)


def test_the_bootloader_names_the_root_by_label_and_systemd_as_init():
    cfg = vmimage.syslinux_cfg()
    assert f"tb.root=LABEL={vmimage.LABEL}" in cfg and "tb.init=/sbin/init" in cfg
    assert "console=ttyS0,115200" in cfg and "SERIAL 0 115200" in cfg
    init = (image.FILES / "initramfs-init.sh").read_text()
    assert "tb.root=*" in init and "findfs" in init and "root=/dev/vda" in init
    files = vmimage.system_files()
    assert f"LABEL={vmimage.LABEL} /" in files["etc/fstab"]
    assert "share /mnt/share 9p" in files["etc/fstab"] and "nofail" in files["etc/fstab"]


# -- the image, booted ---------------------------------------------------------------------

BOOT_TIMEOUT_S = 240.0       # QEMU's start to root's prompt, TCG
GRADE_TIMEOUT_S = 240.0      # one `testbed lab check` in the guest, TCG
POWEROFF_TIMEOUT_S = 60.0
LAB = 2


class SerialConsole:
    """The guest's serial console on QEMU's stdin and stdout: type, and wait for text."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log
        self.text = ""
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log, "ab") as log:
            while True:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                log.write(chunk)
                log.flush()
                with self.cond:
                    self.text += chunk.decode(errors="replace").replace("\r", "")
                    self.cond.notify_all()
                if not chunk:
                    return

    def type(self, line: str) -> int:
        with self.cond:
            mark = len(self.text)
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        return mark

    def expect(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self.cond:
            while True:
                m = rx.search(self.text, since)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = self.text[-1500:]
                    pytest.fail(f"no {pattern!r} on the guest's console within {timeout:g}s "
                                f"(QEMU {'exited' if self.proc.poll() is not None else 'runs'}); "
                                f"its last lines:\n{tail}")
                self.cond.wait(min(left, 1.0))

    def run(self, command: str, timeout: float) -> int:
        """Run ``command`` in the guest's shell; its exit status (the marker is computed
        by the shell, so the echoed command line does not match it)."""
        mark = self.type(f"{command}; echo TB-RC-$((100+$?))-END")
        return int(self.expect(r"TB-RC-(\d+)-END", timeout, mark).group(1)) - 100


@pytest.fixture(scope="module")
def vm_image(pytestconfig):
    if os.geteuid() != 0:
        pytest.skip("the image is built as root (debootstrap)")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(text: str) -> None:
        with capture.global_and_fixture_disabled():
            print(text, file=sys.stderr, flush=True)

    return vmimage.ensure_vm_image(say)


def host_grade(lab: grading.Lab, work: Path) -> list[str]:
    return [ln for ln in grading.check(lab, work).lines() if ln.lstrip().startswith("FAIL")]


@pytest.mark.root
@pytest.mark.slow
def test_the_image_boots_and_grades_a_lab_from_the_student_copy(tmp_path, vm_image):
    from tests.labs.test_graders import hand_in, zero_answers
    share = Path(tempfile.mkdtemp(prefix="testbed-vmshare-"))
    proc: Optional[subprocess.Popen] = None
    try:
        hand_in(share, LAB, "right")
        zero_answers(hand_in(share, LAB, "wrong"))
        course = vmimage.student_labs(tmp_path / "course")
        expected = host_grade(grading.get_lab(LAB, course), share / "wrong")
        assert expected, "the wrong hand-in fails on the host"
        argv = vmimage.qemu_argv(vm_image.disk, share=share, memory_mb=1024, cpus=1,
                                 network="restricted", snapshot=True, serial_stdio=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=open(tmp_path / "qemu.err", "wb"), start_new_session=True)
        con = SerialConsole(proc, tmp_path / "console.log")
        con.expect(r"root@testbed-vm:~# ", BOOT_TIMEOUT_S)
        boot_s = time.monotonic() - t0
        assert con.run("mountpoint -q /mnt/share && test -d /mnt/share/right", 30) == 0
        assert con.run("test ! -e /opt/testbed/instructor && "
                       "! find /opt/testbed -name solve.py -o -name key.yaml | grep -q .", 60) == 0
        # what a run imports: Debian's packages, and PyPI's over the too-old ones
        assert con.run("python3 -c 'import scipy.stats, matplotlib.pyplot, scapy.all, crc32c, "
                       "yaml, mininet.net, testbed.commands.run'", GRADE_TIMEOUT_S) == 0
        t1 = time.monotonic()
        right = con.run(f"cd /mnt/share && testbed lab check {LAB} right > right.txt 2>&1",
                        GRADE_TIMEOUT_S)
        grade_s = time.monotonic() - t1
        wrong = con.run(f"testbed lab check {LAB} wrong > wrong.txt 2>&1", GRADE_TIMEOUT_S)
        con.type("poweroff")
        proc.wait(timeout=POWEROFF_TIMEOUT_S)
        print(f"boot to prompt {boot_s:.0f}s, one lab check {grade_s:.0f}s, "
              f"in all {time.monotonic() - t0:.0f}s (TCG)")
        right_out = (share / "right.txt").read_text()
        wrong_out = (share / "wrong.txt").read_text()
        assert right == 0, right_out
        assert re.search(r"(\d+) of \1 checks passed", right_out), right_out
        assert wrong == 1, wrong_out
        got = [ln for ln in wrong_out.splitlines() if ln.lstrip().startswith("FAIL")]
        assert got == expected, wrong_out
        assert "values:" not in wrong_out and "you wrote" not in wrong_out
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        shutil.rmtree(share, ignore_errors=True)
    assert subprocess.run(["pgrep", "-f", str(vm_image.disk)], capture_output=True).stdout == b""
