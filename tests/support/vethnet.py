"""Small real networks for the handler's tests and benchmark: namespaces and veths.

``VethNet(["peer"])`` gives ``tb-<run>-client`` and ``tb-<run>-peer`` joined by one veth
(``client-eth0`` <-> ``peer-eth0``); with more hosts, a bridge in its own namespace
``tb-<run>-sw`` joins them all. Addresses: client 10.0.0.1, then 10.0.0.2, ... in
host order, /24. Offloads are off on every host interface, as the backend sets them.
Everything is removed by :meth:`VethNet.close` (deleting a namespace deletes its veths).

Each topology is a run of its own (:class:`testbed.runctx.RunContext`): its state file
marks the namespaces as alive, so another test's ``testbed clean`` leaves them alone,
and the run's sweep removes whatever a failed test left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from typing import Sequence

from testbed.runctx import RunContext

OFFLOADS = ["tx", "off", "tso", "off", "gso", "off", "gro", "off"]


def sh(*argv: str, check: bool = True, timeout: float = 20) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p.stdout


class VethNet:
    def __init__(self, hosts: Sequence[str] = ("peer",), offloads_off: bool = True,
                 ipv6: bool = False):
        self.ipv6 = ipv6
        self._tmp = tempfile.TemporaryDirectory(prefix="tb-netdev-")
        self.ctx = RunContext.create(base_dir=self._tmp.name, name="netdev-test",
                                     clean_stale=False)
        self.run = self.ctx.id
        self.names = ["client", *hosts]
        self.ns = {h: self.ctx.netns_name(h) for h in self.names}
        self.ip = {h: f"10.0.0.{i + 1}" for i, h in enumerate(self.names)}
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []
        try:
            self._build(offloads_off)
        except BaseException:
            self.close()
            raise

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        if not self.ipv6:   # quiet links: no router solicitations, no MLD reports
            sh("ip", "netns", "exec", name, "sysctl", "-q", "-w",
               "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")

    def _build(self, offloads_off: bool) -> None:
        for h in self.names:
            self._netns(self.ns[h])
        if len(self.names) == 2:
            a, b = self.names
            sh("ip", "link", "add", f"{a}-eth0", "netns", self.ns[a], "type", "veth",
               "peer", "name", f"{b}-eth0", "netns", self.ns[b])
        else:
            sw = self.ctx.netns_name("sw")
            self._netns(sw)
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
            for h in self.names:
                sh("ip", "link", "add", f"{h}-eth0", "netns", self.ns[h], "type", "veth",
                   "peer", "name", f"s-{h}", "netns", sw)
                sh("ip", "-n", sw, "link", "set", f"s-{h}", "master", "br0", "up")
                if offloads_off:
                    sh("ip", "netns", "exec", sw, "ethtool", "-K", f"s-{h}", *OFFLOADS)
        for h in self.names:
            ns, dev = self.ns[h], f"{h}-eth0"
            sh("ip", "-n", ns, "addr", "add", f"{self.ip[h]}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            if offloads_off:
                sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, *OFFLOADS)

    def exec(self, host: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return sh("ip", "netns", "exec", self.ns[host], *argv, check=check, timeout=timeout)

    def popen(self, host: str, *argv: str, **kw) -> subprocess.Popen:
        env = dict(os.environ, TESTBED_RUN=self.run)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[host], *argv], env=env,
                             stdout=kw.pop("stdout", subprocess.DEVNULL),
                             stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(3)
        self.procs.clear()
        for ns in reversed(self._made):
            sh("ip", "netns", "del", ns, check=False)
        self._made.clear()
        self.ctx.close()
        self._tmp.cleanup()
