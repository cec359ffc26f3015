"""The two ends of the handler and the attach step that puts it between them.

::

      peer ... veth ===== wire (client-eth0)       tap0 (10.0.0.2, wire's MAC)
                          no address, no IPv6,      the client's kernel stack:
                          nft netdev ingress:       sockets, routes, ARP
                          drop everything
                              |  AF_PACKET (ETH_P_ALL)    | /dev/net/tun
                              +------ PacketHandler ------+

*Why a TAP device.* The client's kernel stack must receive only what the handler hands
it. The client's address, MAC and routes therefore live on a TAP device, and the wire
interface (the veth to the switch) keeps none of them: the handler reads and writes
the wire raw and the TAP as the stack's NIC.

*Why the wire needs isolating.* Linux follows the weak host model: a frame arriving
on any interface of the namespace is accepted for any local address, so a frame
taken straight from the wire would reach a socket twice, once past the handler.
:class:`Attachment` therefore (checked on this kernel, see tests/netdev/test_attach.py):

- adds an nft table of family ``netdev`` with a chain on the wire's **ingress** hook
  whose policy is drop. ``AF_PACKET`` sockets bound with ``ETH_P_ALL`` are served in
  ``__netif_receive_skb_core`` before the ingress hook, so the handler still sees
  every frame, and the stack sees none (ARP and IPv6 included);
- turns IPv6 off on the wire (no link-local address, no neighbour discovery) and sets
  ``arp_ignore=8`` on it (never answer ARP there), so nothing leaves the wire by itself.

*Checksums and segmentation.* Both ends carry a ``virtio_net_hdr`` before each frame
(``IFF_VNET_HDR`` on the TAP, ``PACKET_VNET_HDR`` on the raw socket). If a peer still
sends with ``CHECKSUM_PARTIAL`` or GRO merges segments, the header says so and the
handler passes it on unchanged to the other side, exactly as a NIC hands the state to
the stack, instead of delivering frames whose checksums look wrong. The backend turns
these offloads off anyway; the handler counts frames that still carry them.

:meth:`Attachment.detach` puts the wire back as it was: addresses, routes, sysctls,
and removes the nft table; the TAP device vanishes when its descriptor is closed.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Optional

from . import netns
from .errors import AttachError, HandlerConfigError, NetdevError

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# linux/if_packet.h
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TP_STATUS_KERNEL, TP_STATUS_USER, TP_STATUS_COPY = 0, 1, 2
TP_STATUS_CSUMNOTREADY = 8          # the frame's checksum is partial (CHECKSUM_PARTIAL)
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

#: struct virtio_net_hdr (linux/virtio_net.h), carried before every frame on both ends.
VNET_HDR = struct.Struct("<BBHHHH")   # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size          # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1       # checksum is partial (CHECKSUM_PARTIAL)
VIRTIO_NET_HDR_GSO_NONE = 0

ETH_HLEN_VLAN = 14 + 4
#: Largest frame either end can hand over (a GSO frame of 64 KiB plus headers).
MAX_FRAME = 65536 + 14 + 4
BUF_LEN = VNET_HDR_LEN + MAX_FRAME

_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def check_ifname(name: str, param: str) -> str:
    if not isinstance(name, str) or not _IFNAME.match(name):
        raise HandlerConfigError(f"{param}={name!r}: not an interface name (1-15 chars)")
    return name


class TapDevice:
    """A non-persistent TAP device (gone when closed) with a virtio_net_hdr per frame."""

    def __init__(self, name: str):
        self.name = check_ifname(name, "tap")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise NetdevError(f"open /dev/net/tun for {name}: {exc.strerror}") from None
        try:
            ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(self.fd)
            raise NetdevError(f"create TAP {name} (TUNSETIFF): {exc.strerror}") from None
        os.set_blocking(self.fd, False)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: struct tpacket_req (PACKET_RX_RING) and the head of struct tpacket2_hdr.
TPACKET_REQ = struct.Struct("IIII")     # block_size, block_nr, frame_size, frame_nr
TPACKET2_HDR = struct.Struct("IIIHH")   # tp_status, tp_len, tp_snaplen, tp_mac, tp_net


class WireSocket:
    """An AF_PACKET raw socket on the wire: sees every frame, before the ingress hook.

    Frames are received through a ``PACKET_RX_RING`` (``TPACKET_V2``): the kernel
    copies each frame, with its virtio header, into the next free slot of a ring
    shared with the handler and flips the slot's ``tp_status`` to USER; the handler
    reads slots in order and hands each back (status KERNEL) when done. Like a NIC's
    receive ring, this costs no system call per frame while frames keep coming;
    :meth:`next_frame` returns the bounds of the next frame in :attr:`ring`. A frame
    larger than a slot (a GSO frame, should an offload still be on) is also queued
    whole on the socket (``PACKET_COPY_THRESH``, status COPY) and read with ``recv``.
    Frames are sent with ``send`` (through the wire's qdisc, so shaping applies).
    """

    def __init__(self, ifname: str, mtu: int = 1500, rcvbuf: int = 8 << 20,
                 ring_frames: int = 4096):
        self.name = ifname
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except OSError as exc:
            raise NetdevError(f"raw socket on {ifname}: {exc.strerror}") from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, rcvbuf)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
            # A slot holds tpacket2_hdr + sockaddr_ll + virtio header + the frame.
            self.frame_size = 1 << (mtu + ETH_HLEN_VLAN + 128).bit_length()
            per_block = max(1, (64 << 10) // self.frame_size)
            block_size = per_block * self.frame_size
            blocks = max(1, ring_frames // per_block)
            self.frames = blocks * per_block
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING,
                            TPACKET_REQ.pack(block_size, blocks, self.frame_size, self.frames))
            self.ring = mmap.mmap(sock.fileno(), block_size * blocks,
                                  mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((ifname, ETH_P_ALL))
        except OSError as exc:
            sock.close()
            raise NetdevError(f"raw socket on {ifname} (ring, bind): {exc.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.view = memoryview(self.ring)
        self.missed = 0         # frames the kernel could not put in a full ring

    def read_missed(self) -> int:
        """Frames dropped so far because the ring was full (``rx_missed_errors``).

        ``PACKET_STATISTICS`` resets on each read, so the total is kept here.
        """
        packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.missed += drops
        return self.missed

    def close(self) -> None:
        self.view.release()
        self.ring.close()
        self.sock.close()


@dataclass
class WireState:
    """What attach changed on the wire, so that detach can put it back."""

    mac: str
    mtu: int
    addrs: list[dict] = field(default_factory=list)    # ip -j addr: addr_info entries
    routes: list[dict] = field(default_factory=list)   # ip -j route, not proto kernel
    sysctls: dict[str, str] = field(default_factory=dict)


def _ip_json(args: list[str], where: str) -> list:
    out = netns.run(["ip", "-j", *args], where=where)
    try:
        return json.loads(out or "[]")
    except json.JSONDecodeError:
        raise NetdevError(f"{where}: ip -j {' '.join(args)} printed no JSON") from None


def _route_argv(r: dict, dev: str) -> list[str]:
    argv = [r.get("dst", "default")]
    if "gateway" in r:
        argv += ["via", r["gateway"]]
    argv += ["dev", dev]
    for key, opt in (("metric", "metric"), ("prefsrc", "src"), ("scope", "scope"),
                     ("protocol", "proto")):
        if key in r and not (key == "scope" and r[key] == "global"):
            argv += [opt, str(r[key])]
    return argv


class Attachment:
    """Moves the client's identity from the wire to the TAP device, and back.

    Runs in the calling thread's network namespace (see :mod:`netns`).
    """

    def __init__(self, wire: str, tap: str, run_id: str):
        self.wire = check_ifname(wire, "wire")
        self.tap_name = check_ifname(tap, "tap")
        if wire == tap:
            raise HandlerConfigError(f"wire and tap are both {wire!r}")
        self.run_id = run_id
        self.nft_table = "tb_" + re.sub(r"[^A-Za-z0-9_]", "_", f"{run_id}_{wire}")
        self.state: Optional[WireState] = None
        self.tap: Optional[TapDevice] = None
        self.sock: Optional[WireSocket] = None
        self._isolated = False

    # -- attach ---------------------------------------------------------------------

    def attach(self) -> None:
        where = f"attach {self.wire}->{self.tap_name}"
        try:
            self.state = self._snapshot(where)
            self._isolate(where)
            self.sock = WireSocket(self.wire, mtu=self.state.mtu)
            self.tap = TapDevice(self.tap_name)
            self._configure_tap(where)
            self._move_identity(where)
        except BaseException:
            self.detach()
            raise

    def _snapshot(self, where: str) -> WireState:
        links = _ip_json(["link", "show", "dev", self.wire], f"{where}: read link")
        if not links:
            raise AttachError(f"{where}: no interface {self.wire!r} here")
        link = links[0]
        addrs = _ip_json(["addr", "show", "dev", self.wire], f"{where}: read addresses")
        infos = [a for a in addrs[0].get("addr_info", []) if a.get("scope") != "link"]
        routes = _ip_json(["route", "show", "dev", self.wire], f"{where}: read routes")
        routes = [r for r in routes if r.get("protocol") != "kernel"]
        sysctls = {}
        for key in (f"net/ipv6/conf/{self.wire}/disable_ipv6",
                    f"net/ipv4/conf/{self.wire}/arp_ignore"):
            try:
                sysctls[key] = netns.read_sysctl(key)
            except OSError:
                pass  # IPv6 compiled out: nothing to restore
        return WireState(mac=link["address"], mtu=int(link["mtu"]), addrs=infos,
                         routes=routes, sysctls=sysctls)

    def _isolate(self, where: str) -> None:
        assert self.state is not None
        for key in self.state.sysctls:
            value = "1" if key.endswith("disable_ipv6") else "8"
            netns.write_sysctl(key, value, where=f"{where}: isolate wire")
        script = (f'add table netdev {self.nft_table} {{ comment "testbed:{self.run_id}"; }}\n'
                  f'add chain netdev {self.nft_table} wire_ingress {{ type filter hook ingress '
                  f'device "{self.wire}" priority -500; policy drop; }}\n')
        netns.run(["nft", "-f", "-"], stdin=script, where=f"{where}: nft ingress drop")
        self._isolated = True

    def _configure_tap(self, where: str) -> None:
        assert self.state is not None
        st = self.state
        v6 = f"net/ipv6/conf/{self.wire}/disable_ipv6"
        if v6 in st.sysctls:   # the TAP speaks IPv6 exactly when the wire did
            netns.write_sysctl(f"net/ipv6/conf/{self.tap_name}/disable_ipv6",
                               st.sysctls[v6], where=f"{where}: tap ipv6")
        netns.run(["ip", "link", "set", "dev", self.tap_name, "address", st.mac,
                   "mtu", str(st.mtu), "up"], where=f"{where}: configure tap")
        netns.run(["ip", "link", "set", "dev", self.tap_name, "alias", f"testbed:{self.run_id}"],
                  where=f"{where}: tag tap")

    def _move_identity(self, where: str) -> None:
        assert self.state is not None
        for a in self.state.addrs:
            cidr = f"{a['local']}/{a['prefixlen']}"
            netns.run(["ip", "addr", "del", cidr, "dev", self.wire], where=f"{where}: move {cidr}")
            netns.run(["ip", "addr", "add", cidr, *(["brd", a["broadcast"]] if "broadcast" in a else []),
                       "dev", self.tap_name], where=f"{where}: move {cidr}")
        for r in self.state.routes:
            netns.run(["ip", "route", "replace", *_route_argv(r, self.tap_name)],
                      where=f"{where}: move route {r.get('dst')}")
        netns.run(["ip", "neigh", "flush", "dev", self.wire], check=False, where=where)

    # -- detach ---------------------------------------------------------------------

    def detach(self) -> None:
        """Undo attach (any part of it that was done). Idempotent."""
        where = f"detach {self.wire}<-{self.tap_name}"
        errors: list[str] = []
        if self.tap is not None:
            self.tap.close()             # the TAP, its addresses and routes vanish
            self.tap = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._isolated:
            try:
                netns.run(["nft", "delete", "table", "netdev", self.nft_table],
                          where=f"{where}: remove nft table")
            except NetdevError as exc:
                errors.append(str(exc))
            self._isolated = False
        st, self.state = self.state, None
        if st is not None:
            errors += self._restore(st, where)
        if errors:
            raise AttachError("; ".join(errors))

    def _restore(self, st: WireState, where: str) -> list[str]:
        if not netns.run(["ip", "-o", "link", "show", "dev", self.wire], check=False, where=where):
            return []        # the wire itself is gone (host torn down): nothing to give back
        errors = []
        steps: list[tuple[list[str], str]] = []
        for a in st.addrs:
            cidr = f"{a['local']}/{a['prefixlen']}"
            steps.append((["ip", "addr", "replace", cidr,
                           *(["brd", a["broadcast"]] if "broadcast" in a else []),
                           "dev", self.wire], f"restore {cidr}"))
        for r in st.routes:
            steps.append((["ip", "route", "replace", *_route_argv(r, self.wire)],
                          f"restore route {r.get('dst')}"))
        for key, value in st.sysctls.items():
            try:
                netns.write_sysctl(key, value, where=where)
            except NetdevError as exc:
                errors.append(str(exc))
        for argv, what in steps:
            try:
                netns.run(argv, where=f"{where}: {what}")
            except NetdevError as exc:
                errors.append(str(exc))
        return errors
