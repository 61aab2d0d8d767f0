"""send.c: packets the kernel routes into a real TUN come out of the data plane sealed on UDP to
the peer's endpoint (opened here by PyNaCl), or are counted/staged when they cannot be sent."""

from __future__ import annotations

import ipaddress
import time

from conftest import sh
from test_dataplane import (  # noqa: F401  (plane is a fixture)
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

from wgfast.datapath import lib

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
