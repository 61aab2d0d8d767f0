"""The tests' support package: what several test files share, in one place instead of tests
importing each other.  Here: shell and polling helpers, RFC 1071 checksums, the skips of tests
that need root or tools, namespaces of our own, the daemon implementations, and the data-plane
test bench (`Plane`): a DataPlane on a TUN -- a real one in a namespace (root), or
wgfast.tun.SocketTun standing in for it (no root) -- with real UDP sockets, a keypair installed
and a "remote" socket playing the peer.  Its submodules, by concept: support.device
(in-process Devices), support.daemon (wgfast-daemon as a process, its metrics) and
support.protocol (the protocol core without I/O).  The fixtures built from these live in
conftest.py.  Over ~400 lines because the bench is one thing every data-plane test stands on.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import nacl.bindings as aead
import pytest

from wgfast.dataplane import DataPlane
from wgfast.lab.netns import (
    WGFAST,
    WGFAST_NO_OFFLOADS,
    WIREGUARD_GO,
    Implementation,
    inside,
)
from wgfast.tun import SocketTun

# ---- shell, polling, checksums ----------------------------------------------------------------


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=check)


def until(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll cond until it holds or the time is up (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def inet_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, written independently of the C code it checks."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes) -> int:
    """The Internet checksum to store (0 when data already carries a valid one)."""
    return ~inet_sum(data) & 0xFFFF


# ---- what a test needs from the machine -------------------------------------------------------

# Every namespace/interface a namespace test creates starts with this prefix (unique per runner).
NETNS_PREFIX = os.environ.get("WGFAST_NETNS_PREFIX", "wgt")

IMPLEMENTATIONS: dict[str, Implementation] = {
    "wireguard-go": WIREGUARD_GO,
    "wgfast": WGFAST,
    "wgfast-nooff": WGFAST_NO_OFFLOADS,
}


def netns_unavailable() -> str | None:
    """Why the namespace topologies cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    for tool in ("ip", "wg", "ping"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (see install.sh)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def require_impl(name: str) -> Implementation:
    """The implementation, or skip the test with the reason it cannot run here."""
    impl = IMPLEMENTATIONS[name]
    reason = impl.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return impl


def tun_unavailable(*tools: str) -> str:
    """Why a test of a real TUN in a namespace of its own cannot run here ("" = it can)."""
    missing = [t for t in ("ip", *tools) if shutil.which(t) is None]
    return ("needs root" if os.geteuid() != 0 else
            "needs /dev/net/tun" if not os.path.exists("/dev/net/tun") else
            f"needs {', '.join(missing)}" if missing else "")


def needs_tun(*tools: str) -> pytest.MarkDecorator:
    """Skip unless we are root with /dev/net/tun, iproute2 and the named tools."""
    reason = tun_unavailable(*tools)
    return pytest.mark.skipif(bool(reason), reason=reason or "ok")


needs_root = needs_tun()
# Namespaces alone (no TUN): root and iproute2.
needs_netns = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                 reason="needs root and iproute2 (network namespaces)")


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A fresh namespace with lo up and IPv6 off (no router solicitations on the TUN).  Skips
    the test that asks for one without root: only root may create namespaces."""
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a network namespace)")
    sh("ip", "netns", "del", name, check=False)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


# ---- wire formats, built independently of the C code ------------------------------------------

LOCAL = "10.66.0.1"           # the TUN's address (this host, inside the tunnel)
PEER_IP = "10.66.0.2"         # the peer's allowed IP
OTHER_IP = "10.66.0.4"        # peer 1's allowed IP (peer 1 has no keypair)
UNROUTED = "10.66.0.3"        # in the TUN's subnet, owned by no peer
LOCAL6, PEER_IP6 = "fd00:66::1", "fd00:66::2"     # the same two, inside the tunnel over IPv6
LOCAL_INDEX, REMOTE_INDEX = 0x1111, 0x2222

# The plane's handshake keys (any 32 bytes do: C only needs them to agree with the sender).
MAC1_KEY, COOKIE_KEY = os.urandom(32), os.urandom(32)

# Exact sizes of the handshake messages (initiation, response, cookie reply), whitepaper 5.4.
HANDSHAKE_SIZES = {1: 148, 2: 92, 3: 64}


def with_mac1(msg: bytes, key: bytes = MAC1_KEY) -> bytes:
    """msg (an initiation or response) with a valid mac1 under key and a zero mac2."""
    off = len(msg) - 32
    m1 = hashlib.blake2s(msg[:off], key=key, digest_size=16).digest()
    return msg[:off] + m1 + bytes(16)


def udp4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0: allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0x4000, 64, 17, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:]
    return hdr + udp


def udp6(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv6/UDP packet with its (mandatory) UDP checksum."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    ulen = 8 + len(payload)
    pseudo = s + d + struct.pack("!IxxxB", ulen, 17)
    c = inet_csum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, ulen, c) + payload
    return struct.pack("!IHBB", 6 << 28, ulen, 17, 64) + s + d + udp


def seal(key: bytes, receiver: int, counter: int, plaintext: bytes) -> bytes:
    """A transport message built by PyNaCl (whitepaper 5.4.6), independent of the C code."""
    padded = plaintext + bytes(-len(plaintext) % 16)
    nonce = bytes(4) + counter.to_bytes(8, "little")
    ct = aead.crypto_aead_chacha20poly1305_ietf_encrypt(padded, None, nonce, key)
    return bytes([4, 0, 0, 0]) + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little") + ct


def unseal(key: bytes, msg: bytes) -> tuple[int, int, bytes]:
    """(receiver, counter, padded plaintext) of a transport message, opened by PyNaCl."""
    assert msg[:4] == bytes([4, 0, 0, 0])
    receiver = int.from_bytes(msg[4:8], "little")
    counter = int.from_bytes(msg[8:16], "little")
    nonce = bytes(4) + msg[8:16]
    return receiver, counter, aead.crypto_aead_chacha20poly1305_ietf_decrypt(msg[16:], None,
                                                                              nonce, key)


# ---- the TUN stand-in -------------------------------------------------------------------------


# wgfast.tun.SocketTun is the stand-in: a SOCK_SEQPACKET socketpair keeps packet boundaries
# as a TUN without a vnet header does; send() injects a packet into the tunnel, recv() reads
# the next one the data plane wrote out of it.


def nothing_delivered(tun: SocketTun, wait: float = 0.2) -> bool:
    """True if no packet comes out of the stand-in within `wait` seconds."""
    return not select.select([tun.peer], [], [], wait)[0]


# ---- the data-plane bench -----------------------------------------------------------------------


@dataclass
class Plane:
    """A running DataPlane with a UDP socket on loopback and a "remote" UDP socket playing
    peer 0 (allowed IP 10.66.0.2/32, and fd00:66::2/128 on the stand-in; a current keypair;
    endpoint = remote).  Peer 1 (allowed IP 10.66.0.4/32) has no keypair.

    On a real TUN (`ns` set): the TUN is 10.66.0.1/24 in namespace `ns` and `app` is an
    application socket inside the tunnel.  On the stand-in (`ns` None): `tun` is a
    SocketTun and there is no kernel routing, so tests inject and read IP packets."""

    ns: str | None
    dp: DataPlane
    tun: object                  # a wgfast.tun.Tun or a SocketTun
    sock: socket.socket          # the data plane's
    remote: socket.socket        # the peer's outer socket
    app: socket.socket | None    # an application on this host, inside the tunnel (real TUN)
    send_key: bytes              # the data plane seals with it (remote opens)
    recv_key: bytes              # the remote seals with it (data plane opens)
    family: int = socket.AF_INET
    extra: list[socket.socket] = field(default_factory=list)

    @property
    def addr(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def udp_socket(self) -> socket.socket:
        """Another UDP socket next to the remote (another source on the outside)."""
        with inside(self.ns) if self.ns else contextlib.nullcontext():
            s = socket.socket(self.family, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1" if self.family == socket.AF_INET else "::1", 0))
        s.settimeout(5)
        self.extra.append(s)
        return s

    def recv_remote(self) -> bytes:
        """The next transport message the data plane sent to the remote."""
        while True:
            data = self.remote.recv(65536)
            if data[:1] == b"\x04":
                return data

    def wait_events(self, etype: int, n: int = 1) -> list[tuple]:
        got: list[tuple] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            select.select([self.dp.eventfd()], [], [], 0.1)
            got += [e for e in self.dp.pop_events() if e[0] == etype]
            if len(got) >= n:
                break
        return got

    def drops(self, reason: int) -> int:
        return int(self.dp.drops[reason])

    def dropped(self) -> int:
        return sum(int(x) for x in self.dp.drops)


def _configure(dp: DataPlane, remote: socket.socket, v6: bool) -> tuple[bytes, bytes]:
    """Peers 0 and 1 as Plane describes them; returns (send_key, recv_key) of peer 0."""
    dp.set_handshake_keys(MAC1_KEY, COOKIE_KEY)
    send_key, recv_key = os.urandom(32), os.urandom(32)
    dp.peer_add(0)
    dp.aip_insert(0, ipaddress.ip_network(f"{PEER_IP}/32"))
    if v6:
        dp.aip_insert(0, ipaddress.ip_network(f"{PEER_IP6}/128"))
    dp.keypair_install(0, LOCAL_INDEX, REMOTE_INDEX, send_key, recv_key, time.monotonic(),
                       initiator=True, current=True)
    dp.set_endpoint(0, remote.getsockname()[:2])
    dp.peer_add(1)
    dp.aip_insert(1, ipaddress.ip_network(f"{OTHER_IP}/32"))
    return send_key, recv_key


@contextlib.contextmanager
def _running(plane: Plane) -> Iterator[Plane]:
    """A started plane, stopped again (and the sockets a test added closed) at the end."""
    try:
        yield plane
    finally:
        plane.dp.stop()
        for s in plane.extra:
            s.close()


@contextlib.contextmanager
def tun_plane(ns_name: str, tun_name: str) -> Iterator[Plane]:
    """A Plane on a real TUN in a namespace of its own (root)."""
    from wgfast.tun import Tun

    if tun_unavailable():
        pytest.skip(tun_unavailable())
    with netns(ns_name) as ns:
        with inside(ns):
            tun = Tun(tun_name, mtu=1420, nonblocking=True, up=True)
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            sh("ip", "-n", ns, "addr", "add", f"{LOCAL}/24", "dev", tun_name)
            sock, remote, app = socks
            sock.bind(("127.0.0.1", 0))
            remote.bind(("127.0.0.1", 0))
            app.bind((LOCAL, 0))
            for s in (remote, app):
                s.settimeout(5)
            dp = DataPlane(max_peers=4, mtu=1420)
            send_key, recv_key = _configure(dp, remote, v6=False)
            dp.start(tun.fileno(), sock.fileno(), -1)
            with _running(Plane(ns, dp, tun, sock, remote, app, send_key, recv_key)) as plane:
                yield plane
        finally:
            for s in socks:
                s.close()
            tun.close()


@contextlib.contextmanager
def seqpacket_plane(family: int = socket.AF_INET) -> Iterator[Plane]:
    """A Plane on the TUN stand-in with UDP on 127.0.0.1 (or ::1): no root, no namespace.
    Offloads are off (the stand-in has no vnet header)."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    tun = SocketTun()
    sock, remote = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family,
                                                                        socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        remote.bind((host, 0))
        remote.settimeout(5)
        dp = DataPlane(max_peers=4, mtu=1420)
        send_key, recv_key = _configure(dp, remote, v6=True)
        dp.set_offloads(False, False, False)
        fds = (sock.fileno(), -1) if family == socket.AF_INET else (-1, sock.fileno())
        dp.start(tun.fileno(), *fds)
        with _running(Plane(None, dp, tun, sock, remote, None, send_key, recv_key,
                            family)) as plane:
            yield plane
    finally:
        sock.close()
        remote.close()
        tun.close()


@dataclass
class End:
    """One side of a loopback pair: a DataPlane on the TUN stand-in, its UDP socket, and its
    own address inside the tunnel."""

    dp: DataPlane
    tun: SocketTun
    sock: socket.socket
    inner4: str
    inner6: str

    def drops(self, reason: int) -> int:
        return int(self.dp.drops[reason])


@contextlib.contextmanager
def loopback_pair(family: int = socket.AF_INET) -> Iterator[tuple[End, End]]:
    """Two DataPlanes that are each other's peer 0 over real UDP on 127.0.0.1 (or ::1), each
    on a TUN stand-in, with one keypair installed on both sides (a's sending key is b's
    receiving key and the other way round), as a completed handshake leaves them.  Inside
    the tunnel a is 10.66.0.1 / fd00:66::1 and b 10.66.0.2 / fd00:66::2."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    k_ab, k_ba = os.urandom(32), os.urandom(32)
    ends: list[End] = []
    try:
        for inner4, inner6 in ((LOCAL, LOCAL6), (PEER_IP, PEER_IP6)):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            ends.append(End(DataPlane(max_peers=2, mtu=1420), SocketTun(), sock, inner4,
                            inner6))
        a, b = ends
        now = time.monotonic()
        for me, other, send, recv, idx in ((a, b, k_ab, k_ba, (0xA1, 0xB1)),
                                           (b, a, k_ba, k_ab, (0xB1, 0xA1))):
            me.dp.peer_add(0)
            me.dp.aip_insert(0, ipaddress.ip_network(f"{other.inner4}/32"))
            me.dp.aip_insert(0, ipaddress.ip_network(f"{other.inner6}/128"))
            me.dp.keypair_install(0, idx[0], idx[1], send, recv, now,
                                  initiator=me is a, current=True)
            me.dp.set_endpoint(0, other.sock.getsockname()[:2])
            me.dp.set_offloads(False, False, False)
        for e in ends:
            fds = (e.sock.fileno(), -1) if family == socket.AF_INET else (-1, e.sock.fileno())
            e.dp.start(e.tun.fileno(), *fds)
        yield a, b
    finally:
        for e in ends:
            e.dp.stop()
        for e in ends:
            e.sock.close()
            e.tun.close()


# ---- sticky sources: a namespace with several local addresses (test_send, test_receive,
# test_device) ------------------------------------------------------------------------------------

IP_PKTINFO = 8
# Local addresses on lo of a namespace of our own: two the peer may reach us on (A, B) and
# the peer's own (R), each a /32 or /128 so routing's own choice towards R is R itself.
ADDRS = {4: ("10.77.0.5", "10.77.0.6", "10.77.0.9"),
         6: ("fd00:77::5", "fd00:77::6", "fd00:77::9")}


@dataclass
class Multi:
    ns: str
    dp: DataPlane
    socks: dict[int, socket.socket]     # the data plane's, bound to the wildcard address
    remote: dict[int, socket.socket]    # the peer's, on R
    app: socket.socket
    send_key: bytes
    recv_key: bytes
    lo_index: int

    def port(self, fam: int) -> int:
        return int(self.socks[fam].getsockname()[1])

    def remote_ep(self, fam: int) -> tuple[str, int]:
        return self.remote[fam].getsockname()[:2]

    def recv(self, fam: int) -> tuple[bytes, str]:
        """The next transport message at the peer and the address it came from."""
        while True:
            data, src = self.remote[fam].recvfrom(65536)
            if data[:1] == b"\x04":
                assert src[1] == self.port(fam)
                return data, src[0]
