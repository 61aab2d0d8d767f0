"""In-process Devices (wgfast.device) for the tests of test_device, test_device_config,
test_handshake and test_metrics: two devices in namespaces of their own joined by a veth pair
(root), and devices on SocketTuns joined over loopback UDP (no root).  Beside __init__,
which holds the data-plane bench these stand on; the fixtures built from them live in each test
file (they differ per file)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from support import inet_csum, netns, sh
from wgfast.device import Device
from wgfast.lab.netns import inside
from wgfast.noise import StaticIdentity
from wgfast.tun import SocketTun

# ---- as root: devices in namespaces of their own, joined by a veth pair ----------------------

UNDER = ("10.66.1.1", "10.66.1.2")      # veth
INNER = ("10.66.2.1", "10.66.2.2")      # tunnel


@contextlib.contextmanager
def device_in(ns: str, name: str) -> Iterator[Device]:
    """A started Device whose TUN, sockets and threads live in namespace ns."""
    dev = Device(name)
    try:
        with inside(ns):
            dev.open()
            dev.start()         # the control loop thread stays in ns (interface checks)
        yield dev
    finally:
        dev.close()


@dataclass
class Side:
    ns: str
    dev: Device
    me: StaticIdentity

    @property
    def peer_id(self) -> int:
        return next(iter(self.dev.by_id))


@contextlib.contextmanager
def pair() -> Iterator[tuple[Side, Side]]:
    tag = secrets.token_hex(2)
    with netns(f"h6a{tag}") as na, netns(f"h6b{tag}") as nb:
        sh("ip", "link", "add", f"h6va{tag}", "netns", na, "type", "veth", "peer", "name",
           f"h6vb{tag}", "netns", nb)
        for ns, veth, addr in ((na, f"h6va{tag}", UNDER[0]), (nb, f"h6vb{tag}", UNDER[1])):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            sh("ip", "-n", ns, "link", "set", veth, "up")
        with device_in(na, f"h6wa{tag}") as da, device_in(nb, f"h6wb{tag}") as db:
            sides = []
            for ns, dev, addr in ((na, da, INNER[0]), (nb, db, INNER[1])):
                me = StaticIdentity.generate()
                dev.configure(private_key=me.private)
                sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev.name)
                sh("ip", "-n", ns, "link", "set", dev.name, "up")
                sides.append(Side(ns, dev, me))
            yield sides[0], sides[1]


def ping(ns: str, addr: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2",
                           "-W", "3", addr], capture_output=True, text=True, timeout=30)


# ---- without root: devices on SocketTuns, joined over loopback UDP ---------------------------

LOOP_INNER = ("10.67.0.1", "10.67.0.2")


@dataclass
class LoopSide:
    dev: Device
    tun: SocketTun
    me: StaticIdentity
    uapi: str


def inner_udp(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet as the host would route it into the tunnel (UDP checksum 0)."""
    udp = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP,
                      0, socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:] + udp


@contextlib.contextmanager
def loop_device(tmp: str, name: str) -> Iterator[LoopSide]:
    tun = SocketTun(name)
    path = os.path.join(tmp, f"{name}.sock")
    dev = Device(name, tun=tun, listen=("127.0.0.1", "::1"), uapi_path=path)
    try:
        dev.start()
        me = StaticIdentity.generate()
        dev.configure(private_key=me.private)
        yield LoopSide(dev, tun, me, path)
    finally:
        dev.close()


def join(a: LoopSide, b: LoopSide, keepalive: int | None = None) -> None:
    a.dev.add_peer(b.me.public, endpoint=f"127.0.0.1:{b.dev.listen_port}",
                   allowed_ips=[f"{LOOP_INNER[1]}/32"], persistent_keepalive=keepalive)
    b.dev.add_peer(a.me.public, allowed_ips=[f"{LOOP_INNER[0]}/32"])     # learns a's endpoint
