"""receive.c: transport messages sent to the data plane's real UDP socket come out of a real TUN
(and reach an application socket through the kernel), or are counted drops; handshake messages
become events; the endpoint roams to the newest authenticated source."""

from __future__ import annotations

import os
import time

import pytest
from support import (
    ADDRS,
    COOKIE_KEY,
    LOCAL,
    LOCAL_INDEX,
    OTHER_IP,
    PEER_IP,
    Multi,
    Plane,
    seal,
    udp4,
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
