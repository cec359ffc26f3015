"""The kernel client's pieces that need no guest: the image's inputs and cache key, the
initramfs's module order, QEMU's command line, the configuration disk, the scenario
rules of ``client.kind: kernel``."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from testbed import scenario
from testbed.errors import EnvironmentProblem
from testbed.guest import image, qemu
from testbed.guest.node import kernel_horizon, open_iscsi_settings, sysctls
from testbed.mm import pattern
from testbed.schema import SchemaError

BASE = image.BuildInputs("linux-image-6.1.0-56-amd64", "6.1.192-2", files_sha256="ab" * 32)


def test_the_key_names_the_kernel_and_changes_with_every_input():
    key = BASE.key()
    assert key.startswith("linux-image-6.1.0-56-amd64_6.1.192-2-")
    assert BASE.key() == image.BuildInputs(**dataclasses.asdict(BASE)).key()
    changed = [dataclasses.replace(BASE, kernel_version="6.1.193-1"),
               dataclasses.replace(BASE, kernel_package="linux-image-6.1.0-57-amd64"),
               dataclasses.replace(BASE, suite="trixie"),
               dataclasses.replace(BASE, packages=BASE.packages + ("fio",)),
               dataclasses.replace(BASE, initramfs_modules=("virtio_pci",)),
               dataclasses.replace(BASE, files_sha256="cd" * 32),
               dataclasses.replace(BASE, builder=BASE.builder + 1)]
    keys = {c.key() for c in changed}
    assert key not in keys and len(keys) == len(changed)


def test_the_files_digest_follows_every_file_copied_into_the_image():
    files = image.guest_files()
    assert {"sbin/tb-init", "opt/testbed/boot.py"} <= set(files)
    digest = image.files_digest(files)
    for name in files:
        edited = dict(files, **{name: files[name] + b"\n"})
        assert image.files_digest(edited) != digest, name
    assert image.files_digest(dict(reversed(list(files.items())))) == digest


def test_the_guest_gets_the_same_page_patterns_as_the_emulated_client():
    src = image.run_files()["tbpattern.py"]
    assert "from .zone" not in src
    ns: dict = {"__name__": "tbpattern"}
    exec(compile(src, "tbpattern.py", "exec"), ns)
    for seed, name, off, n in ((1, "writer0-0", 0, 4096), (7, "mmap_writer0-1", 12345, 70000)):
        fid = pattern.file_id(name)
        assert ns["file_id"](name) == fid
        assert ns["pattern_bytes"](seed, fid, off, n) == pattern.pattern_bytes(seed, fid, off, n)


def test_module_order_puts_dependencies_first_once():
    dep = ("kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n"
           "kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n"
           "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko\n"
           "kernel/drivers/virtio/virtio_ring.ko:\n"
           "kernel/crypto/crc32c_generic.ko:\n")
    order = image.module_order(dep, ("virtio_blk", "crc32c-generic", "ext4"))
    assert order == ["kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/block/virtio_blk.ko",
                     "kernel/crypto/crc32c_generic.ko", "kernel/lib/crc16.ko",
                     "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/fs/ext4/ext4.ko"]
    with pytest.raises(image.ImageBuildError, match="no module nbd"):
        image.module_order(dep, ("nbd",))


def test_a_missing_tool_is_named_with_its_package(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(image.shutil, "which", lambda t: None if t == "cpio" else real(t))
    monkeypatch.setattr(image.Path, "exists", lambda self: False)
    with pytest.raises(EnvironmentProblem, match=r"cpio not found.*apt-get install cpio"):
        image.check_tools(("cpio",))


def test_an_incomplete_image_folder_is_not_used(tmp_path):
    assert image.GuestImage.load(tmp_path) is None
    (tmp_path / "image.json").write_text(json.dumps({"kernel_release": "6.1.0-56-amd64"}))
    for name in ("vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    assert image.GuestImage.load(tmp_path) is None          # no rootfs.img: a killed build
    (tmp_path / "rootfs.img").write_bytes(b"x")
    assert image.GuestImage.load(tmp_path).kernel_release == "6.1.0-56-amd64"


def spec(tmp_path: Path, accel: str = "tcg", cpu=None) -> qemu.GuestSpec:
    return qemu.GuestSpec(image=image.GuestImage(tmp_path, "6.1.0-56-amd64"), accel=accel, cpu=cpu,
                          memory_mb=128, tap="tbtap0", mac="02:00:00:00:00:01",
                          config_disk=tmp_path / "cfg.img", metrics=tmp_path / "m.ndjson",
                          result=tmp_path / "r.ndjson", console=tmp_path / "console.log",
                          name="tb-0123abcd-client")


def test_qemu_argv_shares_the_image_and_streams_to_files(tmp_path):
    argv = qemu.qemu_argv(spec(tmp_path))
    line = " ".join(argv)
    assert argv[argv.index("-m") + 1] == "128" and argv[argv.index("-accel") + 1] == "tcg"
    assert f"file={tmp_path}/rootfs.img,if=virtio,format=raw,snapshot=on" in argv
    assert f"file={tmp_path}/cfg.img,if=virtio,format=raw,readonly=on" in argv
    assert "ifname=tbtap0,script=no" in line and "mac=02:00:00:00:00:01" in line
    assert all(f"{o}=off" in line for o in qemu.NIC_OFFLOADS_OFF)
    assert "name=metrics" in line and "name=result" in line and "-no-reboot" in argv
    assert "process=tb-0123abcd-client" in line and "-cpu" not in argv
    kvm = qemu.qemu_argv(spec(tmp_path, "kvm", "host"))
    assert kvm[kvm.index("-cpu") + 1] == "host"


def test_the_configuration_disk_is_whole_sectors_of_json(tmp_path):
    path = qemu.config_disk(tmp_path / "cfg.img", {"ip": "10.0.0.1/24"}, {"a.py": "print(1)"})
    raw = path.read_bytes()
    assert len(raw) % 4096 == 0 and raw.endswith(b"\0")
    assert json.loads(raw.rstrip(b"\0")) == {"config": {"ip": "10.0.0.1/24"},
                                             "files": {"a.py": "print(1)"}}


def test_the_scenario_knobs_become_the_kernels_sysctls():
    s = scenario.load("contention", ["client.kind=kernel", "client.memory_mb=128",
                                     "client.min_free_kbytes=2048", "client.dirty_writeback_ms=700"])
    got = sysctls(s.client)
    assert got["vm.dirty_ratio"] == 40 and got["vm.dirty_background_ratio"] == 10
    assert got["vm.min_free_kbytes"] == 2048 and got["vm.dirty_writeback_centisecs"] == 70
    assert got["vm.dirty_expire_centisecs"] == 300 and got["kernel.hung_task_timeout_secs"] == 4
    assert "vm.min_free_kbytes" not in sysctls(scenario.load("contention").client)


def test_client_kind_defaults_to_emulated_and_kernel_has_its_rules():
    assert scenario.load("baseline").client.kind == "emulated"
    with pytest.raises(SchemaError) as e:
        scenario.load("contention", ["client.kind=kernel", "backend=docker", "storage=local",
                                     "client.policy=none"])
    text = str(e.value)
    assert f"client.memory_mb: 32 is below the kernel client's smallest memory, " \
           f"{qemu.MIN_MEMORY_MB} MiB" in text
    assert "backend: client.kind: kernel runs on the mininet backend only" in text
    assert "storage: client.kind: kernel writes to the iSCSI LUN" in text
    assert "client.policy: the kernel client's policy is its kernel's" in text
    with pytest.raises(SchemaError, match="client.kind: 'vm' is not one of emulated, kernel"):
        scenario.load("baseline", ["client.kind=vm"])


def test_a_kernel_client_takes_the_faults_that_need_no_emulated_client(tmp_path):
    """Target, link and bulk faults act outside the client, so they apply to the guest;
    restarting the emulated client, or a trigger on the handler's storage drops, do not."""
    path = tmp_path / "k.yaml"
    kernel = ("name: k\nclient: {kind: kernel, memory_mb: 128, "
              "workloads: [{kind: writer, total_mb: 16}]}\n")
    path.write_text(kernel + "faults: [{kind: target_pause, at_s: 5, for_s: 3},\n"
                    "         {kind: link_down, host: client, when: free_at_min, for_s: 1}]\n")
    assert len(scenario.load(str(path)).faults) == 2
    path.write_text(kernel + "faults: [{kind: client_restart, at_s: 5},\n"
                    "         {kind: bulk_crash, host: bulk1, when: first_storage_drop}]\n")
    with pytest.raises(SchemaError) as e:
        scenario.load(str(path))
    assert "client_restart restarts the emulated client" in str(e.value)
    assert "first_storage_drop needs the packet handler's count" in str(e.value)


def test_status_says_whether_the_image_for_the_current_inputs_is_built(tmp_path):
    ok, detail = image.status(cache=tmp_path)
    assert not ok and "not built yet" in detail and image.current_inputs().key() in detail
    folder = tmp_path / image.current_inputs().key()
    folder.mkdir()
    (folder / "image.json").write_text(json.dumps({"kernel_release": "6.1.0-56-amd64"}))
    for name in ("vmlinuz", "initrd.img", "rootfs.img"):
        (folder / name).write_bytes(b"x")
    assert image.status(cache=tmp_path) == (True, f"guest image 6.1.0-56-amd64 in {folder}")


def test_the_initiator_timeouts_become_open_iscsis_node_settings():
    s = scenario.load("contention", ["client.kind=kernel", "client.memory_mb=128",
                                     "initiator.command_timeout_s=7.5",
                                     "initiator.noop_out_interval_s=0"])
    got = open_iscsi_settings(s.initiator)
    assert got["scsi_timeout_s"] == 8                                      # rounded up
    assert got["node"]["node.conn[0].timeo.noop_out_interval"] == 0        # pings off
    assert got["node"]["node.conn[0].timeo.login_timeout"] == \
        math.ceil(s.initiator.login_timeout_s)
    assert got["node"]["node.session.timeo.replacement_timeout"] == 120    # open-iscsi's


def test_the_kernels_recovery_horizon_is_detection_then_the_replacement_timeout():
    """The later of the command timeout and the pings finds the connection dead; the
    session is then retried for the replacement timeout, after which its commands fail."""
    s = scenario.load("contention", ["client.kind=kernel", "client.memory_mb=128",
                                     "initiator.command_timeout_s=7.5",
                                     "initiator.noop_out_interval_s=5",
                                     "initiator.noop_out_timeout_s=4",
                                     "initiator.replacement_timeout_s=20"])
    h = kernel_horizon(s.initiator)
    assert (h.detect_s, h.reinstatement_s, h.seconds) == (9.0, 20.0, 29.0)
    pings_off = scenario.load("contention", ["client.kind=kernel", "client.memory_mb=128",
                                             "initiator.noop_out_interval_s=0"])
    assert kernel_horizon(pings_off.initiator).seconds == 30 + 120
