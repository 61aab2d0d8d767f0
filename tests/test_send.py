"""send.c: packets the kernel routes into a real TUN come out of the data plane sealed on UDP to
the peer's endpoint (opened here by PyNaCl), or are counted/staged when they cannot be sent."""

from __future__ import annotations

import ipaddress
import time

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


def test_own_message_routed_back_into_its_tunnel_is_a_loop(plane: Plane) -> None:
    """The peer's endpoint lies inside its own allowed IPs: what we send to it comes back
    through the TUN as a UDP datagram from our port to the endpoint.  It is dropped, counted,
    instead of being sealed again (and again)."""
    import socket

    from wgfast.netns import inside

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
