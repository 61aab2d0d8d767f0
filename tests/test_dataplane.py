"""wgfast.dataplane.DataPlane and dataplane.c: the native handles; peers, endpoints, byte
counters, what C hands to Python (handshake queue, control flags) and stopping the I/O loops,
without a Device: on a real TUN in a namespace of our own (root), and on the TUN stand-in
(support.SocketTun) with loopback UDP, where two DataPlanes carry traffic to each other
(no root).  The fixtures are in conftest.py, the bench in tests/support/.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time

import pytest
from support import (
    LOCAL,
    LOCAL_INDEX,
    PEER_IP,
    REMOTE_INDEX,
    End,
    Plane,
    needs_root,
    nothing_delivered,
    seal,
    udp4,
    udp6,
    unseal,
    until,
    with_mac1,
)

from wgfast.dataplane import ADDR_DTYPE, DataPlane, ffi, lib

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


def test_batch_and_event_counters(loop_plane: Plane) -> None:
    """wg_dp_batches counts each received datagram once, in whatever batches it came, and
    events_pending is the handshake queue Python has not popped yet (messages that passed
    C's mac1 check).  (On the TUN stand-in: only the UDP side is looked at.)"""
    plane = loop_plane
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


# ---- two DataPlanes over loopback UDP, each on a TUN stand-in (no root) ----------------------

def test_loopback_round_trip(loop_pair: tuple[End, End]) -> None:
    """Packets routed into a's TUN come out of b's byte for byte (send.c then receive.c:
    allowed IPs, seal, UDP, open, replay check, inner source, TUN write), IPv4 and IPv6
    inside, and the other way round; bytes and clocks are counted on both sides."""
    a, b = loop_pair
    sent = []
    for k in range(24):
        payload = os.urandom(1 + 53 * k)
        pkt = (udp4(a.inner4, 1000 + k, b.inner4, 7, payload) if k % 2 else
               udp6(a.inner6, 1000 + k, b.inner6, 7, payload))
        sent.append(pkt)
        a.tun.send(pkt)
    assert [b.tun.recv() for _ in sent] == sent
    back = udp6(b.inner6, 7, a.inner6, 1000, b"and back")
    b.tun.send(back)
    assert a.tun.recv() == back
    for src, dst in ((a, b), (b, a)):
        assert until(lambda s=src, d=dst: int(s.dp.tx_bytes[0]) == int(d.dp.rx_bytes[0]) > 0)
        assert src.dp.clocks["last_data_sent"][0] > 0 and dst.dp.clocks["last_data_recv"][0] > 0
    assert sum(int(x) for e in (a, b) for x in e.dp.drops) == 0


def test_loopback_mtu_bound_and_keepalive(loop_pair: tuple[End, End]) -> None:
    """A packet of exactly the MTU crosses, one byte more is WG_DROP_TOO_BIG at the sender;
    a keepalive (send_packet of nothing) reaches b as authenticated traffic, not data."""
    a, b = loop_pair
    full = udp4(a.inner4, 9, b.inner4, 9, bytes(1420 - 28))
    a.tun.send(full)
    assert b.tun.recv() == full
    a.tun.send(udp4(a.inner4, 9, b.inner4, 9, bytes(1421 - 28)))
    assert until(lambda: a.drops(lib.WG_DROP_TOO_BIG) == 1)
    rx = int(b.dp.rx_bytes[0])
    assert rx == len(full) + lib.WG_MIN_DATA_LEN      # padded no further than the MTU
    data_recv = b.dp.clocks["last_data_recv"][0]
    assert a.dp.send_packet(0, b"", time.monotonic()) == lib.WG_OK
    assert until(lambda: int(b.dp.rx_bytes[0]) == rx + lib.WG_MIN_DATA_LEN)
    assert b.dp.clocks["last_auth_recv"][0] > data_recv == b.dp.clocks["last_data_recv"][0]
    assert nothing_delivered(b.tun)


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
