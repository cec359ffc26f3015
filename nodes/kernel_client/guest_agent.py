"""The kernel client's agent: runs inside the Linux guest, as the emulated client's twin.

It runs on the guest's own Python (standard library only; ``tbpattern`` is
``testbed/mm/pattern.py``, handed over by the host with this file), started by
``/opt/testbed/boot.py`` with its configuration as JSON (argv[1]). In order:

1. **network and knobs**: eth0 gets the client's address; the scenario's sysctls are
   written (``vm.min_free_kbytes``, ``vm.dirty_ratio``, ``vm.dirty_background_ratio``,
   ``vm.dirty_writeback_centisecs``, ``vm.dirty_expire_centisecs``,
   ``vm.watermark_scale_factor``) and ``kernel.hung_task_timeout_secs`` is set to the
   scenario's lockup bound, so the kernel itself reports tasks stuck that long;
2. **iSCSI**: ``iscsid -f -n``, then ``iscsiadm`` discovery (SendTargets), the
   scenario's ``initiator:`` timeouts as node settings (no-op interval and timeout,
   login timeout) and login to the topology's tgtd; the disk's SCSI command timeout is
   the scenario's too (``load_started`` says what the kernel and iscsiadm then hold).
   The LUN appears as /dev/sdX; the kernel's ``iscsi_tcp`` marks its socket
   ``sk_set_memalloc()``;
3. **workloads** (the scenario's keys): a writer ``pwrite()``s pattern pages into its
   region of the raw LUN through the block device's page cache (so
   ``balance_dirty_pages()`` throttles it); an mmap writer stores into a shared mapping
   of its region (dirtied through page faults); a downloader reads a bulk host's stream
   through a socket with the scenario's ``SO_RCVBUF`` and writes what it read into its
   region, keeping a CRC-32 per page. Regions are laid out one after the other, each
   "file" of a workload on a 1 MiB boundary. Each workload is a process of its own,
   as each is a task of its own in the kernel's picture;
4. **metrics**: every ``metrics_interval_ms`` one NDJSON sample, from the kernel's own
   counters (``/proc/meminfo``, ``/proc/vmstat``, ``/proc/zoneinfo``'s watermarks,
   ``/proc/net/netstat``, ``/proc/net/snmp``, ``/sys/block/sdX/stat``) with the emulated
   client's field names where the quantity is the same, onto the virtio port
   ``metrics`` (not the network under test); hung-task warnings read from /dev/kmsg are
   its ``events``;
5. **outcome**: ``completed`` once every workload has finished and ``fsync()`` of the
   device returned (written back and flushed); ``lockup`` when writeback is pending,
   the disk's written-sector count has not moved for ``lockup_after_s`` and for the
   kernel's recovery horizon (``recovery_horizon``, from the host: the SCSI command
   timeout or the no-op pings, then open-iscsi's replacement timeout, after which the
   kernel fails the session's commands), and free memory is at or below the min
   watermark or the kernel reported a hung task; its evidence holds the tasks in
   uninterruptible sleep with their kernel stacks and the iSCSI session's state;
   ``deadline`` otherwise. The outcome and the manifest of acknowledged pages (every
   page written before a successful ``fsync()``) go onto the virtio port ``result``.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import subprocess
import struct
import sys
import threading
import time
import zlib

from tbpattern import file_id, pattern_bytes

PAGE = 4096
REGION_ALIGN = 1 << 20
LOGIN_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 30.0
HUNG_MARK = "blocked for more than"
# /proc/vmstat counters sampled under their own names (the emulated client's too)
VMSTAT_FIELDS = ("pgscan_direct_throttle", "pgscan_direct", "pgscan_kswapd", "pgsteal_direct",
                 "pgsteal_kswapd", "nr_dirtied", "nr_written", "nr_dirty", "nr_writeback",
                 "pgpgout", "pgfree")
SO_RCVBUFFORCE = 33     # asm-generic/socket.h (Python's socket module lacks it)
# TcpExt counters of TCP's memory limit (tcp_mem, __sk_mem_schedule, tcp_prune_queue)
TCP_MEM_FIELDS = ("TCPMemoryPressures", "PruneCalled", "RcvPruned", "TCPRcvQDrop")


def log(text: str) -> None:
    print(f"guest_agent: {text}", file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = 30.0) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: status {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout


def port(name: str) -> str:
    """The /dev node of the virtio serial port the host named ``name``."""
    base = "/sys/class/virtio-ports"
    for entry in os.listdir(base):
        try:
            with open(f"{base}/{entry}/name") as f:
                if f.read().strip() == name:
                    return f"/dev/{entry}"
        except OSError:
            continue
    raise RuntimeError(f"no virtio port named {name}")


# -- set-up -------------------------------------------------------------------------------


def setup_network(cfg: dict) -> None:
    run(["ip", "link", "set", "lo", "up"])
    run(["ip", "link", "set", "eth0", "up"])
    run(["ip", "addr", "add", cfg["ip"], "dev", "eth0"])


def write_sysctls(sysctls: dict) -> None:
    for key, value in sysctls.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(str(value))


def login(target: dict, initiator: str, settings: dict) -> str:
    """Start iscsid, discover and log in with the scenario's node ``settings``; return
    the LUN's block device name (sdX), its SCSI command timeout set."""
    os.makedirs("/etc/iscsi", exist_ok=True)
    with open("/etc/iscsi/initiatorname.iscsi", "w") as f:
        f.write(f"InitiatorName={initiator}\n")
    subprocess.Popen(["iscsid", "-f", "-n"], stdout=subprocess.DEVNULL, stderr=sys.stderr)
    portal, iqn = target["portal"], target["iqn"]
    deadline = time.monotonic() + LOGIN_TIMEOUT_S
    while True:         # iscsid needs a moment before iscsiadm can reach it
        try:
            run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", portal], 20)
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    node = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal]
    updates = dict(settings["node"])
    chap = target.get("chap")
    if chap:
        updates.update({"node.session.auth.authmethod": "CHAP",
                        "node.session.auth.username": chap["user"],
                        "node.session.auth.password": chap["secret"]})
        if chap.get("mutual_user"):
            updates["node.session.auth.username_in"] = chap["mutual_user"]
            updates["node.session.auth.password_in"] = chap["mutual_secret"]
    for k, v in updates.items():
        run(node + ["-o", "update", "-n", k, "-v", str(v)])
    run(node + ["--login"], LOGIN_TIMEOUT_S)
    while time.monotonic() < deadline:
        disks = sorted(d for d in os.listdir("/sys/block") if d.startswith("sd"))
        if disks and os.path.exists(f"/dev/{disks[0]}"):
            with open(f"/sys/block/{disks[0]}/device/timeout", "w") as f:
                f.write(str(settings["scsi_timeout_s"]))
            return disks[0]
        time.sleep(0.1)
    raise RuntimeError("logged in, but no SCSI disk appeared")


def applied(disk: str, target: dict) -> dict:
    """The initiator's timeouts as the kernel and open-iscsi hold them after login."""
    with open(f"/sys/block/{disk}/device/timeout") as f:
        out: dict = {"scsi_timeout_s": int(f.read())}
    text = run(["iscsiadm", "-m", "node", "-T", target["iqn"], "-p", target["portal"]])
    for line in text.splitlines():
        key, _, value = line.partition(" = ")
        if key.startswith(("node.conn[0].timeo.", "node.session.timeo.")):
            out[key] = int(value) if value.strip().lstrip("-").isdigit() else value
    # the kernel's own copy of the replacement timeout (iscsi_cls_session.recovery_tmo)
    base = "/sys/class/iscsi_session"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        out[f"{name}.recovery_tmo"] = int(read_text(f"{base}/{name}/recovery_tmo") or -1)
    return out


# -- workloads ----------------------------------------------------------------------------


class Workload:
    """One workload, run as a process of its own (a task, as in the kernel's picture:
    one blocked in a page fault or in balance_dirty_pages() stops no other, nor the
    sampler; threads would, since a store into a mapping faults with the GIL held).

    Its files are regions of the LUN; it remembers each page's CRC. Progress (bytes
    written and received, the download's local port) is shared with the agent through
    an anonymous shared mapping; the checksums and any error come back in a file of
    /run/tb when it exits.
    """

    PROGRESS = struct.Struct("<QQQ")       # written, received, local port

    def __init__(self, index: int, cfg: dict, dev: str, base: int, server: tuple | None,
                 local_ip: str):
        self.name = f"{cfg['kind']}{index}"
        self.cfg = cfg
        self.dev = dev
        self.server = server
        self.local_ip = local_ip
        self.total = int(cfg["total_mb"] * (1 << 20))
        n = cfg["files"]
        self.sizes = [self.total // n + (1 if k < self.total % n else 0) for k in range(n)]
        if cfg["kind"] == "downloader":
            per = -(-self.total // n)
            self.sizes = [per] * n
        self.names = [f"{self.name}-{k}" for k in range(n)]
        self.offsets = []              # each file's byte offset on the LUN
        for size in self.sizes:
            self.offsets.append(base)
            base += -(-size // REGION_ALIGN) * REGION_ALIGN
        self.end = base
        self.crcs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.shared = mmap.mmap(-1, self.PROGRESS.size)   # MAP_SHARED: seen across fork
        self._written = self._received = 0                # the child's own counts
        self.pid = 0
        self.done = False
        self.error: str | None = None
        self.result_path = f"/run/tb/{self.name}.json"

    # -- the agent's side ------------------------------------------------------------------

    def start(self) -> None:
        self.pid = os.fork()
        if self.pid == 0:
            self._child()

    def is_alive(self) -> bool:
        if self.done:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.done = True
        try:
            with open(self.result_path) as f:
                got = json.load(f)
            self.crcs = [[tuple(p) for p in c] for c in got["crcs"]]
            self.error = got["error"]
        except (OSError, ValueError) as exc:
            self.error = f"{self.name}: ended with status {status} and no result ({exc})"
        return False

    def stop(self) -> None:
        if self.pid and not self.done:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @property
    def written(self) -> int:
        return self.PROGRESS.unpack_from(self.shared)[0]

    # -- the child's side ------------------------------------------------------------------

    def _child(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            {"writer": self.write, "mmap_writer": self.mmap_write,
             "downloader": self.download}[self.cfg["kind"]]()
        except Exception as exc:      # reported in the outcome, never a silent death
            self.error = f"{self.name}: {type(exc).__name__}: {exc}"
        try:
            with open(self.result_path, "w") as f:
                json.dump({"error": self.error, "crcs": self.crcs}, f)
        finally:
            os._exit(0)

    def _progress(self, port: int = 0) -> None:
        self.PROGRESS.pack_into(self.shared, 0, self._written, self._received,
                                port or self.PROGRESS.unpack_from(self.shared)[2])

    def _pace(self, started: float) -> None:
        rate = self.cfg["rate_mbps"] * (1 << 20)
        if rate > 0:
            ahead = self._written / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _note(self, k: int, offset: int, data: bytes) -> None:
        for s in range(0, len(data), PAGE):
            piece = data[s:s + PAGE]
            self.crcs[k].append((len(piece), zlib.crc32(piece)))

    def _chunks(self):
        """(file, offset in it, pattern bytes) round robin, as the emulated Writer."""
        chunk, seed = self.cfg["chunk_kb"] * 1024, self.cfg["seed"]
        fids = [file_id(n) for n in self.names]
        pos = [0] * len(self.sizes)
        while self._written < self.total:
            for k, size in enumerate(self.sizes):
                length = min(chunk, size - pos[k])
                if length > 0:
                    yield k, pos[k], pattern_bytes(seed, fids[k], pos[k], length)
                    pos[k] += length

    def write(self) -> None:
        fd = os.open(self.dev, os.O_RDWR)
        try:
            started = time.monotonic()
            for k, off, data in self._chunks():
                self._note(k, off, data)
                os.pwrite(fd, data, self.offsets[k] + off)
                self._written += len(data)
                self._progress()
                self._pace(started)
        finally:
            os.close(fd)

    def mmap_write(self) -> None:
        fd = os.open(self.dev, os.O_RDWR)
        maps = [mmap.mmap(fd, -(-s // PAGE) * PAGE, mmap.MAP_SHARED, offset=o)
                for s, o in zip(self.sizes, self.offsets)]
        try:
            started = time.monotonic()
            for k, off, data in self._chunks():
                self._note(k, off, data)
                maps[k][off:off + len(data)] = data
                self._written += len(data)
                self._progress()
                self._pace(started)
        finally:
            for m in maps:
                m.close()         # munmap: the dirty pages stay in the page cache
            os.close(fd)

    def download(self) -> None:
        if self.server is None:
            raise RuntimeError("no bulk server for this downloader")
        per, chunk = self.sizes[0], self.cfg["chunk_kb"] * 1024
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        fd = os.open(self.dev, os.O_RDWR)
        try:
            if self.cfg["rcvbuf_kb"]:
                set_rcvbuf(sock, self.cfg["rcvbuf_kb"] * 1024)
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(tuple(self.server))
            self._progress(port=sock.getsockname()[1])
            sock.settimeout(None)
            if self.cfg.get("request"):
                sock.sendall(self.cfg["request"].encode())
            pending = bytearray()
            while self._received < self.total:
                data = sock.recv(min(65536, self.total - self._received))
                if not data:
                    break
                self._received += len(data)
                pending += data
                self._flush_pending(fd, pending, per, chunk, final=False)
                self._progress()
            self._flush_pending(fd, pending, per, chunk, final=True)
            self._progress()
        finally:
            sock.close()
            os.close(fd)

    def flow(self, rx_queues: dict[tuple[int, str], int]) -> dict | None:
        """The download's flow as the emulated client's handler names it: bytes that
        reached the socket (read, plus still queued: rx_queue of /proc/net/tcp)."""
        if self.server is None:
            return None
        _, received, port = self.PROGRESS.unpack_from(self.shared)
        if not port:
            return None
        remote = f"{self.server[0]}:{self.server[1]}"
        queued = rx_queues.get((port, remote), 0)
        return {"flow": f"tcp {self.local_ip}:{port}<->{remote}",
                "charged_bytes": received + queued, "read_bytes": received,
                "memalloc": False}

    def _flush_pending(self, fd: int, pending: bytearray, per: int, chunk: int,
                       final: bool) -> None:
        while pending:
            k, off = divmod(self._written, per)
            n = min(len(pending), per - off, chunk)
            if n < chunk and n < per - off and not final:
                return
            data = bytes(pending[:n])
            self._note(k, off, data)
            os.pwrite(fd, data, self.offsets[k] + off)
            del pending[:n]
            self._written += n

    def extents(self) -> list:
        """This workload's pages in the manifest's form: [name, first, offset, pages]."""
        return [[name, 0, off, [list(p) for p in crcs]]
                for name, off, crcs in zip(self.names, self.offsets, self.crcs) if crcs]


# -- counters -----------------------------------------------------------------------------


def set_rcvbuf(sock: socket.socket, nbytes: int) -> None:
    """The emulated downloader's rule (testbed/mm/workload.py ``set_rcvbuf``), which this
    file cannot import: ``SO_RCVBUFFORCE`` as root, past ``net.core.rmem_max``. The plain
    option would cap a 4 MiB buffer at 6.1's rmem_max of 208 KiB, a different load."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, nbytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)


def tcp_mem_pages() -> int:
    """Pages charged to TCP sockets now (``sk_memory_allocated``): ``/proc/net/sockstat``'s
    ``TCP: ... mem N``, the figure ``net.ipv4.tcp_mem`` bounds."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


def read_ints(path: str) -> list[int]:
    with open(path) as f:
        return [int(v) for v in f.read().split()]


def read_keyed(path: str) -> dict[str, int]:
    """``name value`` or ``Name: value kB`` lines."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.replace(":", " ").split()
            if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    return out


def read_paired(path: str) -> dict[str, int]:
    """/proc/net/netstat and /proc/net/snmp: header line, value line, per protocol."""
    out = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        proto = head.split(":")[0]
        for k, v in zip(head.split()[1:], vals.split()[1:]):
            if v.lstrip("-").isdigit():
                out[f"{proto}.{k}"] = int(v)
    return out


def watermarks() -> dict[str, int]:
    """Sum over zones of the min, low and high watermarks (pages)."""
    out = {"min": 0, "low": 0, "high": 0}
    with open("/proc/zoneinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[0] in out and parts[1].isdigit():
                out[parts[0]] += int(parts[1])
    return out


def cpu_jiffies() -> dict[str, int]:
    """The guest's CPU time by state, /proc/stat's first line (USER_HZ ticks)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return dict(zip(("user", "nice", "system", "idle", "iowait", "irq", "softirq"), v))


def disk_stat(disk: str) -> dict[str, int]:
    with open(f"/sys/block/{disk}/stat") as f:
        v = [int(x) for x in f.read().split()]
    return {"reads": v[0], "sectors_read": v[2], "writes": v[4], "sectors_written": v[6],
            "in_flight": v[8], "io_ticks_ms": v[9]}


class Kmsg:
    """New kernel log lines (non-blocking): the hung-task detector's warnings."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def lines(self) -> list[str]:
        out = []
        while True:
            try:
                rec = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                return out
            except OSError:             # EPIPE: records overwritten before we read them
                continue
            out.append(rec.split(";", 1)[-1].strip())


# -- the run ------------------------------------------------------------------------------


class Sampler:
    """One sample of the kernel's counters, in the emulated client's field names."""

    def __init__(self, disk: str, started: float, workloads: list[Workload]):
        self.disk, self.started, self.workloads = disk, started, workloads
        self.base = disk_stat(disk)["sectors_written"]
        self.events: list[dict] = []
        self.hung: list[str] = []

    def flows(self) -> list[dict]:
        downloads = [w for w in self.workloads if w.server is not None]
        if not downloads:
            return []
        queues = tcp_rx_queues()
        return [f for w in downloads if (f := w.flow(queues)) is not None]

    def sample(self, kmsg: Kmsg) -> dict:
        t = round(time.monotonic() - self.started, 3)
        for line in kmsg.lines():
            if HUNG_MARK in line:
                self.hung.append(line)
                self.events.append({"t": t, "event": "hung_task", "message": line})
        # per sample: zoneinfo's watermarks include the kernel's watermark_boost, which
        # comes and goes, and the allocator checks the boosted ones
        mi, vm, wm = read_keyed("/proc/meminfo"), read_keyed("/proc/vmstat"), watermarks()
        net = read_paired("/proc/net/netstat")
        snmp = read_paired("/proc/net/snmp")
        disk = disk_stat(self.disk)
        kb = lambda k: mi.get(k, 0) // 4      # noqa: E731  kB -> 4 KiB pages
        s = {"t": t, "free": kb("MemFree"), "total": kb("MemTotal"), "file": kb("Cached"),
             "dirty": vm.get("nr_dirty", 0), "writeback": vm.get("nr_writeback", 0),
             "reclaimable": kb("Active(file)") + kb("Inactive(file)"),
             "kernel": kb("Slab") + kb("KernelStack") + kb("PageTables"),
             "wmark_min": wm["min"], "wmark_low": wm["low"], "wmark_high": wm["high"],
             "bg_thresh": vm.get("nr_dirty_background_threshold", 0),
             "thresh": vm.get("nr_dirty_threshold", 0),
             "writeback_bytes": (disk["sectors_written"] - self.base) * 512,
             "workload_bytes": sum(w.written for w in self.workloads),
             # the counters, top level as the emulated client's (kernel names)
             "PFMemallocDrop": net.get("TcpExt.PFMemallocDrop", 0),
             "TCPBacklogDrop": net.get("TcpExt.TCPBacklogDrop", 0),
             # TCP's own memory limit (tcp_mem): the pages charged, the times the sockets
             # entered memory pressure, and segments pruned or dropped for it
             "tcp_mem_pages": tcp_mem_pages(),
             **{k: net.get(f"TcpExt.{k}", 0) for k in TCP_MEM_FIELDS},
             "allocstall": sum(v for k, v in vm.items() if k.startswith("allocstall_")),
             "pgalloc": sum(v for k, v in vm.items() if k.startswith("pgalloc_")),
             **{k: vm.get(k, 0) for k in VMSTAT_FIELDS},
             "hung_tasks": len(self.hung),
             "tcp": {k.split(".", 1)[1]: v for k, v in snmp.items() if k.startswith("Tcp.")
                     and k.split(".", 1)[1] in ("InSegs", "OutSegs", "RetransSegs", "InErrs")},
             "disk": disk, "cpu": cpu_jiffies(),
             "net": {"flows": self.flows()}}
        if self.events:
            s["events"], self.events = self.events, []
        return s


def tcp_rx_queues() -> dict[tuple[int, str], int]:
    """(local port, "remote ip:port") -> bytes queued for the reader, /proc/net/tcp."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, queues = parts[1], parts[2], parts[4]
            rip, rport = remote.split(":")
            ip = ".".join(str(b) for b in reversed(bytes.fromhex(rip)))
            out[(int(local.split(":")[1], 16), f"{ip}:{int(rport, 16)}")] = \
                int(queues.split(":")[1], 16)
    return out


def evidence(s: dict, stalled: float, hung: list[str], horizon: dict) -> dict:
    """What the kernel shows at the lockup: the figures, the blocked tasks and where each
    waits, and the iSCSI session's state (the host builds the wait-for cycle from them)."""
    return {"t": s["t"], "stalled_for_s": round(stalled, 2), "dirty": s["dirty"],
            "writeback": s["writeback"], "free": s["free"], "wmark_min": s["wmark_min"],
            "reserve": None, "hung_task_messages": hung[-5:], "horizon": horizon,
            "tasks": blocked_tasks(), "iscsi": iscsi_states(),
            "counters": {k: s[k] for k in ("PFMemallocDrop", "TCPBacklogDrop", "allocstall",
                                           "pgscan_direct_throttle", "nr_dirty", "nr_writeback")}}


def main(cfg: dict) -> int:
    metrics = open(port("metrics"), "w", buffering=1)
    result = open(port("result"), "w", buffering=1)
    outcome: dict = {"verdict": "error"}
    workloads: list[Workload] = []
    try:
        setup_network(cfg)
        write_sysctls(cfg["sysctl"])
        disk = login(cfg["target"], cfg["initiator_name"], cfg["iscsi"])
        dev = f"/dev/{disk}"
        kmsg = Kmsg()
        started = time.monotonic()
        metrics.write(json.dumps({"t": 0.0, "events": [
            {"t": 0.0, "event": "load_started", "guest_monotonic": started, "disk": disk,
             "kernel": os.uname().release, "iscsi": applied(disk, cfg["target"]),
             "tcp_mem": read_ints("/proc/sys/net/ipv4/tcp_mem")}]}) + "\n")
        base, servers = 0, list(cfg["download_servers"])
        for i, w in enumerate(cfg["workloads"]):
            server = servers[i % len(servers)] if w["kind"] == "downloader" and servers else None
            wl = Workload(i, w, dev, base, server, cfg["ip"].split("/")[0])
            base = wl.end
            workloads.append(wl)
        capacity = int(open(f"/sys/block/{disk}/size").read()) * 512
        if base > capacity:
            raise RuntimeError(f"the workloads need {base >> 20} MiB, the LUN has {capacity >> 20}")
        for wl in workloads:
            wl.start()
        outcome = watch(cfg, dev, disk, started, workloads, kmsg, metrics)
    except Exception as exc:
        outcome = {"verdict": "error", "detail": f"{type(exc).__name__}: {exc}"}
    for w in workloads:             # a stopped or locked-up load: its tasks go now
        w.stop()
    acknowledged = outcome.get("verdict") == "completed"
    manifest = {"page_size": PAGE,
                "extents": [e for w in workloads for e in w.extents()] if acknowledged else []}
    outcome["manifest_pages"] = sum(len(e[3]) for e in manifest["extents"])
    result.write(json.dumps({"outcome": outcome}) + "\n")
    result.write(json.dumps({"manifest": manifest}) + "\n")
    result.flush()
    log(f"outcome {outcome['verdict']} {outcome.get('detail', '')}")
    if acknowledged:          # a locked-up guest is powered off instead: logout needs memory
        try:
            run(["iscsiadm", "-m", "node", "-u"], 15)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(f"logout: {exc}")
    return 0


class StallWatch:
    """The lockup rule, on the kernel's own figures (module docstring, step 5).

    Writeback is *pending* while pages are dirty or under writeback, or the final
    fsync() has not returned; it *stalls* while pending and the LUN's written-sector
    count stays put. A stall is a lockup when it has lasted ``lockup_after_s`` and the
    kernel's recovery horizon (``horizon_s``: the SCSI command timeout or the no-op
    pings, then open-iscsi's replacement timeout, after which the kernel fails the
    session's commands), and free memory is at or below the min watermark or the kernel
    has reported a hung task. Before the horizon the kernel may still get out of it, so
    the guest runs on.
    """

    def __init__(self, lockup_after_s: float, now: float, horizon_s: float = 0.0):
        self.lockup_after_s = lockup_after_s
        self.horizon_s = horizon_s
        self.last_wb = -1
        self.last_progress = now
        self.longest = 0.0

    def update(self, s: dict, now: float, syncing: bool, hung: bool) -> tuple[float, bool]:
        """(seconds stalled, locked up) after sample ``s`` taken at ``now``."""
        pending = s["dirty"] + s["writeback"] > 0 or syncing
        if s["writeback_bytes"] != self.last_wb or not pending:
            self.last_wb, self.last_progress = s["writeback_bytes"], now
        stalled = now - self.last_progress
        self.longest = max(self.longest, stalled)
        locked = (stalled >= max(self.lockup_after_s, self.horizon_s)
                  and (s["free"] <= s["wmark_min"] or hung))
        return stalled, locked


def blocked_tasks(proc: str = "/proc", limit: int = 24) -> list[dict]:
    """The tasks in uninterruptible sleep (state D) and where in the kernel each waits:
    ``wchan`` and the innermost frames of ``/proc/PID/stack`` (function names, offsets
    dropped). These are the kernel's own words for what each task waits on."""
    out = []
    for pid in sorted((p for p in os.listdir(proc) if p.isdigit()), key=int):
        try:
            with open(f"{proc}/{pid}/stat") as f:
                stat = f.read()
            if stat[stat.rindex(")") + 2:].split(" ", 1)[0] != "D":
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            wchan = read_text(f"{proc}/{pid}/wchan")
            frames = [line.split("] ", 1)[-1].split("+", 1)[0].strip()
                      for line in read_text(f"{proc}/{pid}/stack").splitlines() if line.strip()]
        except OSError:             # the task ended meanwhile
            continue
        out.append({"pid": int(pid), "comm": comm, "wchan": wchan, "stack": frames[:12]})
        if len(out) >= limit:
            break
    return out


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def iscsi_states(sysfs: str = "/sys") -> dict[str, str]:
    """Each iSCSI session's and connection's state as the kernel's transport class
    shows it (LOGGED_IN, FAILED or FREE; up or down)."""
    out = {}
    for cls in ("iscsi_session", "iscsi_connection"):
        base = f"{sysfs}/class/{cls}"
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            out[name] = read_text(f"{base}/{name}/state")
    return out


def watch(cfg: dict, dev: str, disk: str, started: float, workloads: list[Workload],
          kmsg: Kmsg, metrics) -> dict:
    """Sample until completed, lockup or the deadline (see the module docstring)."""
    interval = cfg["metrics_interval_ms"] / 1000
    sampler = Sampler(disk, started, workloads)
    horizon = cfg.get("recovery_horizon") or {}
    stall = StallWatch(cfg["lockup_after_s"], time.monotonic(), horizon.get("seconds", 0.0))
    synced: dict = {}
    syncer = None
    while True:
        s = sampler.sample(kmsg)
        now = time.monotonic()
        syncing = syncer is not None and "t" not in synced
        stalled, locked = stall.update(s, now, syncing, bool(sampler.hung))
        s.update(lockup=locked, stalled_for_s=round(stalled, 2))
        metrics.write(json.dumps(s) + "\n")
        base = {"t": s["t"], "bytes_written": s["workload_bytes"],
                "bytes_written_back": s["writeback_bytes"],
                "longest_stall_s": round(stall.longest, 2)}
        failed = [w.error for w in workloads if w.error]
        if failed:
            return {**base, "verdict": "error", "detail": "; ".join(failed)}
        if locked:
            return {**base, "verdict": "lockup",
                    "lockup": evidence(s, stalled, sampler.hung, horizon)}
        if "t" in synced:
            if synced.get("error"):
                return {**base, "verdict": "error", "detail": f"fsync: {synced['error']}"}
            return {**base, "verdict": "completed"}
        if syncer is None and not any(w.is_alive() for w in workloads):
            syncer = threading.Thread(target=fsync_device, args=(dev, synced), daemon=True)
            syncer.start()
        if now - started > cfg["deadline_s"]:
            for w in workloads:
                w.stop()
            return {**base, "verdict": "deadline",
                    "detail": f"not written back after {cfg['deadline_s']:g}s"}
        time.sleep(max(0.0, interval - (time.monotonic() - now)))


def fsync_device(dev: str, out: dict) -> None:
    """Write back and flush every dirty page of the LUN (the workloads' acknowledgement)."""
    try:
        fd = os.open(dev, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        out["error"] = str(exc)
    out["t"] = time.monotonic()


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
