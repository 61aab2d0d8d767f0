"""wgfast.dataplane.DataPlane and dataplane.c: the native handles; peers, endpoints, byte
counters, what C hands to Python (handshake queue, control flags) and stopping the I/O loops --
with a real TUN and real UDP sockets in a namespace of our own, but without a Device.  The
`plane` fixture here is shared by test_send.py and test_receive.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nacl.bindings as aead
import pytest
from conftest import inet_csum, needs_tun, sh

from wgfast.dataplane import ADDR_DTYPE, DataPlane, ffi, lib
from wgfast.lab.netns import inside
from wgfast.tun import Tun

NS = "h6dp"
TUN_NAME = "h6tun0"
LOCAL = "10.66.0.1"           # the TUN's address (this host, inside the tunnel)
PEER_IP = "10.66.0.2"         # the peer's allowed IP
OTHER_IP = "10.66.0.4"        # peer 1's allowed IP (peer 1 has no keypair)
UNROUTED = "10.66.0.3"        # in the TUN's subnet, owned by no peer
LOCAL_INDEX, REMOTE_INDEX = 0x1111, 0x2222

needs_root = needs_tun()

# The plane's handshake keys (any 32 bytes do: C only needs them to agree with the sender).
MAC1_KEY, COOKIE_KEY = os.urandom(32), os.urandom(32)


def with_mac1(msg: bytes, key: bytes = MAC1_KEY) -> bytes:
    """msg (an initiation or response) with a valid mac1 under key and a zero mac2."""
    off = len(msg) - 32
    m1 = hashlib.blake2s(msg[:off], key=key, digest_size=16).digest()
    return msg[:off] + m1 + bytes(16)


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A fresh namespace with lo up and IPv6 off (no router solicitations on the TUN)."""
    sh("ip", "netns", "del", name, check=False)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def until(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll cond until it holds or the time is up (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def udp4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0: allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0x4000, 64, 17, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:]
    return hdr + udp


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


@dataclass
class Plane:
    """A DataPlane running on a TUN (10.66.0.1/24) and a UDP socket on 127.0.0.1, with a
    "remote" UDP socket playing the peer (id 0, allowed IP 10.66.0.2/32) and an application
    socket inside the tunnel on 10.66.0.1."""

    ns: str
    dp: DataPlane
    tun: Tun
    sock: socket.socket          # the data plane's
    remote: socket.socket        # the peer's outer socket
    app: socket.socket           # an application on this host, inside the tunnel
    send_key: bytes              # the data plane seals with it (remote opens)
    recv_key: bytes              # the remote seals with it (data plane opens)

    @property
    def addr(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def udp_socket(self) -> socket.socket:
        with inside(self.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
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


@pytest.fixture(name="plane")
def plane_fixture() -> Iterator[Plane]:
    with netns(NS) as ns:
        with inside(ns):
            tun = Tun(TUN_NAME, mtu=1420, nonblocking=True, up=True)
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            sh("ip", "-n", ns, "addr", "add", f"{LOCAL}/24", "dev", TUN_NAME)
            sock, remote, app = socks
            sock.bind(("127.0.0.1", 0))
            remote.bind(("127.0.0.1", 0))
            app.bind((LOCAL, 0))
            for s in (remote, app):
                s.settimeout(5)
            dp = DataPlane(max_peers=4, mtu=1420)
            dp.set_handshake_keys(MAC1_KEY, COOKIE_KEY)
            send_key, recv_key = os.urandom(32), os.urandom(32)
            dp.peer_add(0)
            dp.aip_insert(0, ipaddress.ip_network(f"{PEER_IP}/32"))
            dp.keypair_install(0, LOCAL_INDEX, REMOTE_INDEX, send_key, recv_key,
                               time.monotonic(), initiator=True, current=True)
            dp.set_endpoint(0, remote.getsockname())
            dp.peer_add(1)
            dp.aip_insert(1, ipaddress.ip_network(f"{OTHER_IP}/32"))
            dp.start(tun.fileno(), sock.fileno(), -1)
            try:
                yield Plane(ns, dp, tun, sock, remote, app, send_key, recv_key)
            finally:
                dp.stop()
        finally:
            for s in socks:
                s.close()
            tun.close()


# ---- tests that need no I/O -----------------------------------------------------------------

def test_peer_ids_endpoints_and_bytes() -> None:
    dp = DataPlane(max_peers=2)
    with pytest.raises(ValueError):
        dp.peer_add(2)
    dp.peer_add(1)
    assert dp.active[1] == 1 and dp.active[0] == 0
    assert dp.get_endpoint(1) is None
    for ep in [("192.0.2.7", 51820), ("2001:db8::1", 1), ("fe80::1%3", 65535)]:
        dp.set_endpoint(1, ep)
        assert dp.get_endpoint(1) == ep
    dp.set_endpoint(1, None)
    assert dp.get_endpoint(1) is None
    dp.add_bytes(1, tx=148, rx=92)
    dp.add_bytes(1, tx=32)
    assert (int(dp.tx_bytes[1]), int(dp.rx_bytes[1])) == (180, 92)
    assert int(dp.tx_bytes[0]) == 0


def test_peer_remove_forgets_keys_ips_endpoint_and_clocks() -> None:
    dp = DataPlane(max_peers=4)
    dp.peer_add(2)
    dp.keypair_install(2, 77, 88, os.urandom(32), os.urandom(32), 1.0, True, True)
    dp.keypair_install(2, 78, 89, os.urandom(32), os.urandom(32), 1.0, False, False)
    net = ipaddress.ip_network("10.9.0.0/16")
    dp.aip_insert(2, net)
    dp.set_endpoint(2, ("192.0.2.1", 9))
    dp.add_bytes(2, tx=1)
    assert dp.keypair_current(2) == 77 and dp.aip_lookup(ipaddress.ip_address("10.9.1.1")) == 2
    dp.peer_remove(2)
    assert dp.active[2] == 0 and dp.keypair_current(2) is None
    assert dp.aip_lookup(ipaddress.ip_address("10.9.1.1")) is None
    assert dp.get_endpoint(2) is None and int(dp.tx_bytes[2]) == 0
    # Both local indices are free again: reinstalling them works.
    dp.peer_add(2)
    dp.keypair_install(2, 77, 1, os.urandom(32), os.urandom(32), 1.0, True, True)
    dp.keypair_install(2, 78, 1, os.urandom(32), os.urandom(32), 1.0, True, False)
    with pytest.raises(OSError):
        dp.keypair_install(2, 78, 1, os.urandom(32), os.urandom(32), 1.0, True, False)


def test_send_packet_without_key_or_endpoint() -> None:
    dp = DataPlane(max_peers=2)
    dp.peer_add(0)
    assert dp.send_packet(0, b"", time.monotonic()) == lib.WG_DROP_NO_KEY
    assert dp.send_packet(5, b"", time.monotonic()) == lib.WG_DROP_NO_ROUTE
    dp.keypair_install(0, 1, 2, os.urandom(32), os.urandom(32), time.monotonic(), True, True)
    before = int(dp.drops[lib.WG_DROP_NO_ENDPOINT])
    assert dp.send_packet(0, b"", time.monotonic()) == lib.WG_DROP_NO_ENDPOINT
    assert int(dp.drops[lib.WG_DROP_NO_ENDPOINT]) == before + 1
    assert dp.send_packet(0, bytes(1421), time.monotonic()) == lib.WG_DROP_TOO_BIG


# ---- with the I/O loops ---------------------------------------------------------------------

@needs_root
def test_keepalive_via_send_packet(plane: Plane) -> None:
    now = time.monotonic()
    assert plane.dp.send_packet(0, b"", now) == lib.WG_OK
    msg = plane.recv_remote()
    receiver, counter, pt = unseal(plane.send_key, msg)
    assert (receiver, counter, pt, len(msg)) == (REMOTE_INDEX, 0, b"", lib.WG_MIN_DATA_LEN)
    c = plane.dp.clocks
    # A keepalive is authenticated traffic but not data.
    assert c["last_auth_sent"][0] == now and c["last_data_sent"][0] == 0
    assert int(plane.dp.tx_bytes[0]) == lib.WG_MIN_DATA_LEN


@needs_root
def test_handshake_queue_overflow_is_counted(plane: Plane) -> None:
    """More valid-mac1 initiations from one source than its share of the handshake queue
    holds, with nobody popping: the excess is counted as WG_DROP_EVENTS_FULL and what was
    queued is intact, in order.  (So many messages put the device under load: it would then
    answer with cookies, so the burst is paced below the queue's 1/8 mark.)"""
    sender = plane.udp_socket()
    src = sender.getsockname()
    full = lib.WG_DROP_EVENTS_FULL
    total = 40
    try:
        for k in range(total):
            sender.sendto(with_mac1((bytes([1, 0, 0, 0]) + k.to_bytes(4, "big")).ljust(148,
                                                                                 b"\0")),
                          plane.addr)
        assert until(lambda: plane.drops(full) + int(lib.wg_hs_queued(plane.dp.handle))
                     >= total)
        events = plane.dp.pop_events()
    finally:
        sender.close()
    hs = [e for e in events if e[0] == lib.WG_EV_HANDSHAKE]
    assert 0 < len(hs) < total and len(hs) + plane.drops(full) == total
    assert [int.from_bytes(e[4][4:8], "big") for e in hs] == list(range(len(hs)))
    assert all(e[3] == src for e in hs)
    # Room again: a new one is queued.
    plane.remote.sendto(with_mac1(bytes([2, 0, 0, 0]).ljust(92, b"\0")), plane.addr)
    assert plane.wait_events(lib.WG_EV_HANDSHAKE)


@needs_root
def test_bad_mac1_never_reaches_python(plane: Plane) -> None:
    """Garbage initiations (mac1 invalid) are a counted drop, never an event; a good one
    right after them is queued."""
    for _ in range(50):
        plane.remote.sendto(bytes([1, 0, 0, 0]) + os.urandom(144), plane.addr)
    assert until(lambda: plane.drops(lib.WG_DROP_MAC1) >= 50)
    good = with_mac1(bytes([1, 0, 0, 0]) + os.urandom(144))
    plane.remote.sendto(good, plane.addr)
    evs = plane.wait_events(lib.WG_EV_HANDSHAKE)
    assert [e[4] for e in evs] == [good]


@needs_root
def test_handshake_type_of_the_wrong_size_never_reaches_python(plane: Plane) -> None:
    short = lib.WG_DROP_SHORT
    before = plane.drops(short)
    for mtype, size in ((1, 147), (1, 149), (2, 91), (3, 65), (3, 4)):
        plane.remote.sendto(bytes([mtype, 0, 0, 0]).ljust(size, b"\0"), plane.addr)
    assert until(lambda: plane.drops(short) >= before + 5)
    plane.remote.sendto(bytes([3, 0, 0, 0]).ljust(64, b"\0"), plane.addr)
    evs = plane.wait_events(lib.WG_EV_HANDSHAKE)
    assert [len(e[4]) for e in evs if e[0] == lib.WG_EV_HANDSHAKE] == [64]


@needs_root
def test_stop_ends_loops_and_resume_allows_new_ones(plane: Plane) -> None:
    dp = plane.dp
    dp.stop()
    threads = [threading.Thread(target=lib.wg_run_send, args=(dp.handle,)),
               threading.Thread(target=lib.wg_run_receive, args=(dp.handle, plane.sock.fileno()))]
    lib.wg_dp_resume(dp.handle)
    for t in threads:
        t.start()
    # The loops run: a keepalive goes out, a message comes in.
    assert dp.send_packet(0, b"", time.monotonic()) == lib.WG_OK
    plane.recv_remote()
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 0, b""), plane.addr)
    assert until(lambda: dp.rx_bytes[0] > 0)
    for t in threads:
        assert t.is_alive()
    lib.wg_dp_stop(dp.handle)
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    # Stopped: nothing is read any more.
    rx = int(dp.rx_bytes[0])
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 1, b""), plane.addr)
    time.sleep(0.2)
    assert int(dp.rx_bytes[0]) == rx
    lib.wg_dp_resume(dp.handle)


def test_batch_and_event_counters(plane: Plane) -> None:
    """wg_dp_batches counts each received datagram once, in whatever batches it came, and
    events_pending is the handshake queue Python has not popped yet (messages that passed
    C's mac1 check)."""
    udp = plane.dp.batches[lib.WG_BATCH_UDP]
    before_sum, before_n = int(udp[lib.WG_BATCH_BUCKETS]), int(udp[:lib.WG_BATCH_BUCKETS].sum())
    plane.dp.pop_events()
    sender = plane.udp_socket()
    try:
        for k in range(5):
            sender.sendto(with_mac1((bytes([1, 0, 0, 0]) + k.to_bytes(4, "big")).ljust(148, b"\0")),
                          plane.addr)
        assert until(lambda: plane.dp.events_pending() == 5)
    finally:
        sender.close()
    assert int(udp[lib.WG_BATCH_BUCKETS]) - before_sum == 5
    batches = int(udp[:lib.WG_BATCH_BUCKETS].sum()) - before_n
    assert 1 <= batches <= 5
    assert len(plane.dp.pop_events()) == 5 and plane.dp.events_pending() == 0


# ---- a peer id released while a batch holds it (issue 10.4c) ---------------------------------

def _swap_peer0(plane: Plane, endpoint: tuple[str, int], aip: str) -> bytes:
    """Remove peer 0 and configure another peer under the same id (last in, first out), with
    keys of its own and `aip`; returns its sending key."""
    dp = plane.dp
    dp.peer_remove(0)
    dp.peer_add(0)
    key = os.urandom(32)
    dp.keypair_install(0, 0x3333, 0x4444, key, key, time.monotonic(), initiator=True,
                       current=True)
    dp.set_endpoint(0, endpoint)
    dp.aip_insert(0, ipaddress.ip_network(f"{aip}/32"))
    return key


@needs_root
def test_plaintext_routed_to_a_released_id_is_not_sealed_to_its_next_owner(plane: Plane) -> None:
    other = plane.udp_socket()          # the new owner of id 0
    other.settimeout(1.0)
    before = plane.drops(lib.WG_DROP_NO_ROUTE)
    plane.dp.test_delay(lib.WG_DELAY_SEND_ROUTED, 400_000)
    plane.app.sendto(b"for the old peer", (PEER_IP, 9))
    time.sleep(0.15)                    # the batch is routed to id 0 and waiting
    _swap_peer0(plane, other.getsockname(), PEER_IP)
    with pytest.raises(TimeoutError):
        other.recv(65536)               # nothing sealed under the new peer's key
    assert until(lambda: plane.drops(lib.WG_DROP_NO_ROUTE) > before)
    plane.dp.test_delay(lib.WG_DELAY_SEND_ROUTED, 0)
    plane.app.sendto(b"for the new peer", (PEER_IP, 9))
    assert other.recv(65536)[:1] == b"\x04"     # the new peer itself is reachable
    other.close()


@needs_root
def test_message_opened_for_a_released_id_is_not_credited_to_its_next_owner(
        plane: Plane) -> None:
    port = plane.app.getsockname()[1]
    plane.app.settimeout(1.0)
    before = plane.drops(lib.WG_DROP_NO_KEYPAIR)
    plane.dp.test_delay(lib.WG_DELAY_RECV_OPENED, 400_000)
    pkt = udp4(PEER_IP, 7, LOCAL, port, b"from the old peer")
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 0, pkt), plane.addr)
    time.sleep(0.15)                    # opened under the old peer's keypair, waiting
    # The new owner of id 0 has the same allowed IP: the source check alone would pass.
    _swap_peer0(plane, plane.remote.getsockname(), PEER_IP)
    with pytest.raises(TimeoutError):
        plane.app.recv(65536)
    assert until(lambda: plane.drops(lib.WG_DROP_NO_KEYPAIR) > before)
    assert plane.dp.get_endpoint(0) == plane.remote.getsockname()


# ---- the native module's handles, without a TUN ----
def test_addr_layout_matches_c() -> None:
    assert ffi.sizeof("wg_addr") == ADDR_DTYPE.itemsize == 44


def test_dp_lifecycle() -> None:
    dp = lib.wg_dp_new(8, 32, 1420)
    assert dp != ffi.NULL
    clocks = lib.wg_dp_clocks(dp)
    assert clocks.max_peers == 8
    assert lib.wg_peer_add(dp, 3) == 0
    assert clocks.active[3] == 1
    assert lib.wg_peer_add(dp, 8) < 0
    lib.wg_dp_free(dp)


def test_monotonic_clock_is_pythons() -> None:
    import time

    a = time.monotonic()
    b = lib.wg_now()
    c = time.monotonic()
    assert a <= b <= c
