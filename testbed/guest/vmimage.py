"""The students' machine: one bootable disk image (qcow2) with the project and the labs.

``make vm-image`` (``python -m testbed.guest.vmimage``) builds it with the kernel
client's builder (:mod:`testbed.guest.image`): the same Debian kernel package, unpacked
the same way; the same ``debootstrap --variant=minbase`` of bookworm; the same busybox
initramfs, which here loads the disk drivers of QEMU, UTM and VirtualBox and mounts
the root partition by its label (``tb.root=LABEL=tbvm tb.init=/sbin/init`` on the
kernel's command line). What differs from the kernel client's guest is this module:

- **Packages** (:data:`VM_PACKAGES`): systemd as init, what ``make setup-labs``
  installs except the compilers (Mininet, tgt, the network tools), and the project's
  Python dependencies as Debian packages (:data:`DEBIAN_PYTHON`). A dependency whose
  bookworm version is older than ``pyproject.toml`` allows (scipy 1.10, matplotlib
  3.6) is installed over it from PyPI by pip's ``--target``, with its own dependencies,
  at the versions this machine's ``.venv`` runs (:func:`python_plan`): wheels only,
  nothing is compiled in the image.
- **The project**: the files git tracks of :data:`PROJECT_PATHS` in ``/opt/testbed``
  (on Python's path by a ``.pth`` file; the ``testbed`` command in ``/usr/local/bin``),
  and the labs as ``testbed lab export --student`` writes them: the student's machine holds
  nothing of ``instructor/`` (checked on the tree before it is packed,
  :func:`instructor_files`).
- **The system** (:func:`system_files`): root logs in on the console and the serial
  port without a password (a lab machine: the labs need root, and nothing listens on
  the network), DHCP on the first NIC (systemd-networkd), the host's folder shared
  with tag ``share`` (QEMU's ``-virtfs``, UTM's "VirtFS" sharing) mounted on
  ``/mnt/share`` when there is one. The distribution's tgtd service is off: a run
  starts its own.
- **The disk** (:func:`assemble_disk`): an MBR with syslinux's boot code, a FAT boot
  partition with syslinux, the kernel and the initramfs, and the ext4 root partition,
  written straight into the file (sfdisk, ``mkfs.fat --offset``, mtools and
  ``syslinux --offset``: no loop device, no mount), then ``qemu-img convert`` to a
  compressed qcow2. It boots by BIOS (QEMU's default, UTM's "legacy" boot,
  VirtualBox's default); there is no UEFI loader.

Two caches, each a folder named by its key and renamed into place only when complete
(as the kernel client's): the **base** (kernel, initramfs and the installed root tree;
keyed by the kernel package, the package lists, the pip overlays and this builder's
version), and the **disk** (keyed by the base and a digest of the project's files, the
student copy and the system files), which an edit of the project rebuilds from the base;
the newest :data:`KEEP_DISKS` disks are kept. Measured here (2 cores, shared): the base
79 s, a disk 56 s, the qcow2 286 MiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from ..errors import TestbedError
from . import image
from .image import ImageBuildError, Say
from .qemu import QEMU

ROOT = image.ROOT
CACHE_DIR = image.CACHE_DIR / "vm"
VM_BUILDER = 1                       # bump when the build steps change what they make
LABEL = "tbvm"                       # the root partition's ext4 label
SHARE_TAG = "share"                  # the 9p tag of the host's shared folder (UTM's)
SHARE_DIR = "/mnt/share"
PYTHON = "3.11"                      # bookworm's python3
GLIBC_MINOR = 36                     # bookworm's glibc 2.36: the newest manylinux it runs
DISK_NAME = "testbed-vm.qcow2"
SECTOR = 512
BOOT_START = 2048                    # sectors: the first partition at 1 MiB
BOOT_MB = 48                         # FAT: kernel (8 MiB), initramfs, syslinux
KEEP_DISKS = 2                       # disk images kept in the cache (the newest)
ROOT_SPARE_MB = 3072                 # free space for the students' runs (zeros: free in qcow2)
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# the ones the disk needs beyond the kernel client's (tool -> Debian package)
VM_TOOLS = {"sfdisk": "fdisk", "mkfs.fat": "dosfstools", "mcopy": "mtools",
            "syslinux": "syslinux", "qemu-img": "qemu-utils"}

# The system, then what `make setup-labs` installs (scripts/setup.sh's LABS_PACKAGES)
# but the compilers and the venv: the image has Debian's Python packages instead.
VM_PACKAGES = ("systemd-sysv", "udev", "kmod", "procps", "less", "nano",
               "mininet", "tgt", "bridge-utils", "iptables", "ethtool", "iproute2",
               "nftables", "tcpdump", "iputils-ping")
SETUP_ONLY = frozenset({"python3-venv", "python3-dev", "gcc"})    # build the venv only
# pyproject.toml's dependencies (and the `labs` extra: the graders) -> Debian's package
DEBIAN_PYTHON = {"pyyaml": "python3-yaml", "scapy": "python3-scapy",
                 "matplotlib": "python3-matplotlib", "crc32c": "python3-crc32c",
                 "scipy": "python3-scipy", "pytest": "python3-pytest",
                 "pytest-timeout": "python3-pytest-timeout"}
PYPROJECT_EXTRAS = ("labs",)
# the disk drivers of QEMU (virtio), UTM (virtio), VirtualBox (AHCI SATA, PIIX IDE)
VM_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "ahci", "ata_piix", "sd_mod",
              "crc32c_generic", "ext4")
# what runs on the student's machine; the rest of the checkout (tests, bench, docker,
# instructor/, labs/ in the instructor's form) stays out
PROJECT_PATHS = ("testbed", "nodes", "topologies", "scenarios", "docs", "README.md",
                 "pyproject.toml")
KERNEL_ARGS = (f"tb.root=LABEL={LABEL} tb.init=/sbin/init console=tty0 "
               "console=ttyS0,115200 net.ifnames=0 loglevel=4")


class VmImageError(ImageBuildError):
    """The students' disk image cannot be built from these inputs (names file and key)."""


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonPlan:
    """Which of the project's Python dependencies come from Debian and which from PyPI."""

    debian: tuple[str, ...]                  # Debian packages
    overlays: tuple[str, ...]                # name==version, installed over Debian's
    constraints: tuple[str, ...]             # name==version of the whole .venv: pip's pins


def upstream_version(debian_version: str) -> str:
    """``1:1.24.2-1+deb12u1`` -> ``1.24.2``: the upstream part of a Debian version."""
    v = debian_version.split(":", 1)[-1]
    v = v.rsplit("-", 1)[0] if "-" in v else v
    return re.split(r"[+~]", v, maxsplit=1)[0]


def requirements(pyproject: Path = ROOT / "pyproject.toml",
                 extras: tuple[str, ...] = PYPROJECT_EXTRAS) -> list[Requirement]:
    """The project's dependencies and those of ``extras``, from ``pyproject.toml``."""
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
        lines = list(project["dependencies"])
        for extra in extras:
            lines += project["optional-dependencies"][extra]
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VmImageError(f"{pyproject}: cannot read it: {exc}") from None
    except KeyError as exc:
        raise VmImageError(f"{pyproject}: no key {exc} under [project]") from None
    return [Requirement(line) for line in lines]


def python_plan(reqs: list[Requirement], debian_version, venv_version) -> PythonPlan:
    """Debian's package for each requirement; from PyPI (at the ``.venv``'s version) each
    whose Debian version the requirement does not allow.

    ``debian_version(package)`` and ``venv_version(name)`` are the look-ups (apt-cache,
    importlib.metadata), passed in so the rule is tested without them."""
    debian, overlays = [], []
    for req in reqs:
        name = req.name.lower()
        pkg = DEBIAN_PYTHON.get(name)
        if pkg is None:
            raise VmImageError(f"pyproject.toml: dependency {req.name!r} has no Debian "
                               f"package in testbed/guest/vmimage.py:DEBIAN_PYTHON")
        try:
            fits = req.specifier.contains(Version(upstream_version(debian_version(pkg))),
                                          prereleases=True)
        except InvalidVersion:
            fits = False
        if fits:
            debian.append(pkg)
            continue
        have = venv_version(name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            raise VmImageError(f"pyproject.toml: {req} is newer than Debian's {pkg} and "
                               f"this machine's .venv has {have or 'none'} (run make setup)")
        overlays.append(f"{name}=={have}")
    return PythonPlan(tuple(debian), tuple(overlays), ())


def apt_version(package: str) -> str:
    out = image.run_step(["apt-cache", "show", "--no-all-versions", package],
                         f"finding {package}'s version", 60)
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise VmImageError(f"apt knows no {package} (run apt-get update)")


def venv_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def venv_constraints() -> tuple[str, ...]:
    """name==version of every distribution this Python has: the pins of pip's overlay,
    so the image runs what the project is tested with here."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name and name != "testbed":
            pins[name] = f"{name}=={dist.version}"
    return tuple(sorted(pins.values()))


def current_plan() -> PythonPlan:
    plan = python_plan(requirements(), apt_version, venv_version)
    return PythonPlan(plan.debian, plan.overlays, venv_constraints() if plan.overlays else ())


def base_inputs(plan: PythonPlan) -> image.BuildInputs:
    """The base's inputs: the kernel client's fields, with the VM's packages and modules;
    the pip overlay and the initramfs's init hashed into ``files_sha256``."""
    pkg, version = image.resolve_kernel()
    files = {"init (initramfs)": image.guest_files()["init (initramfs)"],
             "pip overlays": "\n".join(plan.overlays + plan.constraints).encode()}
    return image.BuildInputs(pkg, version, packages=VM_PACKAGES + plan.debian,
                             initramfs_modules=VM_MODULES, files_sha256=image.files_digest(files),
                             builder=1000 + VM_BUILDER)


def project_files(root: Path = ROOT) -> dict[str, bytes]:
    """Path under /opt/testbed -> contents: the tracked files of :data:`PROJECT_PATHS`
    as they are in the work tree (edits included)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--", *PROJECT_PATHS],
                             capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise VmImageError(f"{root}: the image is built from a git checkout "
                           f"(git ls-files failed: {exc})") from None
    files = {}
    for rel in sorted(filter(None, out.decode().split("\0"))):
        path = root / rel
        if path.is_file():                  # a tracked file deleted in the work tree: out
            files[rel] = path.read_bytes()
    return files


def student_labs(dest: Path) -> Path:
    """The labs as ``testbed lab export --student`` writes them, into ``dest`` (new)."""
    from ..grading import student_copy
    return student_copy(dest)


def instructor_files(tree: Path) -> list[str]:
    """Files and folders under ``tree`` that only an instructor may have (the
    instructor's tree, solutions, keys, rubrics)."""
    from ..grading.course import INSTRUCTOR_ONLY
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*")
                  if p.name in INSTRUCTOR_ONLY or p.name == "instructor")


def tree_digest(tree: Path) -> str:
    return image.files_digest({str(p.relative_to(tree)): p.read_bytes()
                               for p in sorted(tree.rglob("*")) if p.is_file()})


# -- the system ---------------------------------------------------------------------------


def system_files() -> dict[str, str]:
    """Path in the root filesystem -> contents, for the files that make it a machine."""
    autologin = "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root {} %I $TERM\n"
    return {
        "etc/hostname": "testbed-vm\n",
        "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 testbed-vm\n",
        # the share mounts on first use: at boot its virtio device may not be probed
        # yet, and a machine without one boots all the same
        "etc/fstab": (f"LABEL={LABEL} / ext4 rw,errors=remount-ro 0 1\n"
                      f"{SHARE_TAG} {SHARE_DIR} 9p trans=virtio,version=9p2000.L,"
                      "msize=262144,nofail,x-systemd.automount 0 0\n"),
        # QEMU's and VirtualBox's NAT answer DNS there; networkd writes no resolv.conf
        "etc/resolv.conf": "nameserver 10.0.2.3\n",
        "etc/systemd/network/80-dhcp.network": "[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n",
        "etc/systemd/system/getty@tty1.service.d/autologin.conf":
            autologin.format("--noclear"),
        "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf":
            autologin.format("--keep-baud 115200,57600,38400,9600"),
        "etc/motd": ("\nThe testbed's student machine. You are root: the labs need it.\n"
                     "  testbed lab list          the labs\n"
                     "  testbed lab start 1       copy lab 1 into ./lab1\n"
                     f"  {SHARE_DIR}                the host's shared folder, if any\n"
                     "The project is in /opt/testbed; poweroff ends the machine.\n\n"),
        "usr/local/bin/testbed": ("#!/usr/bin/python3\n# the testbed command: the project "
                                  "in /opt/testbed (testbed.pth)\nimport sys\n"
                                  "from testbed.cli import main\nsys.exit(main())\n"),
        "usr/lib/python3/dist-packages/testbed.pth": "/opt/testbed\n",
        "usr/local/lib/python3.11/dist-packages/.keep": "",
    }


def syslinux_cfg() -> str:
    return ("SERIAL 0 115200\nDEFAULT testbed\nPROMPT 0\nTIMEOUT 0\n"
            f"LABEL testbed\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_ARGS}\n")


def disk_key(base_key: str, project: dict[str, bytes], labs_digest: str) -> str:
    files = dict(project)
    files.update({f"system:{k}": v.encode() for k, v in system_files().items()})
    files["syslinux.cfg"] = syslinux_cfg().encode()
    files["labs (student copy)"] = labs_digest.encode()
    files["disk layout"] = json.dumps([BOOT_START, BOOT_MB, ROOT_SPARE_MB, VM_BUILDER]).encode()
    return f"{base_key}-disk-{image.files_digest(files)[:12]}"


# -- the base -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    dir: Path
    kernel_release: str

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @classmethod
    def load(cls, folder: Path) -> Optional["Base"]:
        try:
            info = json.loads((folder / "base.json").read_text())
        except (OSError, ValueError):
            return None
        ok = all((folder / n).exists() for n in ("vmlinuz", "initrd.img", "root/sbin/init"))
        return cls(folder, info["kernel_release"]) if ok else None


def build_base(inputs: image.BuildInputs, plan: PythonPlan, folder: Path, say: Say) -> Base:
    """Kernel, initramfs and the installed root tree (no project) into ``folder``."""
    t0 = time.monotonic()
    with image.building(folder, "base.json") as (work, info):
        say(f"vm image: [base 1/5] apt-get download {inputs.kernel_package}")
        release = image.unpack_kernel(inputs, work)
        root = work / "root"
        say(f"vm image: [base 2/5] debootstrap {inputs.suite} with {len(inputs.packages)} "
            f"packages and their dependencies (the long step: minutes)")
        image.run_step(["debootstrap", "--variant=minbase",
                        f"--include={','.join(inputs.packages)}", inputs.suite, str(root)],
                       "debootstrap", timeout=2 * image.STEP_TIMEOUT_S)
        say("vm image: [base 3/5] the kernel's modules, depmod, services")
        image.populate(root, work / "kernel", release, files={})
        _configure_services(root)
        say(f"vm image: [base 4/5] from PyPI over Debian's: {', '.join(plan.overlays) or 'nothing'}")
        _pip_overlay(root, plan, work)
        say(f"vm image: [base 5/5] busybox initramfs with {', '.join(inputs.initramfs_modules)}")
        image.make_initramfs(root, release, inputs.initramfs_modules, work)
        shutil.copy2(work / "kernel" / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
        shutil.rmtree(work / "kernel")
        info.update(inputs=asdict(inputs), python=asdict(plan), kernel_release=release,
                    built_s=round(time.monotonic() - t0, 1), built_at=time.time())
    say(f"vm image: base built in {time.monotonic() - t0:.0f}s: {folder}")
    return Base(folder, release)


def _configure_services(root: Path) -> None:
    """DHCP by networkd; no wait for a network (a machine without one boots as fast);
    no distribution tgtd (a run starts its own); root logs in without a password."""
    chroot = ["chroot", str(root)]
    image.run_step(chroot + ["systemctl", "enable", "systemd-networkd"], "systemctl enable")
    image.run_step(chroot + ["systemctl", "mask", "systemd-networkd-wait-online.service",
                             "tgt.service"], "systemctl mask")
    image.run_step(chroot + ["passwd", "-d", "root"], "passwd -d root")


def wheel_platforms(glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """pip's ``--platform`` options for wheels that run on bookworm: pip takes the tags
    as listed and does not widen ``manylinux_2_36`` to the older ones itself."""
    tags = [f"manylinux_2_{n}_x86_64" for n in range(glibc_minor, 16, -1)]
    return [a for t in tags + ["manylinux2014_x86_64"] for a in ("--platform", t)]


def _pip_overlay(root: Path, plan: PythonPlan, work: Path) -> None:
    if not plan.overlays:
        return
    pins = work / "constraints.txt"
    pins.write_text("\n".join(plan.constraints) + "\n")
    target = root / "usr" / "local" / "lib" / f"python{PYTHON}" / "dist-packages"
    image.run_step([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-compile", "--only-binary=:all:", "--implementation", "cp",
                    "--python-version", PYTHON, *wheel_platforms(),
                    "--target", str(target), "-c", str(pins), *plan.overlays],
                   "pip install (the overlays)")


# -- the disk -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VmImage:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / DISK_NAME

    @classmethod
    def load(cls, folder: Path) -> Optional["VmImage"]:
        ok = (folder / "vm.json").is_file() and (folder / DISK_NAME).is_file()
        return cls(folder) if ok else None


def partition_table(boot_sectors: int, root_sectors: int) -> tuple[str, int]:
    """sfdisk's script for the two partitions, and where the root partition starts."""
    root_start = -(-(BOOT_START + boot_sectors) // 2048) * 2048
    return ("label: dos\n"
            f"start={BOOT_START}, size={boot_sectors}, type=e, bootable\n"
            f"start={root_start}, size={root_sectors}, type=83\n"), root_start


def assemble_disk(base: Base, rootfs: Path, raw: Path, work: Path) -> None:
    """MBR + FAT boot partition (syslinux, kernel, initramfs) + ``rootfs`` into ``raw``."""
    boot_sectors = BOOT_MB * 2**20 // SECTOR
    root_sectors = rootfs.stat().st_size // SECTOR
    script, root_start = partition_table(boot_sectors, root_sectors)
    with open(raw, "wb") as f:
        f.truncate((root_start + root_sectors) * SECTOR)
    image.run_step(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)],
                   "sfdisk", input=script)
    offset = BOOT_START * SECTOR
    image.run_step(["mkfs.fat", "-F", "16", "-n", "TBBOOT", "-h", str(BOOT_START),
                    "--offset", str(BOOT_START), str(raw), str(BOOT_MB * 1024)], "mkfs.fat")
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    cfg = work / "syslinux.cfg"
    cfg.write_text(syslinux_cfg())
    image.run_step(["mcopy", "-i", f"{raw}@@{offset}", str(base.dir / "vmlinuz"),
                    str(base.dir / "initrd.img"), str(cfg), "::"], "mcopy", env=env)
    image.run_step(["syslinux", "--offset", str(offset), "--install", str(raw)], "syslinux",
                   env=env)
    with open(raw, "r+b") as f:                 # the boot code, before the partition table
        f.write(SYSLINUX_MBR.read_bytes()[:440])
    image.run_step(["dd", f"if={rootfs}", f"of={raw}", "bs=1M", "conv=notrunc,sparse",
                    f"seek={root_start * SECTOR}", "oflag=seek_bytes"], "dd (root partition)")


def build_disk(base: Base, project: dict[str, bytes], labs: Path, folder: Path,
               say: Say) -> VmImage:
    """The base's root tree, the system files, the project and the student copy's labs,
    packed into a bootable qcow2 in ``folder``."""
    t0 = time.monotonic()
    with image.building(folder, "vm.json") as (work, info):
        say("vm image: [disk 1/4] the root tree, the project, the student copy's labs")
        root = work / "root"
        image.run_step(["cp", "-a", str(base.root), str(root)], "cp -a (the base's tree)")
        _install(root, project, labs)
        say("vm image: [disk 2/4] mkfs.ext4 -d into the root partition")
        image.make_rootfs(root, work / "root.ext4", label=LABEL, spare_mb=ROOT_SPARE_MB)
        shutil.rmtree(root)
        say("vm image: [disk 3/4] partitions, syslinux, kernel and initramfs")
        raw = work / "disk.raw"
        assemble_disk(base, work / "root.ext4", raw, work)
        (work / "root.ext4").unlink()
        say("vm image: [disk 4/4] qemu-img convert to a compressed qcow2")
        image.run_step(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw),
                        str(work / DISK_NAME)], "qemu-img convert")
        raw.unlink()
        for name in ("syslinux.cfg",):
            (work / name).unlink(missing_ok=True)
        info.update(base=base.dir.name, kernel_release=base.kernel_release,
                    kernel_args=KERNEL_ARGS, files=len(project),
                    built_s=round(time.monotonic() - t0, 1), built_at=time.time())
    size = (folder / DISK_NAME).stat().st_size / 2**20
    say(f"vm image: disk built in {time.monotonic() - t0:.0f}s ({size:.0f} MiB): {folder / DISK_NAME}")
    return VmImage(folder)


def _install(root: Path, project: dict[str, bytes], labs: Path) -> None:
    opt = root / "opt" / "testbed"
    for rel, data in project.items():
        dest = opt / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    shutil.copytree(labs, opt / "labs")
    leaked = instructor_files(opt)
    if leaked:
        raise VmImageError(f"the image would hold instructor files: {', '.join(leaked[:5])}")
    for rel, text in system_files().items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    (root / "usr/local/bin/testbed").chmod(0o755)
    (root / SHARE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)


# -- the caches ---------------------------------------------------------------------------


def ensure_vm_image(say: Optional[Say] = None, cache: Optional[Path] = None) -> VmImage:
    """The disk image for the current project and inputs; built first if there is none
    (the base too, if its inputs changed)."""
    say = say or image._stderr
    image.check_tools()
    image.check_tools(tuple(VM_TOOLS), VM_TOOLS, "make vm-image")
    if not SYSLINUX_MBR.is_file():
        raise image.EnvironmentProblem(f"{SYSLINUX_MBR} not found: make vm-image needs it "
                                       "(apt-get install syslinux-common, or scripts/setup.sh)")
    cache = cache or CACHE_DIR
    plan = current_plan()
    inputs = base_inputs(plan)
    with tempfile.TemporaryDirectory(prefix="testbed-vm-labs-") as tmp:
        labs = student_labs(Path(tmp) / "course")
        project = project_files()
        folder = cache / disk_key(inputs.key(), project, tree_digest(labs))
        vm = VmImage.load(folder)
        if vm is not None:
            return vm
        with image.locked(cache):
            vm = VmImage.load(folder)
            if vm is None:
                base_dir = cache / f"base-{inputs.key()}"
                base = Base.load(base_dir) or build_base(inputs, plan, base_dir, say)
                vm = build_disk(base, project, labs, folder, say)
                for gone in prune_disks(cache):
                    say(f"vm image: removed an older disk image, {gone.name}")
    return vm


def prune_disks(cache: Path, keep: int = KEEP_DISKS) -> list[Path]:
    """Remove all but the ``keep`` newest disk folders of ``cache`` (each is rebuilt from
    its base in about a minute; every edit of the project makes a new one); returns what
    was removed. Bases and unfinished builds are left alone."""
    disks = sorted((p for p in cache.glob("*-disk-*") if VmImage.load(p) is not None),
                   key=lambda p: (p / "vm.json").stat().st_mtime, reverse=True)
    for old in disks[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return disks[keep:]


# -- booting it ---------------------------------------------------------------------------


def qemu_argv(disk: Path, share: Optional[Path] = None, memory_mb: int = 2048, cpus: int = 2,
              accel: str = "tcg", network: str = "user", snapshot: bool = False,
              serial_stdio: bool = False) -> list[str]:
    """QEMU's command line for the image: the disk by its bootloader (no -kernel), a
    virtio NIC on user-mode networking (``network``: ``user``, ``restricted``: the guest
    reaches only QEMU's DHCP and DNS, or ``none``), ``share`` as 9p tag ``share``.
    ``serial_stdio``: no display, the serial console on QEMU's stdin and stdout."""
    if network not in ("user", "restricted", "none"):
        raise VmImageError(f"network: {network!r} is not one of user, restricted, none")
    if memory_mb < 512:
        raise VmImageError(f"memory_mb: {memory_mb} is below the image's 512 MiB")
    # -cpu max: PyPI's numpy and scipy wheels use instructions beyond QEMU's default
    # model (qemu64); a Python that imports them dies of SIGILL there
    argv = [QEMU, "-accel", accel, "-cpu", "max", "-m", str(memory_mb), "-smp", str(cpus),
            "-drive", f"file={disk},if=virtio,format=qcow2" + (",snapshot=on" if snapshot else "")]
    if network == "none":
        argv += ["-nic", "none"]
    else:
        argv += ["-nic", "user,model=virtio-net-pci" + (",restrict=on" if network == "restricted"
                                                        else "")]
    if share is not None:
        argv += ["-virtfs", f"local,path={share},mount_tag={SHARE_TAG},security_model=none,"
                            f"id={SHARE_TAG}"]
    if serial_stdio:
        argv += ["-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"]
    return argv


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m testbed.guest.vmimage [--out FILE]``: build (or find) the image, copy it
    to ``--out`` and print how to boot it."""
    p = argparse.ArgumentParser(prog="python -m testbed.guest.vmimage",
                                description="build the students' bootable disk image (qcow2)")
    p.add_argument("--out", type=Path, default=ROOT / "build" / DISK_NAME,
                   help=f"where to copy the image (default build/{DISK_NAME})")
    args = p.parse_args(argv)
    try:
        vm = ensure_vm_image()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vm.disk, args.out)
    except (TestbedError, OSError) as exc:
        print(f"vm image: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out} ({args.out.stat().st_size / 2**20:.0f} MiB); boot it with:\n  "
          + " ".join(qemu_argv(args.out, network="user")).replace(str(args.out), args.out.name)
          + " -nographic\n(docs/labs.md: QEMU, UTM, VirtualBox)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
