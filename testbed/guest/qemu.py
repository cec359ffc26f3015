"""How the kernel client's guest runs: the accelerator chosen by measuring, QEMU's argv.

**The accelerator.** ``/dev/kvm`` may exist and still not work (nested KVM on this
project's development machine hangs at boot). :func:`choose_accel` therefore boots the
image's kernel and initramfs under KVM with ``rdinit=/bin/busybox -- poweroff -f`` (the
kernel starts, runs busybox's poweroff, QEMU exits) and a timeout; if that does not
finish in time, or QEMU fails, it measures the same boot under TCG and uses TCG. The
choice and both figures are kept next to the image (``accel-<qemu version>.json``), so
the probe runs once per image and QEMU; ``TESTBED_GUEST_ACCEL=kvm|tcg`` overrides it.

**The command line** (:func:`qemu_argv`): no default devices, no display, no reboot
(the guest's power-off ends QEMU); the root disk is the cached image opened with
``snapshot=on`` (writes go to a temporary overlay, so many runs share one image); the
run's configuration is a second, read-only virtio disk; the NIC is virtio-net on a TAP
that the caller made, with every offload off (checksums computed, frames no larger
than the MTU, as the topology's links are configured); the metrics and the outcome
leave on two virtio serial ports written by QEMU straight into files of the run folder,
and the serial console (where the kernel prints hung-task warnings) into a third.

The memory floor :data:`MIN_MEMORY_MB` was measured (docs/kernel-client.md): below it
Debian's 6.1 kernel with iscsid and the agent does not get through a run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..schema import Unknown
from .image import GuestImage

QEMU = "qemu-system-x86_64"
MIN_MEMORY_MB = 112         # measured: see docs/kernel-client.md
PROBE_TIMEOUT_S = 20.0
KERNEL_POLICY = "gorman-3.6"   # what the guest's kernel does: the series is mainline since 3.6
ACCELS = ("kvm", "tcg")
# KVM's CPU models to try, in order: the host's, then the host's without the MSR that
# nested KVM refuses here (QEMU aborts on MSR 0x10a with the first)
KVM_CPUS = ("host", "host,-arch-capabilities")
NIC_OFFLOADS_OFF = ("csum", "guest_csum", "gso", "guest_tso4", "guest_tso6", "guest_ecn",
                    "guest_ufo", "host_tso4", "host_tso6", "host_ecn", "host_ufo")


@dataclass
class AccelChoice:
    """The accelerator to use and what the probe measured (seconds, None: not tried)."""

    accel: str
    kvm_boot_s: Optional[float]
    tcg_boot_s: Optional[float]
    detail: str
    cpu: Optional[str] = None     # -cpu for KVM (the TCG default model otherwise)


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def probe_boot(image: GuestImage, accel: str, cpu: Optional[str] = None,
               timeout: float = PROBE_TIMEOUT_S) -> tuple[Optional[float], str]:
    """(seconds from QEMU's start to the guest's power-off with a trivial init, "") or
    (None, why not): QEMU failed, or it did not get there within ``timeout`` (killed)."""
    argv = [QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-accel", accel, "-m", "128", "-smp", "1", *(["-cpu", cpu] if cpu else []),
            "-kernel", str(image.vmlinuz), "-initrd", str(image.initrd),
            "-append", "console=ttyS0 panic=-1 rdinit=/bin/busybox -- poweroff -f",
            "-serial", "null"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        return None, f"-cpu {cpu}: no power-off within {timeout:g}s"
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[0]
        return None, f"-cpu {cpu}: QEMU failed ({last})"
    return round(time.monotonic() - t0, 2), ""


def choose_accel(image: GuestImage) -> AccelChoice:
    """KVM if a short boot under it works here, else TCG; measured once, then kept."""
    forced = os.environ.get("TESTBED_GUEST_ACCEL")
    if forced in ACCELS:
        return AccelChoice(forced, None, None, "TESTBED_GUEST_ACCEL")
    cache = image.dir / f"accel-{qemu_version()}.json"
    try:
        return AccelChoice(**json.loads(cache.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    kvm, cpu, why = None, None, ["no /dev/kvm"]
    if os.path.exists("/dev/kvm"):
        why = []
        for cpu in KVM_CPUS:
            kvm, reason = probe_boot(image, "kvm", cpu)
            if kvm is not None:
                break
            why.append(reason)
    tcg, reason = probe_boot(image, "tcg", timeout=60.0)
    if kvm is not None:
        choice = AccelChoice("kvm", kvm, tcg, f"a boot under KVM took {kvm}s, under TCG "
                                              f"{tcg}s", cpu)
    elif tcg is not None:
        choice = AccelChoice("tcg", None, tcg, f"KVM: {'; '.join(why)}; a boot under TCG "
                                               f"took {tcg}s")
    else:
        from ..errors import EnvironmentProblem
        raise EnvironmentProblem(f"the guest kernel {image.vmlinuz} boots neither under KVM nor "
                                 f"TCG here (qemu {qemu_version()})")
    try:
        cache.write_text(json.dumps(asdict(choice)))
    except OSError:
        pass                        # a read-only cache: probe again next time
    return choice


@dataclass(frozen=True)
class GuestSpec:
    """One guest of a run: what QEMU needs to know."""

    image: GuestImage
    accel: str
    cpu: Optional[str]
    memory_mb: int
    tap: str
    mac: str
    config_disk: Path
    metrics: Path
    result: Path
    console: Path
    name: str                    # tb-<run>-client: QEMU's process name carries the run


def qemu_argv(g: GuestSpec) -> list[str]:
    nic = ",".join(["virtio-net-pci", "netdev=n0", f"mac={g.mac}",
                    *(f"{o}=off" for o in NIC_OFFLOADS_OFF)])
    return [QEMU, "-name", f"{g.name},process={g.name}", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-accel", g.accel,
            *(["-cpu", g.cpu] if g.cpu else []),
            "-m", str(g.memory_mb), "-smp", "1",
            "-kernel", str(g.image.vmlinuz), "-initrd", str(g.image.initrd),
            "-append", "console=ttyS0 net.ifnames=0 panic=-1 loglevel=4",
            "-drive", f"file={g.image.rootfs},if=virtio,format=raw,snapshot=on",
            "-drive", f"file={g.config_disk},if=virtio,format=raw,readonly=on",
            "-netdev", f"tap,id=n0,ifname={g.tap},script=no,downscript=no,vnet_hdr=off",
            "-device", nic,
            "-device", "virtio-serial-pci",
            "-chardev", f"file,id=metrics,path={g.metrics}",
            "-device", "virtserialport,chardev=metrics,name=metrics",
            "-chardev", f"file,id=result,path={g.result}",
            "-device", "virtserialport,chardev=result,name=result",
            "-chardev", f"file,id=console,path={g.console}",
            "-serial", "chardev:console"]


def config_disk(path: Path, config: dict[str, Any], files: dict[str, str]) -> Path:
    """The run's configuration disk: one JSON object padded to whole sectors."""
    data = json.dumps({"config": config, "files": files}).encode()
    path.write_bytes(data + b"\0" * (-len(data) % 4096 or 4096))
    return path


def scenario_rules(scenario: Any) -> Iterator[tuple[str, str]]:
    """What a scenario with ``client.kind: kernel`` must also satisfy.

    A field already reported as wrong (``schema.INVALID``) ends these checks only."""
    try:
        yield from _kernel_rules(scenario)
    except Unknown:
        return


def _kernel_rules(scenario: Any) -> Iterator[tuple[str, str]]:
    if scenario.client.kind != "kernel":
        return
    if scenario.client.policy != KERNEL_POLICY:
        yield ("client.policy", f"the kernel client's policy is its kernel's: Linux 6.1 has "
                                f"Gorman's series ({KERNEL_POLICY}), not {scenario.client.policy}")
    if scenario.backend != "mininet":
        yield ("backend", "client.kind: kernel runs on the mininet backend only")
    if scenario.storage != "iscsi":
        yield ("storage", "client.kind: kernel writes to the iSCSI LUN (storage: iscsi)")
    for f in scenario.faults or []:
        if f.kind == "client_restart":
            yield ("faults", "client_restart restarts the emulated client; a kernel client "
                             "is a guest (the target, link and bulk faults apply to it)")
        if f.when == "first_storage_drop":
            yield ("faults", "when: first_storage_drop needs the packet handler's count of "
                             "storage drops; a kernel client has none (use at_s or "
                             "free_at_min)")
    if scenario.client.memory_mb < MIN_MEMORY_MB:
        yield ("client.memory_mb", f"{scenario.client.memory_mb} is below the kernel client's "
                                   f"smallest memory, {MIN_MEMORY_MB} MiB (docs/kernel-client.md)")
