"""The kernel client's guest image: built here from Debian packages, once, and cached.

A guest is three files:

- ``vmlinuz``: the kernel of Debian's ``linux-image-<abi>-amd64`` package (the one the
  meta-package ``linux-image-amd64`` points to), fetched with ``apt-get download`` and
  unpacked with ``dpkg-deb -x``; it is never installed on this machine;
- ``initrd.img``: a busybox initramfs. Debian builds virtio_blk and ext4 as modules,
  so the first stage loads them (in the order ``modules.dep`` gives) and
  ``switch_root``s to the root disk (``files/initramfs-init.sh``);
- ``rootfs.img``: a raw ext4 image made with ``mkfs.ext4 -d`` from a ``debootstrap
  --variant=minbase`` of bookworm with open-iscsi, python3, kmod and iproute2, the
  kernel's modules (``depmod`` run in the chroot), the second stage ``/sbin/tb-init``
  and ``/opt/testbed/boot.py``, which starts the guest agent a run hands over on its
  configuration disk (:func:`run_files`: ``nodes/kernel_client/guest_agent.py`` and the
  writers' page patterns, ``testbed/mm/pattern.py``, one source for both clients).

Everything comes from the package registries this machine's apt uses. The image lives
in ``CACHE_DIR/<key>/`` where the key is the kernel package, its version and a hash of
every build input (package list, suite, the files copied in, the builder's version):
change any of them and the next use builds a new one. A build happens in a temporary
folder next to the cache and is renamed into place only when complete, under a lock,
so two runs never build at once and a killed build leaves nothing that looks usable.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import EnvironmentProblem, TestbedError

ROOT = Path(__file__).resolve().parent.parent.parent
FILES = Path(__file__).resolve().parent / "files"
CACHE_DIR = Path(os.environ.get("TESTBED_GUEST_CACHE", "/var/cache/testbed/guest"))
BUILDER_VERSION = 1                 # bump when the build steps change what they make
SUITE = "bookworm"
KERNEL_META = "linux-image-amd64"
GUEST_PACKAGES = ("open-iscsi", "python3", "kmod", "iproute2")
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
STEP_TIMEOUT_S = 900.0              # one build step (debootstrap on a slow mirror)

# host tool -> the Debian package that has it
TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "debootstrap": "debootstrap",
         "mkfs.ext4": "e2fsprogs", "cpio": "cpio", "busybox": "busybox-static",
         "qemu-system-x86_64": "qemu-system-x86"}

Say = Callable[[str], None]


class ImageBuildError(TestbedError):
    """A step of the guest image's build failed (the message names the step)."""


@dataclass(frozen=True)
class BuildInputs:
    """Everything that decides the image's contents; :meth:`key` names its cache folder."""

    kernel_package: str          # linux-image-6.1.0-56-amd64
    kernel_version: str          # the package's version, 6.1.192-2
    suite: str = SUITE
    packages: tuple[str, ...] = GUEST_PACKAGES
    initramfs_modules: tuple[str, ...] = INITRAMFS_MODULES
    files_sha256: str = ""       # of the files copied into the guest (guest_files())
    builder: int = BUILDER_VERSION

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{self.kernel_package}_{self.kernel_version}-{digest[:12]}"


@dataclass(frozen=True)
class GuestImage:
    """A built image: its folder and what is in it."""

    dir: Path
    kernel_release: str          # uname -r in the guest: 6.1.0-56-amd64

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs.img"

    @classmethod
    def load(cls, folder: Path) -> Optional["GuestImage"]:
        """The image in ``folder`` if it is complete, else None."""
        try:
            info = json.loads((folder / "image.json").read_text())
        except (OSError, ValueError):
            return None
        img = cls(folder, info["kernel_release"])
        ok = all(p.is_file() for p in (img.vmlinuz, img.initrd, img.rootfs))
        return img if ok else None


# -- inputs -------------------------------------------------------------------------------


def pattern_source() -> str:
    """testbed/mm/pattern.py for the guest: the same code, with its one package import
    (PAGE_SIZE from the zone) replaced by the value, since the guest has no testbed."""
    text = (ROOT / "testbed" / "mm" / "pattern.py").read_text()
    line = "from .zone import PAGE_SIZE\n"
    if line not in text:
        raise ImageBuildError("testbed/mm/pattern.py no longer imports PAGE_SIZE from .zone; "
                              "update testbed/guest/image.py:pattern_source()")
    return text.replace(line, "PAGE_SIZE = 4096   # testbed.mm.zone.PAGE_SIZE\n")


def guest_files() -> dict[str, bytes]:
    """Path in the root filesystem -> contents, for every file of the project copied in.

    The guest agent itself is not among them: it comes with each run's configuration
    disk (:func:`run_files`), so the guest runs the checkout's agent and an edit of it
    needs no new image."""
    return {"sbin/tb-init": (FILES / "tb-init.sh").read_bytes(),
            "opt/testbed/boot.py": (FILES / "boot.py").read_bytes(),
            "init (initramfs)": (FILES / "initramfs-init.sh").read_bytes()}


def run_files() -> dict[str, str]:
    """The project's files a run hands the guest on its configuration disk: the agent
    and the writers' page patterns (one source for both kinds of client)."""
    agent = ROOT / "nodes" / "kernel_client" / "guest_agent.py"
    return {"guest_agent.py": agent.read_text(), "tbpattern.py": pattern_source()}


def files_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def run_step(argv: list[str], step: str, timeout: float = STEP_TIMEOUT_S, **kw) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"guest image, {step}: {argv[0]} did not finish in {timeout:g}s") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise ImageBuildError(f"guest image, {step}: {' '.join(argv[:3])} failed "
                              f"(status {r.returncode}): {' | '.join(tail)}")
    return r.stdout


def check_tools(names: tuple[str, ...] = tuple(TOOLS), packages: Optional[dict[str, str]] = None,
                needs: str = "the kernel client") -> None:
    """EnvironmentProblem naming the first missing tool and its Debian package
    (``packages``: tool -> package, default :data:`TOOLS`)."""
    packages = TOOLS if packages is None else packages
    for tool in names:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise EnvironmentProblem(f"{tool} not found: {needs} needs it "
                                     f"(apt-get install {packages[tool]}, or scripts/setup.sh)")


def resolve_kernel() -> tuple[str, str]:
    """(package, version) of the kernel image ``linux-image-amd64`` depends on."""
    out = run_step(["apt-cache", "depends", KERNEL_META], "finding the kernel package", 60)
    pkgs = [ln.split(":", 1)[1].strip() for ln in out.splitlines()
            if ln.strip().startswith("Depends:") and "linux-image-" in ln]
    if not pkgs:
        raise ImageBuildError(f"guest image: apt knows no {KERNEL_META} (run apt-get update)")
    show = run_step(["apt-cache", "show", "--no-all-versions", pkgs[0]], "finding the kernel version", 60)
    version = next((ln.split(":", 1)[1].strip() for ln in show.splitlines()
                    if ln.startswith("Version:")), "")
    if not version:
        raise ImageBuildError(f"guest image: apt-cache show {pkgs[0]} gave no version")
    return pkgs[0], version


def current_inputs() -> BuildInputs:
    pkg, version = resolve_kernel()
    return BuildInputs(pkg, version, files_sha256=files_digest(guest_files()))


# -- the cache ----------------------------------------------------------------------------


@contextmanager
def locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_image(say: Optional[Say] = None, cache: Optional[Path] = None) -> GuestImage:
    """The cached image for the current inputs; built first if there is none."""
    say = say or _stderr
    check_tools()
    cache = cache or CACHE_DIR
    inputs = current_inputs()
    folder = cache / inputs.key()
    img = GuestImage.load(folder)
    if img is not None:
        return img
    with locked(cache):
        img = GuestImage.load(folder)          # another process may have built it meanwhile
        if img is None:
            img = build(inputs, folder, say)
    return img


def status(cache: Optional[Path] = None) -> tuple[bool, str]:
    """(ready, what was found) for ``testbed doctor``: the tools, and whether the image
    for the current inputs is built (a build takes about 2 minutes on first use)."""
    try:
        check_tools()
        inputs = current_inputs()
    except TestbedError as exc:
        return False, str(exc)
    img = GuestImage.load((cache or CACHE_DIR) / inputs.key())
    if img is None:
        return False, f"guest image {inputs.key()} not built yet (built on first use)"
    return True, f"guest image {img.kernel_release} in {img.dir}"


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the build ----------------------------------------------------------------------------


@contextmanager
def building(folder: Path, info_name: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A build in a temporary folder beside ``folder``: the block fills it and the
    ``info`` dict; at its end ``info`` is written as ``info_name`` and the folder renamed
    into place (an old one replaced), so a killed or failed build leaves nothing that
    looks usable; on an error the temporary folder is removed."""
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    info: dict[str, Any] = {}
    try:
        yield work, info
        (work / info_name).write_text(json.dumps(info, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def build(inputs: BuildInputs, folder: Path, say: Say) -> GuestImage:
    """Build the image for ``inputs`` into ``folder`` (see the module docstring)."""
    t0 = time.monotonic()
    with building(folder, "image.json") as (work, info):
        steps = 6
        say(f"guest image: building {folder.name} (about 2 minutes, once)")
        say(f"guest image: [1/{steps}] apt-get download {inputs.kernel_package}")
        release = unpack_kernel(inputs, work)
        say(f"guest image: [2/{steps}] debootstrap {inputs.suite} with {', '.join(inputs.packages)}")
        root = work / "root"
        run_step(["debootstrap", "--variant=minbase", f"--include={','.join(inputs.packages)}",
              inputs.suite, str(root)], "debootstrap")
        say(f"guest image: [3/{steps}] the kernel's modules, depmod, tb-init")
        populate(root, work / "kernel", release)
        say(f"guest image: [4/{steps}] mkfs.ext4 -d into rootfs.img")
        make_rootfs(root, work / "rootfs.img")
        say(f"guest image: [5/{steps}] busybox initramfs with {', '.join(inputs.initramfs_modules)}")
        make_initramfs(root, release, inputs.initramfs_modules, work)
        say(f"guest image: [6/{steps}] done")
        shutil.copy2(work / "kernel" / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
        shutil.rmtree(root)
        shutil.rmtree(work / "kernel")
        info.update(inputs=asdict(inputs), kernel_release=release,
                    built_s=round(time.monotonic() - t0, 1), built_at=time.time())
    say(f"guest image: built in {time.monotonic() - t0:.0f}s: {folder}")
    return GuestImage(folder, release)


def unpack_kernel(inputs: BuildInputs, work: Path) -> str:
    deb_dir = work / "deb"
    deb_dir.mkdir()
    run_step(["apt-get", "download", f"{inputs.kernel_package}={inputs.kernel_version}"],
         "apt-get download", cwd=deb_dir)
    debs = list(deb_dir.glob("*.deb"))
    if len(debs) != 1:
        raise ImageBuildError(f"guest image: apt-get download left {len(debs)} packages")
    run_step(["dpkg-deb", "-x", str(debs[0]), str(work / "kernel")], "dpkg-deb -x")
    shutil.rmtree(deb_dir)
    releases = [p.name for p in (work / "kernel" / "lib" / "modules").iterdir()]
    if len(releases) != 1:
        raise ImageBuildError(f"guest image: the kernel package has {len(releases)} module trees")
    return releases[0]


def populate(root: Path, kernel: Path, release: str,
             files: Optional[dict[str, bytes]] = None) -> None:
    """Modules (and depmod), the project's ``files`` (default: :func:`guest_files`,
    installed executable), nothing cached by apt."""
    shutil.copytree(kernel / "lib" / "modules" / release, root / "lib" / "modules" / release,
                    symlinks=True)
    run_step(["chroot", str(root), "depmod", "-a", release], "depmod")
    for rel, data in (guest_files() if files is None else files).items():
        if rel.startswith("init "):
            continue                     # the initramfs's, not the root filesystem's
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(0o755)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                 "usr/share/man", "usr/share/locale"):
        p = root / junk
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()


def make_rootfs(root: Path, image: Path, label: str = "tbroot", spare_mb: int = 64) -> int:
    """``root`` into a new ext4 file system image labelled ``label``, with ``spare_mb``
    free beyond its contents and the journal; returns its size in MiB."""
    used = int(run_step(["du", "-sb", str(root)], "du").split()[0])
    size_mb = used * 13 // 10 // 2**20 + spare_mb     # room for the journal and the agent's files
    run_step(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(root), str(image), f"{size_mb}M"],
             "mkfs.ext4")
    return size_mb


def module_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Module paths to insmod, dependencies first, for the ``wanted`` module names
    (``modules.dep`` lists each module's full dependency chain, nearest first)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[_mod_name(path)] = path
    order: list[str] = []
    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise ImageBuildError(f"guest image: the kernel has no module {name}")
        for p in [*reversed(deps[path]), path]:
            if p not in order:
                order.append(p)
    return order


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def make_initramfs(root: Path, release: str, wanted: tuple[str, ...], work: Path) -> None:
    tree = work / "initramfs"
    mods = root / "lib" / "modules" / release
    (tree / "bin").mkdir(parents=True)
    (tree / "modules").mkdir()
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
    names = []
    for rel in module_order((mods / "modules.dep").read_text(), wanted):
        src = mods / rel
        name = Path(rel).name
        if name.endswith(".xz"):           # busybox's insmod takes plain modules only
            data = subprocess.run(["xz", "-dc", str(src)], capture_output=True, check=True).stdout
            name = name[:-3]
            (tree / "modules" / name).write_bytes(data)
        else:
            shutil.copy2(src, tree / "modules" / name)
        names.append(name)
    (tree / "modules" / "order").write_text("\n".join(names) + "\n")
    shutil.copy2(FILES / "initramfs-init.sh", tree / "init")
    (tree / "init").chmod(0o755)
    listing = subprocess.run(["find", "."], cwd=tree, capture_output=True, text=True,
                             check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=listing.encode(),
                          capture_output=True, timeout=STEP_TIMEOUT_S)
    if cpio.returncode != 0:
        raise ImageBuildError(f"guest image, initramfs: cpio failed: {cpio.stderr.decode().strip()}")
    (work / "initrd.img").write_bytes(gzip.compress(cpio.stdout, 6))
    shutil.rmtree(tree)


def main() -> int:
    """``python -m testbed.guest.image``: build (or find) the image and print its folder."""
    try:
        img = ensure_image()
    except TestbedError as exc:
        print(f"guest image: {exc}", file=sys.stderr)
        return 1
    print(img.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
