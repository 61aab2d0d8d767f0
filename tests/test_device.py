"""wgfast.device.Device, the in-process Python API.  As root: two devices in one process, each
in a namespace of its own joined by a veth pair, ping through the tunnel; a private key change
expiring sessions; stats; close() removing the interface and socket; the interface followed
across namespaces.  Without root: two devices on SocketTuns joined over loopback UDP (a real
handshake, packets both ways, keepalives, the UAPI socket at a path of our own).  UAPI set
semantics are in test_device_config.py.
Over ~400 lines: the one public object, tested both with and without root."""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest
from support import needs_tun, netns, sh, until
from support.device import (
    INNER,
    LOOP_INNER,
    UNDER,
    LoopSide,
    Side,
    device_in,
    inner_udp,
    join,
    loop_device,
    pair,
    ping,
)

from wgfast import sockets
from wgfast.lab.netns import inside
from wgfast.noise import StaticIdentity

root = needs_tun("ping")       # the tests in namespaces of their own; those on loopback need none


def link_exists(ns: str, name: str) -> bool:
    return sh("ip", "-n", ns, "link", "show", "dev", name, check=False).returncode == 0


@pytest.fixture
def one() -> Iterator[Side]:
    with netns("h6dev" + secrets.token_hex(2)) as ns:
        with device_in(ns, "h6w" + secrets.token_hex(3)) as dev:
            me = StaticIdentity.generate()
            dev.configure(private_key=me.private)
            yield Side(ns, dev, me)


@pytest.fixture
def two() -> Iterator[tuple[Side, Side]]:
    with pair() as sides:
        yield sides


@root
def test_two_devices_ping_stats_rekey_and_close(two: tuple[Side, Side]) -> None:
    a, b = two
    a.dev.add_peer(b.me.public, endpoint=f"{UNDER[1]}:{b.dev.listen_port}",
                   allowed_ips=[f"{INNER[1]}/32"], persistent_keepalive=0)
    b.dev.add_peer(a.me.public, allowed_ips=[f"{INNER[0]}/32"])   # learns a's endpoint
    r = ping(a.ns, INNER[1])
    assert r.returncode == 0, r.stdout + r.stderr
    [sa] = a.dev.stats()
    [sb] = b.dev.stats()
    assert sa.public_key == b.me.public and sb.public_key == a.me.public
    assert sa.tx_bytes > 0 and sa.rx_bytes > 0 and sa.last_handshake is not None
    assert sb.endpoint is not None and str(sb.endpoint.address) == UNDER[0]
    assert sb.endpoint.port == a.dev.listen_port
    assert sa.allowed_ips == [ipaddress.ip_network(f"{INNER[1]}/32")]
    drops = a.dev.drops()
    assert drops["no_route"] >= 0 and "handshake_rejected" in drops
    # Counters keep rising with traffic.
    assert ping(b.ns, INNER[0], 2).returncode == 0
    [sa2] = a.dev.stats()
    assert sa2.rx_bytes > sa.rx_bytes and sa2.tx_bytes > sa.tx_bytes

    # A new private key voids the sessions made with the old one.
    pid = a.peer_id
    assert a.dev.dp.keypair_current(pid) is not None
    a.me = StaticIdentity.generate()
    a.dev.configure(private_key=a.me.private)
    assert a.dev.dp.keypair_current(pid) is None
    assert [s.public_key for s in a.dev.stats()] == [b.me.public]   # the peer stays
    # b still knows a by the old key: the tunnel is down until b learns the new one.
    b.dev.configure(f"replace_peers=true\npublic_key={a.me.public.hex()}\n"
                    f"allowed_ip={INNER[0]}/32\n")
    assert ping(a.ns, INNER[1], 2).returncode == 0

    # close() takes the interface and the UAPI socket away.
    path = a.dev._uapi.path if a.dev._uapi else None
    assert path is not None and os.path.exists(path)
    a.dev.close()
    assert not link_exists(a.ns, a.dev.name) and not os.path.exists(path)
    a.dev.close()                                   # idempotent


@root
def test_interface_deleted_stops_the_device(one: Side) -> None:
    path = one.dev._uapi.path if one.dev._uapi else None
    assert path is not None and os.path.exists(path)
    sh("ip", "-n", one.ns, "link", "del", one.dev.name)
    assert until(lambda: not os.path.exists(path), 10)


@root
def test_mtu_follows_the_interface(two: tuple[Side, Side]) -> None:
    """`ip link set mtu` is picked up by housekeeping: lower takes effect in place, higher
    than the rings were sized for restarts the data plane with larger ones."""
    a, b = two
    a.dev.add_peer(b.me.public, endpoint=f"{UNDER[1]}:{b.dev.listen_port}",
                   allowed_ips=[f"{INNER[1]}/32"])
    b.dev.add_peer(a.me.public, allowed_ips=[f"{INNER[0]}/32"])
    sh("ip", "-n", a.ns, "link", "set", a.dev.name, "mtu", "1280")
    assert until(lambda: a.dev.mtu == 1280)
    for side in (a, b):
        sh("ip", "-n", side.ns, "link", "set", side.dev.name, "mtu", "4000")
    assert until(lambda: a.dev.mtu == 4000 and b.dev.mtu == 4000)
    # A 3,900-byte inner packet crosses whole (outer datagrams fragment on the veth).
    r = subprocess.run(["ip", "netns", "exec", a.ns, "ping", "-c", "2", "-i", "0.2", "-W", "3",
                        "-M", "do", "-s", "3872", INNER[1]], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert a.dev.drops()["too_big"] == 0 and b.dev.drops()["too_big"] == 0


def _rx_packets(ns: str, dev: str) -> int:
    return int(sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout
               .split('"rx":{')[1].split('"packets":')[1].split(",")[0])


@root
def test_udp_train_crosses_as_one_tun_write(two: tuple[Side, Side]) -> None:
    """A UDP GSO send of 40 datagrams reaches the far socket as 40 intact datagrams; with USO
    on the TUNs it is read as one super-packet, crosses as one GSO train and is written to the
    far TUN as one UDP super-packet (the TUN counts writes as received packets)."""
    udp_train(*two)


def udp_train(a: Side, b: Side) -> None:
    from wgfast.device import TUN_TXQUEUELEN

    a.dev.add_peer(b.me.public, endpoint=f"{UNDER[1]}:{b.dev.listen_port}",
                   allowed_ips=[f"{INNER[1]}/32"])
    b.dev.add_peer(a.me.public, allowed_ips=[f"{INNER[0]}/32"])
    assert ping(a.ns, INNER[1]).returncode == 0
    assert sh("ip", "-n", a.ns, "-j", "link", "show", "dev", a.dev.name).stdout.count(
        f'"txqlen":{TUN_TXQUEUELEN}') == 1
    payload = bytes(range(256)) * 10
    with inside(b.ns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(a.ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((INNER[1], 7777))
        rx.settimeout(5)
        tx.setsockopt(sockets.SOL_UDP, sockets.UDP_SEGMENT, 64)    # 64-byte datagrams
        before = _rx_packets(b.ns, b.dev.name)
        tx.sendto(payload[:64 * 40], (INNER[1], 7777))
        got = [rx.recv(2048) for _ in range(40)]
        assert got == [payload[k * 64:(k + 1) * 64] for k in range(40)]
        writes = _rx_packets(b.ns, b.dev.name) - before
    assert writes >= 1
    if a.dev.tun_uso and b.dev.tun_uso:
        assert b.dev.dp is not None and b.dev.dp.offloads()["tun_uso"]
        assert writes < 40, "the datagrams were written to the TUN one by one"


@root
def test_handshake_queue_drained_in_slices_uapi_not_starved(one: Side) -> None:
    """About a thousand handshake messages that pass C's intake (valid mac1 and, once the
    queue puts the device under load, a valid mac2 from cookies C made) are queued at once.
    The control loop takes them HANDSHAKE_SLICE per turn, so a UAPI request made right after
    is answered while most of them are still queued (an unbounded drain would answer it only
    once the queue is empty)."""
    import time

    from wgfast.cookie import CookieState
    from wgfast.dataplane import addr_to_c, ffi, lib
    from wgfast.device import HANDSHAKE_SLICE
    from wgfast.messages import parse_cookie_reply

    dev, dp = one.dev, one.dev.dp
    assert dp is not None
    reply, addr = ffi.new("uint8_t[64]"), ffi.new("wg_addr *")
    msgs = []
    now = time.monotonic()
    for k in range(256):
        src = (f"10.9.{k // 200}.{k % 200 + 1}", 1000 + k)
        st = CookieState(one.me.public)
        first = st.add_macs(bytes([1, 0, 0, 0]) + os.urandom(144), now)
        addr_to_c(src, addr)
        assert lib.wg_hs_cookie_reply(dp.handle, first, 148, addr, now, reply) == 0
        assert st.consume_reply(parse_cookie_reply(bytes(reply)), now)
        msgs += [(st.add_macs(bytes([1, 0, 0, 0]) + os.urandom(144), now), src)
                 for _ in range(4)]
    with dev._lock:                      # the loop cannot drain while we fill
        got = [dp.receive_handshake(m, src, now) for m, src in msgs]
        queued = int(lib.wg_hs_queued(dp.handle))
    assert got.count(lib.WG_DROP_HANDSHAKE) == queued
    assert queued > 8 * HANDSHAKE_SLICE and dp.under_load(now)
    dev.uapi_get()
    assert int(lib.wg_hs_queued(dp.handle)) > queued - 3 * HANDSHAKE_SLICE
    # every one is handled in the end (random bodies: each a failed Noise attempt)
    assert until(lambda: dev.handshake_drops >= queued)
    assert int(lib.wg_hs_queued(dp.handle)) == 0


@pytest.fixture
def moved(one: Side) -> Iterator[tuple[Side, str]]:
    """`one`'s interface moved to another namespace; its UDP sockets stay behind."""
    with netns("h6mv" + secrets.token_hex(2)) as there:
        sh("ip", "-n", one.ns, "link", "set", one.dev.name, "netns", there)
        yield one, there


@root
def test_moved_interface_is_followed(moved: tuple[Side, str]) -> None:
    """After `ip link set netns`: the device keeps running and follows MTU and up/down in
    the namespace the interface is in now; deleted there, it stops."""
    one, there = moved
    dev = one.dev
    assert link_exists(there, dev.name) and not link_exists(one.ns, dev.name)
    sh("ip", "-n", there, "link", "set", dev.name, "mtu", "1300")
    assert until(lambda: dev.mtu == 1300, 10)
    sh("ip", "-n", there, "link", "set", dev.name, "up")
    assert until(lambda: dev.link_up, 10)
    sh("ip", "-n", there, "link", "set", dev.name, "mtu", "9000")       # rings grow
    assert until(lambda: dev.mtu == 9000, 10)
    sh("ip", "-n", there, "link", "set", dev.name, "down")
    assert until(lambda: not dev.link_up, 10)
    assert dev.uapi_get().listen_port == dev.listen_port       # still serving
    path = dev._uapi.path if dev._uapi else None
    assert path is not None and os.path.exists(path)
    sh("ip", "-n", there, "link", "del", dev.name)
    assert until(lambda: not os.path.exists(path), 10)


@root
def test_namespace_deleted_under_moved_interface_stops_the_device(
        moved: tuple[Side, str]) -> None:
    """`ip netns del` of the namespace it moved to deletes the interface (the kernel does, as
    nothing of ours keeps that namespace alive): the device stops, as wireguard-go does."""
    one, there = moved
    path = one.dev._uapi.path if one.dev._uapi else None
    assert path is not None and os.path.exists(path)
    sh("ip", "netns", "del", there)
    assert until(lambda: not os.path.exists(path), 10)


def uapi_raw(path: str, request: bytes) -> bytes:
    """One request straight to the UAPI socket, as wireguard-go's protocol has it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        out = b""
        while not out.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    return out


@root
def test_allowed_ip_minus_prefix_removes_one(two: tuple[Side, Side]) -> None:
    """`allowed_ip=-PREFIX` (wireguard-go 2025; older `wg set` cannot send it, so the line
    goes to the socket as is): that prefix leaves `wg show allowed-ips` and the data plane,
    the peer's others stay; a prefix the peer does not own is left alone, without error."""
    a, b = two
    other = StaticIdentity.generate().public
    a.dev.add_peer(b.me.public, endpoint=f"{UNDER[1]}:{b.dev.listen_port}",
                   allowed_ips=[f"{INNER[1]}/32", "10.66.3.0/24"])
    a.dev.add_peer(other, allowed_ips=["10.66.4.0/24"])
    b.dev.add_peer(a.me.public, allowed_ips=[f"{INNER[0]}/32"])
    assert ping(a.ns, INNER[1], 1).returncode == 0
    path = a.dev._uapi.path if a.dev._uapi else ""

    def shown() -> dict[str, set[str]]:
        out = subprocess.run(["wg", "show", a.dev.name, "allowed-ips"], capture_output=True,
                             text=True, check=True, timeout=10).stdout
        rows = (line.split("\t") for line in out.splitlines())
        return {key: set(ips.split()) for key, ips in rows}

    b64 = {pk: base64.b64encode(pk).decode() for pk in (b.me.public, other)}
    reply = uapi_raw(path, f"set=1\npublic_key={b.me.public.hex()}\n"
                           f"allowed_ip=-{INNER[1]}/32\n\n".encode())
    assert reply == b"errno=0\n\n"
    assert shown() == {b64[b.me.public]: {"10.66.3.0/24"}, b64[other]: {"10.66.4.0/24"}}
    # The data plane no longer routes to it: the ping is dropped as having no peer.
    before = a.dev.drops()["no_route"]
    assert ping(a.ns, INNER[1], 1).returncode != 0
    assert a.dev.drops()["no_route"] > before
    # Another peer's prefix, and a prefix nobody has: nothing changes, no error.
    for prefix in ("10.66.4.0/24", "10.99.0.0/16", INNER[1] + "/32"):
        reply = uapi_raw(path, f"set=1\npublic_key={b.me.public.hex()}\n"
                               f"allowed_ip=-{prefix}\n\n".encode())
        assert reply == b"errno=0\n\n"
    assert shown() == {b64[b.me.public]: {"10.66.3.0/24"}, b64[other]: {"10.66.4.0/24"}}
    assert a.dev.dp.aip_lookup(ipaddress.ip_address("10.66.4.9")) == a.dev.peers[other].peer_id
    # Given back, it routes again.
    assert uapi_raw(path, f"set=1\npublic_key={b.me.public.hex()}\n"
                          f"allowed_ip={INNER[1]}/32\n\n".encode()) == b"errno=0\n\n"
    assert ping(a.ns, INNER[1], 1).returncode == 0


# ---- without root: devices on SocketTuns, joined over loopback UDP ---------------------------


@pytest.fixture
def loop_devices(tmp_path: object) -> Iterator[tuple[LoopSide, LoopSide]]:
    with loop_device(str(tmp_path), "lpa") as a, loop_device(str(tmp_path), "lpb") as b:
        yield a, b


def test_loopback_devices_handshake_and_carry_packets_both_ways(
        loop_devices: tuple[LoopSide, LoopSide]) -> None:
    """The first packet waits (staged in C) for a real handshake over loopback UDP, then
    crosses; the answer crosses back on the session; both sides count the handshake."""
    a, b = loop_devices
    assert a.dev.tun_uso is False and a.dev.udp_gro is False     # a SocketTun: no offloads
    join(a, b)
    out = [inner_udp(LOOP_INNER[0], LOOP_INNER[1], bytes([k]) * (100 + k)) for k in range(5)]
    for p in out:
        a.tun.send(p)
    assert [b.tun.recv() for _ in out] == out
    back = inner_udp(LOOP_INNER[1], LOOP_INNER[0], b"answer")
    b.tun.send(back)
    assert a.tun.recv() == back
    [sa], [sb] = a.dev.stats(), b.dev.stats()
    assert sa.last_handshake is not None and sb.last_handshake is not None
    assert sa.tx_bytes > 0 and sa.rx_bytes > 0
    assert sb.endpoint is not None and sb.endpoint == ("127.0.0.1", a.dev.listen_port)
    # An inner source outside the sender's allowed IPs is dropped at the receiver.
    before = b.dev.drops()["allowed_ips"]
    b.tun.send(inner_udp("10.67.0.99", LOOP_INNER[0], b"spoofed"))
    assert until(lambda: a.dev.drops()["allowed_ips"] > 0)
    assert b.dev.drops()["allowed_ips"] == before


def test_loopback_persistent_keepalive(loop_devices: tuple[LoopSide, LoopSide]) -> None:
    """persistent_keepalive=1: a handshake at once, then a keepalive (an empty transport
    message, 32 bytes) about every second with no traffic; none reaches the far TUN."""
    a, b = loop_devices
    join(a, b, keepalive=1)
    assert until(lambda: b.dev.stats()[0].last_handshake is not None, 10)
    rx0 = b.dev.stats()[0].rx_bytes
    assert until(lambda: b.dev.stats()[0].rx_bytes >= rx0 + 2 * 32, 10)
    b.tun.peer.settimeout(0.2)
    with pytest.raises(TimeoutError):
        b.tun.peer.recv(2048)


def test_loopback_uapi_get_set_round_trip(loop_devices: tuple[LoopSide, LoopSide]) -> None:
    """The UAPI socket at a path of our choosing: a set, then a get that reports it (and the
    handshake it led to), as wireguard-go's protocol has it."""
    a, b = loop_devices
    b.dev.add_peer(a.me.public, allowed_ips=[f"{LOOP_INNER[0]}/32"])
    reply = uapi_raw(a.uapi, f"set=1\npublic_key={b.me.public.hex()}\n"
                             f"endpoint=127.0.0.1:{b.dev.listen_port}\n"
                             "persistent_keepalive_interval=1\n"
                             f"allowed_ip={LOOP_INNER[1]}/32\nallowed_ip=10.67.5.0/24\n\n"
                     .encode())
    assert reply == b"errno=0\n\n"
    assert until(lambda: b.dev.stats()[0].last_handshake is not None, 10)
    got = uapi_raw(a.uapi, b"get=1\n\n").decode()
    lines = got.splitlines()
    assert lines[0] == f"private_key={a.me.private.hex()}"
    assert f"listen_port={a.dev.listen_port}" in lines
    assert lines[lines.index(f"public_key={b.me.public.hex()}") + 3] == \
        f"endpoint=127.0.0.1:{b.dev.listen_port}"
    assert "persistent_keepalive_interval=1" in lines
    assert [ln for ln in lines if ln.startswith("allowed_ip=")] == [
        f"allowed_ip={LOOP_INNER[1]}/32", "allowed_ip=10.67.5.0/24"]
    assert not any(ln == "last_handshake_time_sec=0" for ln in lines)
    assert got.endswith("errno=0\n\n")
    assert uapi_raw(a.uapi, b"set=1\nlisten_port=99999\n\n") == b"errno=-22\n\n"


def test_loopback_mtu_follows_the_stand_in(tmp_path: object) -> None:
    """The link-following path on a SocketTun: its MTU is followed (rings regrow past the
    first size), and close() releases the UAPI socket."""
    with loop_device(str(tmp_path), "lpm") as a:
        a.tun.mtu = 1300
        assert until(lambda: a.dev.mtu == 1300, 5)
        a.tun.mtu = 4000
        assert until(lambda: a.dev.mtu == 4000, 5)
        assert a.dev.link_up and os.path.exists(a.uapi)
    assert not os.path.exists(a.uapi)
