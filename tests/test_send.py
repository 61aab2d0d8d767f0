"""send.c: packets the kernel routes into a real TUN come out of the data plane sealed on UDP to
the peer's endpoint (opened here by PyNaCl), or are counted/staged when they cannot be sent."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import sh
from test_dataplane import (  # noqa: F401  (plane is a fixture)
    LOCAL,
    LOCAL_INDEX,
    OTHER_IP,
    PEER_IP,
    REMOTE_INDEX,
    UNROUTED,
    Plane,
    needs_root,
    plane_fixture,
    unseal,
    until,
)

from wgfast.datapath import DataPlane, Sticky, lib
from wgfast.netns import inside
from wgfast.tun import Tun

pytestmark = needs_root


def test_routed_packets_sealed_to_endpoint(plane: Plane) -> None:
    port = plane.app.getsockname()[1]
    payloads = [bytes([k]) * (1 + 37 * k) for k in range(12)]
    for p in payloads:
        plane.app.sendto(p, (PEER_IP, 9999))
    counters = []
    total = 0
    for p in payloads:
        msg = plane.recv_remote()
        total += len(msg)
        receiver, counter, pt = unseal(plane.send_key, msg)
        assert receiver == REMOTE_INDEX
        counters.append(counter)
        # Padded to 16, the inner packet intact: our UDP datagram to the peer's address.
        assert len(pt) % 16 == 0
        ilen = int.from_bytes(pt[2:4], "big")
        assert pt[0] == 0x45 and ilen == 28 + len(p) and len(pt) - ilen < 16
        assert pt[ilen:] == bytes(len(pt) - ilen)
        assert pt[12:16] == ipaddress.IPv4Address(plane.app.getsockname()[0]).packed
        assert pt[16:20] == ipaddress.IPv4Address(PEER_IP).packed
        assert int.from_bytes(pt[20:22], "big") == port and pt[28:ilen] == p
    assert sorted(counters) == list(range(len(payloads)))
    c = plane.dp.clocks
    assert until(lambda: int(plane.dp.tx_bytes[0]) == total)
    assert c["last_data_sent"][0] > 0 and c["last_auth_sent"][0] >= c["last_data_sent"][0]
    assert 0 < c["pending_data_sent"][0] <= c["last_data_sent"][0]
    assert plane.drops(lib.WG_DROP_NO_ROUTE) == 0


def test_no_route_is_counted(plane: Plane) -> None:
    plane.app.sendto(b"lost", (UNROUTED, 9))
    assert until(lambda: plane.drops(lib.WG_DROP_NO_ROUTE) == 1)
    plane.app.sendto(b"found", (PEER_IP, 9))
    _, counter, pt = unseal(plane.send_key, plane.recv_remote())
    assert counter == 0 and pt[28:33] == b"found"      # nothing was sent for the first one


def test_peer_without_key_stages_and_asks_for_handshake(plane: Plane) -> None:
    plane.app.sendto(b"first", (OTHER_IP, 7))
    plane.app.sendto(b"second", (OTHER_IP, 7))
    staged = plane.wait_events(lib.WG_EV_STAGE, 2)
    # Popping took the NEED_HANDSHAKE events out with them: count them from a fresh sample.
    assert [e[1] for e in staged] == [1, 1]
    assert [e[4][28:] for e in staged] == [b"first", b"second"]
    assert all(e[4][16:20] == ipaddress.IPv4Address(OTHER_IP).packed for e in staged)
    assert plane.dp.want_handshake[1] == 1 and plane.dp.want_handshake[0] == 0
    assert plane.drops(lib.WG_DROP_NO_KEY) == 2
    assert int(plane.dp.tx_bytes[1]) == 0


def test_need_handshake_raised_once_per_second(plane: Plane) -> None:
    for k in range(5):
        plane.app.sendto(bytes([k]), (OTHER_IP, 7))
    assert until(lambda: plane.drops(lib.WG_DROP_NO_KEY) == 5)
    events = plane.dp.pop_events()
    kinds = [(e[0], e[1]) for e in events]
    assert kinds.count((lib.WG_EV_STAGE, 1)) == 5
    assert kinds.count((lib.WG_EV_NEED_HANDSHAKE, 1)) == 1


def test_no_endpoint_and_too_big(plane: Plane) -> None:
    plane.dp.set_endpoint(0, None)
    plane.app.sendto(b"nowhere", (PEER_IP, 9))
    assert until(lambda: plane.drops(lib.WG_DROP_NO_ENDPOINT) == 1)
    plane.dp.set_endpoint(0, plane.remote.getsockname())
    plane.dp.set_mtu(600)                   # the data plane's MTU below the TUN's
    plane.app.sendto(bytes(1000), (PEER_IP, 9))
    assert until(lambda: plane.drops(lib.WG_DROP_TOO_BIG) == 1)
    plane.app.sendto(b"fits", (PEER_IP, 9))
    _, _, pt = unseal(plane.send_key, plane.recv_remote())
    assert pt[28:32] == b"fits"


def test_aging_keypair_still_sends_and_asks_for_rekey(plane: Plane) -> None:
    """Our keypair past REKEY_AFTER_TIME (120 s): packets still go out under it, and C asks
    for a new handshake (whitepaper 6.2)."""
    plane.dp.keypair_remove(LOCAL_INDEX)
    plane.dp.keypair_install(0, 0x9001, 0x9002, plane.send_key, plane.recv_key,
                             time.monotonic() - 121, initiator=True, current=True)
    plane.dp.pop_events()
    plane.app.sendto(b"old key", (PEER_IP, 9))
    receiver, _, pt = unseal(plane.send_key, plane.recv_remote())
    assert receiver == 0x9002 and pt[28:35] == b"old key"
    evs = plane.wait_events(lib.WG_EV_NEED_HANDSHAKE)
    assert [e[1] for e in evs] == [0]


# ---- sticky source: replies leave from the local address the peer reached us on --------------

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


@pytest.fixture(name="multi")
def multi_fixture() -> Iterator[Multi]:
    ns = f"h6st{os.getpid()}"
    sh("ip", "netns", "add", ns)
    socks: list[socket.socket] = []
    tun = None
    dp = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for fam, addrs in ADDRS.items():
            for a in addrs:
                sh("ip", "-n", ns, f"-{fam}", "addr", "add",
                   f"{a}/{32 if fam == 4 else 128}", "dev", "lo",
                   *(["nodad"] if fam == 6 else []))
        with inside(ns):
            tun = Tun("h6sttun0", mtu=1420, nonblocking=True, up=True)
            s4, s6 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            r4, r6 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            lo_index = socket.if_nametoindex("lo")
        socks = [s4, s6, r4, r6, app]
        sh("ip", "-n", ns, "addr", "add", f"{LOCAL}/24", "dev", "h6sttun0")
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s4.bind(("0.0.0.0", 0))
        s6.bind(("::", 0))
        s4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        r4.bind((ADDRS[4][2], 0))
        r6.bind((ADDRS[6][2], 0))
        app.bind((LOCAL, 0))
        for s in (r4, r6):
            s.settimeout(5)
        dp = DataPlane(max_peers=4, mtu=1420)
        send_key, recv_key = os.urandom(32), os.urandom(32)
        dp.peer_add(0)
        dp.aip_insert(0, ipaddress.ip_network(f"{PEER_IP}/32"))
        dp.keypair_install(0, LOCAL_INDEX, REMOTE_INDEX, send_key, recv_key, time.monotonic(),
                           initiator=True, current=True)
        dp.set_offloads(False, True, False)         # UDP GSO trains carry the source too
        dp.start(tun.fileno(), s4.fileno(), s6.fileno())
        yield Multi(ns, dp, {4: s4, 6: s6}, {4: r4, 6: r6}, app, send_key, recv_key, lo_index)
    finally:
        if dp is not None:
            dp.stop()
        for s in socks:
            s.close()
        if tun is not None:
            tun.close()
        sh("ip", "netns", "del", ns, check=False)


def _ifindex(m: Multi, fam: int) -> int:
    return m.lo_index if fam == 6 else 0


@pytest.mark.parametrize("fam", [4, 6])
def test_replies_leave_from_the_sticky_source(multi: Multi, fam: int) -> None:
    a, b, r = ADDRS[fam]
    for src in (a, b, a):
        multi.dp.set_endpoint(0, Sticky(*multi.remote_ep(fam), src=(src, _ifindex(multi, fam))))
        assert multi.dp.get_endpoint(0).src == (src, _ifindex(multi, fam))
        assert multi.dp.send_packet(0, b"", time.monotonic()) == lib.WG_OK
        assert multi.recv(fam)[1] == src
    # A plain endpoint (what UAPI sets) has no source: routing picks R itself here.
    multi.dp.set_endpoint(0, multi.remote_ep(fam))
    assert multi.dp.get_endpoint(0).src is None
    multi.dp.send_packet(0, b"", time.monotonic())
    assert multi.recv(fam)[1] == r


def test_gso_trains_leave_from_the_sticky_source(multi: Multi) -> None:
    a = ADDRS[4][0]
    multi.dp.set_endpoint(0, Sticky(*multi.remote_ep(4), src=(a, 0)))
    for k in range(40):
        multi.app.sendto(bytes([k]) * 600, (PEER_IP, 9999))
    got = [multi.recv(4) for _ in range(40)]
    assert {src for _, src in got} == {a}
    assert sorted(unseal(multi.send_key, m)[1] for m, _ in got) == list(range(40))
    assert multi.dp.offloads()["udp_gso4"]          # the source cmsg did not break GSO


@pytest.mark.parametrize("fam", [4, 6])
def test_source_gone_falls_back_to_routing(multi: Multi, fam: int) -> None:
    """Not too sticky: once the address left the host, the send goes again from where
    routing says, and the endpoint forgets the source."""
    a, _, r = ADDRS[fam]
    multi.dp.set_endpoint(0, Sticky(*multi.remote_ep(fam), src=(a, _ifindex(multi, fam))))
    multi.dp.send_packet(0, b"", time.monotonic())
    assert multi.recv(fam)[1] == a
    sh("ip", "-n", multi.ns, f"-{fam}", "addr", "del", f"{a}/{32 if fam == 4 else 128}",
       "dev", "lo")
    assert multi.dp.send_packet(0, b"", time.monotonic()) == lib.WG_OK
    assert multi.recv(fam)[1] == r
    assert multi.dp.get_endpoint(0).src is None
    assert multi.dp.get_endpoint(0) == multi.remote_ep(fam)
    assert int(multi.dp.drops[lib.WG_DROP_IO]) == 0
    with contextlib.suppress(OSError):
        multi.remote[fam].settimeout(0.2)
        assert multi.recv(fam) is None, "one message, sent once"
