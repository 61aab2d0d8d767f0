"""receive.c: transport messages sent to the data plane's real UDP socket come out of the TUN, or
are counted drops; handshake messages become events; the endpoint roams to the newest
authenticated source.  On a real TUN, where they reach an application socket through the
kernel (root), and on the TUN stand-in (no root, at the end), with a Hypothesis fuzzer of the
whole receive path (@pytest.mark.fuzz).  One module's tests (receive.c's): over ~400 lines."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    ADDRS,
    COOKIE_KEY,
    LOCAL,
    LOCAL6,
    LOCAL_INDEX,
    OTHER_IP,
    PEER_IP,
    PEER_IP6,
    Multi,
    Plane,
    nothing_delivered,
    seal,
    seqpacket_plane,
    udp4,
    udp6,
    until,
    with_mac1,
)

from wgfast.dataplane import lib


def to_app(plane: Plane, payload: bytes, src: str = PEER_IP) -> bytes:
    return udp4(src, 9999, LOCAL, plane.app.getsockname()[1], payload)


def expect_app(plane: Plane, payload: bytes) -> None:
    data, addr = plane.app.recvfrom(65536)
    assert (data, addr) == (payload, (PEER_IP, 9999))


def test_sealed_message_reaches_the_application(plane: Plane) -> None:
    c = plane.dp.clocks
    total = 0
    for k in range(10):
        payload = os.urandom(1 + 97 * k)
        msg = seal(plane.recv_key, LOCAL_INDEX, k, to_app(plane, payload))
        total += len(msg)
        plane.remote.sendto(msg, plane.addr)
        expect_app(plane, payload)
    assert until(lambda: int(plane.dp.rx_bytes[0]) == total)
    assert c["last_data_recv"][0] > 0 and c["last_auth_recv"][0] >= c["last_data_recv"][0]
    assert 0 < c["pending_data_recv"][0] <= c["last_data_recv"][0]
    assert sum(int(x) for x in plane.dp.drops) == 0


def test_keepalive_stamps_auth_not_data(plane: Plane) -> None:
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 0, b""), plane.addr)
    c = plane.dp.clocks
    assert until(lambda: c["last_auth_recv"][0] > 0)
    assert c["last_data_recv"][0] == 0
    assert int(plane.dp.rx_bytes[0]) == lib.WG_MIN_DATA_LEN


def test_inner_source_outside_allowed_ips_dropped(plane: Plane) -> None:
    spoofed = to_app(plane, b"spoofed", src="10.66.0.9")
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 0, spoofed), plane.addr)
    assert until(lambda: plane.drops(lib.WG_DROP_ALLOWED_IPS) == 1)
    # Authenticated all the same: the peer's clocks move.
    assert plane.dp.clocks["last_auth_recv"][0] > 0
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 1, to_app(plane, b"ok")), plane.addr)
    expect_app(plane, b"ok")                       # the spoofed one never arrived


def test_handshake_messages_become_events(plane: Plane) -> None:
    msgs = [with_mac1(bytes([1, 0, 0, 0]) + os.urandom(144)),
            with_mac1(bytes([2, 0, 0, 0]) + os.urandom(88)),
            bytes([3, 0, 0, 0]) + os.urandom(60)]    # cookie replies carry no MACs
    for m in msgs:
        plane.remote.sendto(m, plane.addr)
    evs = plane.wait_events(lib.WG_EV_HANDSHAKE, 3)
    assert [e[4] for e in evs] == msgs
    assert all(e[3] == plane.remote.getsockname() for e in evs)
    assert int(plane.dp.rx_bytes[0]) == 0         # Python accounts handshake bytes


def test_garbage_is_counted(plane: Plane) -> None:
    bad = {
        lib.WG_DROP_SHORT: bytes([4, 0, 0, 0]) + bytes(20),
        lib.WG_DROP_TYPE: bytes([7, 0, 0, 0]) + os.urandom(60),
        lib.WG_DROP_NO_KEYPAIR: seal(plane.recv_key, LOCAL_INDEX + 1, 0, to_app(plane, b"a")),
        lib.WG_DROP_TAG: seal(os.urandom(32), LOCAL_INDEX, 0, to_app(plane, b"b")),
        lib.WG_DROP_BAD_INNER: seal(plane.recv_key, LOCAL_INDEX, 5, bytes(40)),
    }
    for m in bad.values():
        plane.remote.sendto(m, plane.addr)
    plane.remote.sendto(b"\x01\x00", plane.addr)              # two bytes: too short to be anything
    assert until(lambda: all(plane.drops(r) >= 1 for r in bad))
    assert until(lambda: plane.drops(lib.WG_DROP_SHORT) == 2)
    for r in bad:
        if r != lib.WG_DROP_SHORT:
            assert plane.drops(r) == 1, r
    # A replay of an accepted message.
    good = seal(plane.recv_key, LOCAL_INDEX, 9, to_app(plane, b"once"))
    plane.remote.sendto(good, plane.addr)
    expect_app(plane, b"once")
    plane.remote.sendto(good, plane.addr)
    assert until(lambda: plane.drops(lib.WG_DROP_REPLAY) == 1)
    # The loop is still alive.
    plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 10, to_app(plane, b"alive")),
                        plane.addr)
    expect_app(plane, b"alive")


def test_endpoint_roams_to_newest_authenticated_source(plane: Plane) -> None:
    first = plane.remote.getsockname()
    assert plane.dp.get_endpoint(0) == first
    roamer = plane.udp_socket()
    forger = plane.udp_socket()
    try:
        # A forged message from elsewhere does not move the endpoint.
        forger.sendto(seal(os.urandom(32), LOCAL_INDEX, 0, to_app(plane, b"f")), plane.addr)
        assert until(lambda: plane.drops(lib.WG_DROP_TAG) == 1)
        assert plane.dp.get_endpoint(0) == first
        # An authenticated keepalive from a new address does.
        roamer.sendto(seal(plane.recv_key, LOCAL_INDEX, 0, b""), plane.addr)
        assert until(lambda: plane.dp.get_endpoint(0) == roamer.getsockname())
        # And replies go there.
        assert plane.dp.send_packet(0, b"", plane.dp.clocks["last_auth_recv"][0]) == lib.WG_OK
        roamer.settimeout(5)
        assert roamer.recv(100)[:1] == b"\x04"
        # A replayed message from the old address does not move it back.
        plane.remote.sendto(seal(plane.recv_key, LOCAL_INDEX, 0, b""), plane.addr)
        assert until(lambda: plane.drops(lib.WG_DROP_REPLAY) == 1)
        assert plane.dp.get_endpoint(0) == roamer.getsockname()
    finally:
        roamer.close()
        forger.close()


def test_oversized_datagram_counted(plane: Plane) -> None:
    plane.remote.sendto(bytes([4, 0, 0, 0]) + bytes(4000), plane.addr)   # > MTU + overhead
    assert until(lambda: plane.drops(lib.WG_DROP_TOO_BIG) == 1)


def test_first_data_confirms_responder_keypair(plane: Plane) -> None:
    """Peer 1's keypair from a handshake we answered waits as "next"; its first data message
    makes it current and tells Python (WG_EV_CONFIRMED)."""
    send_key, recv_key = os.urandom(32), os.urandom(32)
    plane.dp.keypair_install(1, 0x5151, 0x6161, send_key, recv_key, time.monotonic(),
                             initiator=False, current=False)
    assert plane.dp.keypair_current(1) is None
    plane.dp.pop_events()
    msg = seal(recv_key, 0x5151, 0, udp4(OTHER_IP, 9999, LOCAL, plane.app.getsockname()[1],
                                         b"hi"))
    plane.remote.sendto(msg, plane.addr)
    data, addr = plane.app.recvfrom(100)
    assert (data, addr) == (b"hi", (OTHER_IP, 9999))
    [ev] = plane.wait_events(lib.WG_EV_CONFIRMED)
    assert (ev[1], ev[2]) == (1, 0x5151)
    assert plane.dp.keypair_current(1) == 0x5151
    assert plane.dp.get_endpoint(1) == plane.remote.getsockname()
    # Only once.
    plane.remote.sendto(seal(recv_key, 0x5151, 1, b""), plane.addr)
    assert until(lambda: int(plane.dp.rx_bytes[1]) == len(msg) + lib.WG_MIN_DATA_LEN)
    assert [e for e in plane.dp.pop_events() if e[0] == lib.WG_EV_CONFIRMED] == []


def test_old_keypairs_expire_and_ask_for_rekey(plane: Plane) -> None:
    now = time.monotonic()
    k_old, k_aging = os.urandom(32), os.urandom(32)
    # Past REJECT_AFTER_TIME (180 s): refused.
    plane.dp.keypair_install(1, 0x7001, 1, os.urandom(32), k_old, now - 181, True, True)
    plane.remote.sendto(seal(k_old, 0x7001, 0, b""), plane.addr)
    assert until(lambda: plane.drops(lib.WG_DROP_EXPIRED) == 1)
    assert plane.dp.clocks["last_auth_recv"][1] == 0
    # Our own (initiator) keypair past REJECT - KEEPALIVE - REKEY_TIMEOUT (165 s): data
    # still flows, and a handshake is requested (whitepaper 6.2).
    plane.dp.keypair_remove(LOCAL_INDEX)
    plane.dp.keypair_install(0, 0x7002, 1, os.urandom(32), k_aging, now - 166, True, True)
    plane.dp.pop_events()
    plane.remote.sendto(seal(k_aging, 0x7002, 0, to_app(plane, b"late")), plane.addr)
    expect_app(plane, b"late")
    evs = plane.wait_events(lib.WG_EV_NEED_HANDSHAKE)
    assert [e[1] for e in evs] == [0] and plane.dp.want_handshake[0] == 1


@pytest.mark.parametrize("fam", [4, 6])
def test_local_address_reached_becomes_the_sticky_source(multi: Multi, fam: int) -> None:
    """IP_PKTINFO / IPV6_PKTINFO: the endpoint records where the peer reached us; reaching us
    on another local address alone moves it (roaming), and replies follow."""
    a, b, _ = ADDRS[fam]
    idx = multi.lo_index if fam == 6 else 0
    remote = multi.remote[fam]
    for counter, local in enumerate((b, a)):
        remote.sendto(seal(multi.recv_key, LOCAL_INDEX, counter, b""), (local, multi.port(fam)))
        assert until(lambda local=local: getattr(multi.dp.get_endpoint(0), "src", None)
                     == (local, idx))
        assert multi.dp.get_endpoint(0) == multi.remote_ep(fam)
        multi.dp.send_packet(0, b"", time.monotonic())
        assert multi.recv(fam)[1] == local
    # Handshake events carry it too, so the control plane answers from there.
    remote.sendto(with_mac1(bytes([1, 0, 0, 0]) + bytes(144)), (b, multi.port(fam)))
    assert until(lambda: any(e[0] == lib.WG_EV_HANDSHAKE and e[3].src == (b, idx)
                             for e in multi.dp.pop_events()))


def test_under_load_the_receive_loop_answers_with_a_cookie(plane: Plane) -> None:
    """Under load, a valid-mac1 initiation without mac2 is answered from C with a cookie reply
    to its source (XChaCha20-Poly1305 under the cookie key, AAD = its mac1) and never queued;
    with a mac2 under that cookie, the next one is queued."""
    import hashlib

    import nacl.bindings as nb

    lib.wg_hs_force_load(plane.dp.handle, time.monotonic() + 60)
    init = with_mac1(bytes([1, 0, 0, 0]) + (0x4242).to_bytes(4, "little") + os.urandom(140))
    plane.remote.sendto(init, plane.addr)
    while True:
        reply = plane.remote.recv(65536)
        if reply[:1] == b"\x03":
            break
    assert len(reply) == 64 and reply[4:8] == (0x4242).to_bytes(4, "little")
    cookie = nb.crypto_aead_xchacha20poly1305_ietf_decrypt(reply[32:], init[116:132],
                                                          reply[8:32], COOKIE_KEY)
    assert len(cookie) == 16 and plane.drops(lib.WG_DROP_COOKIE) == 1
    assert plane.dp.pop_events() == []
    again = with_mac1(bytes([1, 0, 0, 0]) + os.urandom(144))
    again = again[:132] + hashlib.blake2s(again[:132], key=cookie, digest_size=16).digest()
    plane.remote.sendto(again, plane.addr)
    evs = plane.wait_events(lib.WG_EV_HANDSHAKE)
    assert [e[4] for e in evs] == [again]


# ---- on the TUN stand-in (support.SocketTun) with loopback UDP: no root --------------------

def _from_peer(payload: bytes, src: str = PEER_IP) -> bytes:
    return udp4(src, 9999, LOCAL, 7, payload)


def test_opened_message_is_written_to_the_tun(loop_plane46: Plane) -> None:
    """Sealed by the peer, IPv4 and IPv6 inside: the TUN gets the inner packet without its
    padding, in order; bytes and clocks are stamped."""
    p = loop_plane46
    pkts = [_from_peer(os.urandom(41 * k)) if k % 2 else
            udp6(PEER_IP6, 9999, LOCAL6, 7, os.urandom(29 * k)) for k in range(12)]
    total = 0
    for k, pkt in enumerate(pkts):
        msg = seal(p.recv_key, LOCAL_INDEX, k, pkt)
        total += len(msg)
        p.remote.sendto(msg, p.addr)
    assert [p.tun.recv() for _ in pkts] == pkts
    assert until(lambda: int(p.dp.rx_bytes[0]) == total)
    assert p.dp.clocks["last_data_recv"][0] > 0 and p.dropped() == 0


def test_inner_source_filtering_drops(loop_plane: Plane) -> None:
    """Authenticated by peer 0 but from an inner source it does not own -- nobody's, or peer
    1's -- is WG_DROP_ALLOWED_IPS and never reaches the TUN."""
    p = loop_plane
    for k, src in enumerate(("10.66.0.9", OTHER_IP)):
        p.remote.sendto(seal(p.recv_key, LOCAL_INDEX, k, _from_peer(b"spoofed", src)), p.addr)
    p.remote.sendto(seal(p.recv_key, LOCAL_INDEX, 2, udp6("fd00:66::9", 1, LOCAL6, 7, b"v6")),
                    p.addr)
    assert until(lambda: p.drops(lib.WG_DROP_ALLOWED_IPS) == 3)
    assert nothing_delivered(p.tun)
    ok = _from_peer(b"owned")
    p.remote.sendto(seal(p.recv_key, LOCAL_INDEX, 3, ok), p.addr)
    assert p.tun.recv() == ok


def test_replays_dropped(loop_plane: Plane) -> None:
    """A counter seen before, or behind the window (WG_REPLAY_WINDOW), is WG_DROP_REPLAY;
    out of order inside the window is fine (RFC 6479)."""
    p = loop_plane
    msgs = {c: seal(p.recv_key, LOCAL_INDEX, c, _from_peer(c.to_bytes(4, "big")))
            for c in (5, 3, 20_000, 20_000 - lib.WG_REPLAY_WINDOW, 1)}
    for c in (5, 3):
        p.remote.sendto(msgs[c], p.addr)
        assert p.tun.recv() == _from_peer(c.to_bytes(4, "big"))
    for c in (5, 3):
        p.remote.sendto(msgs[c], p.addr)
    assert until(lambda: p.drops(lib.WG_DROP_REPLAY) == 2)
    p.remote.sendto(msgs[20_000], p.addr)
    assert p.tun.recv() == _from_peer((20_000).to_bytes(4, "big"))
    p.remote.sendto(msgs[20_000 - lib.WG_REPLAY_WINDOW], p.addr)     # the window's last slot
    assert p.tun.recv() == _from_peer((20_000 - lib.WG_REPLAY_WINDOW).to_bytes(4, "big"))
    p.remote.sendto(msgs[1], p.addr)                                 # behind it
    assert until(lambda: p.drops(lib.WG_DROP_REPLAY) == 3)
    assert nothing_delivered(p.tun)


def test_malformed_datagrams_counted_and_dropped(loop_plane46: Plane) -> None:
    p = loop_plane46
    bad = {
        lib.WG_DROP_SHORT: bytes([4, 0, 0, 0]) + bytes(20),
        lib.WG_DROP_TYPE: bytes([7, 0, 0, 0]) + os.urandom(60),
        lib.WG_DROP_NO_KEYPAIR: seal(p.recv_key, LOCAL_INDEX + 1, 0, _from_peer(b"a")),
        lib.WG_DROP_TAG: seal(os.urandom(32), LOCAL_INDEX, 0, _from_peer(b"b")),
        lib.WG_DROP_BAD_INNER: seal(p.recv_key, LOCAL_INDEX, 5, bytes(40)),
        lib.WG_DROP_TOO_BIG: bytes([4, 0, 0, 0]) + bytes(4000),
    }
    for m in bad.values():
        p.remote.sendto(m, p.addr)
    assert until(lambda: all(p.drops(r) == 1 for r in bad))
    assert p.dropped() == len(bad) and nothing_delivered(p.tun)
    alive = _from_peer(b"alive")
    p.remote.sendto(seal(p.recv_key, LOCAL_INDEX, 6, alive), p.addr)
    assert p.tun.recv() == alive


def test_handshake_types_reach_the_handshake_queue(loop_plane46: Plane) -> None:
    """Types 1-3 at their exact sizes (1 and 2 with a valid mac1) are queued for Python with
    their source; at another size, or with a bad mac1, they are counted and never queued."""
    p = loop_plane46
    good = [with_mac1(bytes([1, 0, 0, 0]) + os.urandom(144)),
            with_mac1(bytes([2, 0, 0, 0]) + os.urandom(88)),
            bytes([3, 0, 0, 0]) + os.urandom(60)]
    for mtype, size in ((1, 147), (2, 93), (3, 63)):
        p.remote.sendto(bytes([mtype, 0, 0, 0]).ljust(size, b"\0"), p.addr)
    p.remote.sendto(bytes([1, 0, 0, 0]) + os.urandom(144), p.addr)
    assert until(lambda: p.drops(lib.WG_DROP_SHORT) == 3 and p.drops(lib.WG_DROP_MAC1) == 1)
    for m in good:
        p.remote.sendto(m, p.addr)
    hs = p.dp.pop_handshakes() if until(lambda: p.dp.events_pending() == 3) else []
    assert [(m, src) for m, src, _ in hs] == [(m, p.remote.getsockname()[:2]) for m in good]
    assert nothing_delivered(p.tun, 0.05) and int(p.dp.rx_bytes[0]) == 0


# ---- the receive path's fuzzer ----------------------------------------------------------------

def _transport_mutations(key: bytes) -> st.SearchStrategy[bytes]:
    """Transport messages of peer 0, sealed for real, then maybe garbled: truncated, a byte
    flipped (header, counter or ciphertext), another receiver index, or bytes appended."""
    counters = iter(range(1, 1 << 62))

    def build(payload: bytes, inner_ok: bool, how: int, at: int, cut: int) -> bytes:
        pt = _from_peer(payload) if inner_ok else payload or b"\0"   # no keepalives: they
        # are accepted without a trace on the TUN or in the drops
        msg = bytearray(seal(key, LOCAL_INDEX, next(counters), pt))
        if how == 1:
            return bytes(msg[:cut % len(msg)])
        if how == 2:
            msg[at % len(msg)] ^= 1 + at % 255
        elif how == 3:
            msg[4:8] = (LOCAL_INDEX + 1 + at).to_bytes(4, "little")
        elif how == 4:
            msg += bytes(1 + at % 40)
        return bytes(msg)

    return st.builds(build, st.binary(max_size=200), st.booleans(), st.integers(0, 4),
                     st.integers(0, 1 << 16), st.integers(0, 1 << 16))


def _datagrams(key: bytes) -> st.SearchStrategy[list[bytes]]:
    handshake_like = st.builds(lambda t, n, b: bytes([t, 0, 0, 0]) + b[:n],
                               st.integers(1, 3), st.integers(0, 200), st.binary(min_size=200,
                                                                                 max_size=200))
    header_like = st.builds(lambda t, z, rest: bytes([t]) + z + rest, st.integers(0, 255),
                            st.binary(min_size=3, max_size=3), st.binary(max_size=1600))
    return st.lists(st.one_of(st.binary(max_size=1600), handshake_like, header_like,
                              _transport_mutations(key), st.binary(min_size=1400,
                                                                   max_size=3000)),
                    min_size=1, max_size=12)


@pytest.mark.fuzz
def test_fuzz_arbitrary_datagrams_are_counted_never_fatal() -> None:
    """Arbitrary datagrams into a running DataPlane over loopback: the receive loop never
    crashes or hangs, and every datagram it read is accounted for -- a counted drop, a packet
    on the TUN, or a handshake message queued for Python."""
    with seqpacket_plane() as p:
        udp = p.dp.batches[lib.WG_BATCH_UDP]
        seen = {"read": int(udp[lib.WG_BATCH_BUCKETS]), "dropped": p.dropped(), "out": 0}

        def accounted() -> bool:
            while not nothing_delivered(p.tun, 0):
                p.tun.recv()
                seen["out"] += 1
            queued = len(p.dp.pop_events())
            seen["out"] += queued
            return int(udp[lib.WG_BATCH_BUCKETS]) == seen["read"] and \
                p.dropped() - seen["dropped"] + seen["out"] == seen["read"] - seen["start"]

        @settings(max_examples=300, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(_datagrams(p.recv_key))
        def feed(datagrams: list[bytes]) -> None:
            seen["start"], seen["dropped"], seen["out"] = seen["read"], p.dropped(), 0
            for d in datagrams:
                p.remote.sendto(d, p.addr)
            seen["read"] += len(datagrams)
            assert until(accounted, timeout=2), (seen, list(p.dp.drops))

        feed()
        # Still serving after all of it.
        alive = _from_peer(b"alive")
        p.remote.sendto(seal(p.recv_key, LOCAL_INDEX, 1 << 62, alive), p.addr)
        assert p.tun.recv() == alive
