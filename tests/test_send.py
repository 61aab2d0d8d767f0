"""send.c: packets routed into the TUN come out of the data plane sealed on UDP to the peer's
endpoint (opened here by PyNaCl), or are counted/staged when they cannot be sent -- from a real
TUN the kernel routes into (root), and from the TUN stand-in (no root, at the end).  One
module's tests (send.c's), hence over ~400 lines."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import threading
import time

import pytest
from support import (
    ADDRS,
    LOCAL,
    LOCAL6,
    LOCAL_INDEX,
    OTHER_IP,
    PEER_IP,
    PEER_IP6,
    REMOTE_INDEX,
    UNROUTED,
    Multi,
    Plane,
    inet_csum,
    needs_root,
    netns,
    seal,
    sh,
    udp4,
    udp6,
    unseal,
    until,
)

from wgfast.dataplane import DataPlane, lib
from wgfast.endpoint import Endpoint
from wgfast.lab.netns import inside
from wgfast.tun import Tun


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
    """Packets for a peer without a key stay in C (staging.c), one control flag asks for a
    handshake; once a keypair exists, a flush sends them in order."""
    plane.app.sendto(b"first", (OTHER_IP, 7))
    plane.app.sendto(b"second", (OTHER_IP, 7))
    assert until(lambda: plane.dp.staged_count(1) == 2)
    assert plane.dp.want_handshake[1] == 1 and plane.dp.want_handshake[0] == 0
    assert plane.drops(lib.WG_DROP_NO_KEY) == 2
    assert int(plane.dp.tx_bytes[1]) == 0
    evs = plane.wait_events(lib.WG_EV_NEED_HANDSHAKE)
    assert [e[1] for e in evs] == [1]
    # No key yet: a flush keeps them.
    assert plane.dp.flush_staged(1, time.monotonic()) == 0 and plane.dp.staged_count(1) == 2
    plane.dp.set_endpoint(1, plane.remote.getsockname())
    plane.dp.keypair_install(1, 0x7001, 0x7002, plane.send_key, plane.recv_key,
                             time.monotonic(), initiator=True, current=True)
    assert plane.dp.flush_staged(1, time.monotonic()) == 2 and plane.dp.staged_count(1) == 0
    got = [unseal(plane.send_key, plane.recv_remote()) for _ in range(2)]
    words = (b"first", b"second")
    assert [(r, c, pt[28:28 + len(w)]) for (r, c, pt), w in zip(got, words, strict=True)] \
        == [(0x7002, 0, b"first"), (0x7002, 1, b"second")]


def test_staging_keeps_the_newest_per_peer(plane: Plane) -> None:
    """More packets than WG_MAX_STAGED for a keyless peer: the oldest go (counted), and the
    control flag is still one."""
    n = lib.WG_MAX_STAGED + 20
    for k in range(n):
        plane.app.sendto(k.to_bytes(2, "big"), (OTHER_IP, 7))
    assert until(lambda: plane.drops(lib.WG_DROP_NO_KEY) == n)
    assert plane.dp.staged_count(1) == lib.WG_MAX_STAGED
    assert plane.drops(lib.WG_DROP_STAGED) == 20
    events = plane.dp.pop_events()
    assert [(e[0], e[1]) for e in events] == [(lib.WG_EV_NEED_HANDSHAKE, 1)]
    assert plane.dp.drop_staged(1) == lib.WG_MAX_STAGED and plane.dp.staged_count(1) == 0


def test_staged_packets_keep_their_length_across_an_mtu_increase(plane: Plane) -> None:
    """Staged packets are stored at their own length: raise the MTU, stage a packet above the
    old one, and it is flushed whole (issue 10, 4d: the event stride truncated it)."""
    sh("ip", "-n", plane.ns, "link", "set", plane.tun.name, "mtu", "9000")
    # As the device does on an MTU change: the loops restart with rings for the new MTU.
    plane.dp.stop()
    plane.dp.set_mtu(9000)
    plane.dp.start(plane.tun.fileno(), plane.sock.fileno(), -1)
    big = bytes(range(256)) * 12          # 3,072 bytes of payload: above 1420 and 2048
    plane.app.sendto(big, (OTHER_IP, 7))
    assert until(lambda: plane.dp.staged_count(1) == 1)
    plane.dp.set_endpoint(1, plane.remote.getsockname())
    plane.dp.keypair_install(1, 0x7101, 0x7102, plane.send_key, plane.recv_key,
                             time.monotonic(), initiator=True, current=True)
    plane.remote.settimeout(5)
    assert plane.dp.flush_staged(1, time.monotonic()) == 1
    while True:
        data = plane.remote.recv(65536)
        if data[:1] == b"\x04":
            break
    _, _, pt = unseal(plane.send_key, data)
    assert pt[28:28 + len(big)] == big


def test_need_handshake_raised_once_per_second(plane: Plane) -> None:
    for k in range(5):
        plane.app.sendto(bytes([k]), (OTHER_IP, 7))
    assert until(lambda: plane.drops(lib.WG_DROP_NO_KEY) == 5)
    events = plane.dp.pop_events()
    kinds = [(e[0], e[1]) for e in events]
    assert kinds == [(lib.WG_EV_NEED_HANDSHAKE, 1)]
    assert plane.dp.staged_count(1) == 5


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

# ADDRS, Multi and the `multi` fixture: tests/support/ and conftest.py.


def _ifindex(m: Multi, fam: int) -> int:
    return m.lo_index if fam == 6 else 0


@pytest.mark.parametrize("fam", [4, 6])
def test_replies_leave_from_the_sticky_source(multi: Multi, fam: int) -> None:
    a, b, r = ADDRS[fam]
    for src in (a, b, a):
        multi.dp.set_endpoint(0, Endpoint(*multi.remote_ep(fam), src=(src, _ifindex(multi, fam))))
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
    multi.dp.set_endpoint(0, Endpoint(*multi.remote_ep(4), src=(a, 0)))
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
    multi.dp.set_endpoint(0, Endpoint(*multi.remote_ep(fam), src=(a, _ifindex(multi, fam))))
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


# ---- the send loop with TSO: a super-packet of more segments than a batch has slots ----------

def _tcp4(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
          options: bytes = b"", ident: int = 0) -> bytes:
    """An IPv4/TCP packet without payload (the far end's SYN-ACK and ACKs)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (20 + len(options)) // 4 << 4,
                      flags, 65535, 0, 0) + options
    c = inet_csum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, 6, 0, s, d)
    return ip[:10] + struct.pack("!H", inet_csum(ip)) + ip[12:] + tcp


@needs_root
def test_small_mss_super_packets_cross_whole() -> None:
    """The kernel's TCP at MSS 88 hands the TUN super-packets of hundreds of segments; the send
    loop cuts each across as many batches as it takes: the far end (played here, ACKing every
    byte) gets the whole stream and nothing is dropped as too big."""
    ns, name = f"h6ts{os.getpid()}", "h6tstun0"
    size = 1_500_000
    with netns(ns), contextlib.ExitStack() as stack:
        with inside(ns):
            tun = Tun(name, mtu=1420, nonblocking=True, vnet_hdr=True, up=True)
            stack.callback(tun.close)
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
            app = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (*socks, app):
            stack.callback(s.close)
        tun.set_offload(lib.WG_TUN_F_CSUM | lib.WG_TUN_F_TSO4 | lib.WG_TUN_F_TSO6)
        sh("ip", "-n", ns, "addr", "add", f"{LOCAL}/24", "dev", name)
        sock, remote = socks
        sock.bind(("127.0.0.1", 0))
        remote.bind(("127.0.0.1", 0))
        remote.settimeout(5)
        # Room for a whole window of small datagrams: a loss here would be ours, not the
        # tunnel's.
        remote.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 1 << 25)
        dp = DataPlane(max_peers=2, mtu=1420)
        send_key, recv_key = os.urandom(32), os.urandom(32)
        dp.peer_add(0)
        dp.aip_insert(0, ipaddress.ip_network(f"{PEER_IP}/32"))
        dp.keypair_install(0, LOCAL_INDEX, REMOTE_INDEX, send_key, recv_key, time.monotonic(),
                           initiator=True, current=True)
        dp.set_endpoint(0, remote.getsockname())
        dp.set_offloads(True, False, False)
        dp.start(tun.fileno(), sock.fileno(), -1)
        stack.callback(dp.stop)
        counter = iter(range(1 << 30))

        def to_kernel(pkt: bytes) -> None:
            remote.sendto(seal(recv_key, LOCAL_INDEX, next(counter), pkt), sock.getsockname())

        def from_kernel() -> tuple[int, int, bytes]:
            """(flags, seq, payload) of the next TCP segment the data plane sent us."""
            _, _, pt = unseal(send_key, remote.recv(65536))
            ip = pt[:struct.unpack("!H", pt[2:4])[0]]
            t = ip[(ip[0] & 15) * 4:]
            return t[13], struct.unpack("!I", t[4:8])[0], t[(t[12] >> 4) * 4:]

        app.setblocking(False)
        assert app.connect_ex((PEER_IP, 5201)) in (0, 115)     # EINPROGRESS
        flags, seq, _ = from_kernel()
        assert flags & 0x02                                     # SYN
        cport = app.getsockname()[1]
        expect, pseq = seq + 1, 7000
        mss88 = struct.pack("!BBH", 2, 4, 88)
        to_kernel(_tcp4(PEER_IP, LOCAL, 5201, cport, pseq, expect, 0x12, mss88))
        assert select.select([], [app], [], 5)[1], "no connection"
        assert app.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        data = os.urandom(size)
        app.setblocking(True)
        sender = threading.Thread(target=app.sendall, args=(data,), daemon=True)
        sender.start()
        stream = bytearray()
        deadline = time.monotonic() + 60
        while len(stream) < size and time.monotonic() < deadline:
            remote.settimeout(2)
            try:
                flags, seq, payload = from_kernel()
                while True:                     # every segment waiting, then one ACK
                    if seq == expect and payload:
                        stream += payload
                        expect += len(payload)
                    remote.settimeout(0)
                    flags, seq, payload = from_kernel()
            except (BlockingIOError, TimeoutError):
                pass
            to_kernel(_tcp4(PEER_IP, LOCAL, 5201, cport, pseq + 1, expect, 0x10))
        sender.join(timeout=5)
        assert int(dp.drops[lib.WG_DROP_TOO_BIG]) == 0
        assert int(dp.drops[lib.WG_DROP_BAD_INNER]) == 0
        assert len(stream) == size and bytes(stream) == data


def test_own_message_routed_back_into_its_tunnel_is_a_loop(plane: Plane) -> None:
    """The peer's endpoint lies inside its own allowed IPs: what we send to it comes back
    through the TUN as a UDP datagram from our port to the endpoint.  It is dropped, counted,
    instead of being sealed again (and again)."""
    import socket

    from wgfast.lab.netns import inside

    port = plane.addr[1]
    with inside(plane.ns):
        ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # our port, on the TUN's side
    try:
        ours.bind(("10.66.0.1", port))
        plane.dp.set_endpoint(0, (PEER_IP, 9999))
        ours.sendto(b"\x04\0\0\0looping", (PEER_IP, 9999))
        assert until(lambda: plane.drops(lib.WG_DROP_LOOP) == 1)
        # Not a loop: from our port to another port of the peer, or to the endpoint from
        # another port; both are sealed as usual.
        plane.dp.set_endpoint(0, plane.remote.getsockname())
        ours.sendto(b"other port", (PEER_IP, 9998))
        _, _, pt = unseal(plane.send_key, plane.recv_remote())
        assert pt[28:38] == b"other port"
        plane.app.sendto(b"app", (PEER_IP, 9999))
        _, _, pt = unseal(plane.send_key, plane.recv_remote())
        assert pt[28:31] == b"app"
        assert plane.drops(lib.WG_DROP_LOOP) == 1
    finally:
        ours.close()


# ---- on the TUN stand-in (support.SocketTun) with loopback UDP: no root --------------------

def test_injected_packets_sealed_to_endpoint(loop_plane46: Plane) -> None:
    """What is routed into the TUN leaves sealed to peer 0's endpoint: the inner packet whole,
    zero-padded to 16, counters from 0 in order, under the peer's receiver index."""
    p = loop_plane46
    pkts = [udp4(LOCAL, 5000 + k, PEER_IP, 9, os.urandom(37 * k)) if k % 3 else
            udp6(LOCAL6, 5000 + k, PEER_IP6, 9, os.urandom(11 * k)) for k in range(15)]
    for pkt in pkts:
        p.tun.send(pkt)
    got = [unseal(p.send_key, p.recv_remote()) for _ in pkts]
    assert [(r, c) for r, c, _ in got] == [(REMOTE_INDEX, k) for k in range(len(pkts))]
    for (_, _, pt), pkt in zip(got, pkts, strict=True):
        assert len(pt) % 16 == 0 and pt[:len(pkt)] == pkt and not any(pt[len(pkt):])
    assert p.dropped() == 0


def test_unroutable_and_malformed_packets_are_counted(loop_plane: Plane) -> None:
    """No owner of the destination: WG_DROP_NO_ROUTE; no IP header to route by (a bad version,
    a truncated header): WG_DROP_BAD_INNER.  Nothing is sealed for them."""
    p = loop_plane
    p.tun.send(udp4(LOCAL, 1, UNROUTED, 9, b"nobody's"))
    p.tun.send(udp6(LOCAL6, 1, "fd00:66::77", 9, b"nobody's either"))
    assert until(lambda: p.drops(lib.WG_DROP_NO_ROUTE) == 2)
    for bad in (b"\x70" + bytes(39), b"\x45\x00", b"\x60" + bytes(10)):
        p.tun.send(bad)
    assert until(lambda: p.drops(lib.WG_DROP_BAD_INNER) == 3)
    p.tun.send(udp4(LOCAL, 1, PEER_IP, 9, b"routed"))
    _, counter, pt = unseal(p.send_key, p.recv_remote())
    assert counter == 0 and pt[28:34] == b"routed"


def test_keyless_peer_stages_without_root(loop_plane: Plane) -> None:
    """A packet for peer 1 (no keypair) stays in C and asks for a handshake; once a keypair
    and an endpoint exist, a flush seals it."""
    p = loop_plane
    pkt = udp4(LOCAL, 1, OTHER_IP, 9, b"wait for me")
    p.tun.send(pkt)
    assert until(lambda: p.dp.staged_count(1) == 1)
    assert p.drops(lib.WG_DROP_NO_KEY) == 1
    assert [e[1] for e in p.wait_events(lib.WG_EV_NEED_HANDSHAKE)] == [1]
    p.dp.set_endpoint(1, p.remote.getsockname()[:2])
    p.dp.keypair_install(1, 0x7001, 0x7002, p.send_key, p.recv_key, time.monotonic(),
                         initiator=True, current=True)
    assert p.dp.flush_staged(1, time.monotonic()) == 1
    receiver, _, pt = unseal(p.send_key, p.recv_remote())
    assert receiver == 0x7002 and pt[:len(pkt)] == pkt
