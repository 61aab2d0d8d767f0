"""End-to-end interop through real tunnels between two network namespaces.

Every test runs for each (initiator, responder) pair: wgfast<->wgfast, wgfast<->wireguard-go in
both directions, and wireguard-go<->wireguard-go, the baseline proving the harness itself.  The
initiator `a` knows the responder's endpoint; `b` learns `a`'s from the handshake.
A fresh topology per test: it costs about 0.1 s with wireguard-go, and tests stay independent.
Over ~400 lines because it is one suite (the same pairs, fixtures and traffic helpers for every
test); test_interop_kernel.py holds the kernel selftest's scenarios apart.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import nacl.bindings
import nacl.exceptions
import pytest
from support import require_impl

from wgfast.lab.netns import (
    INNER4,
    INNER6,
    SOCKET_DIR,
    UNDERLAY4,
    UNDERLAY6,
    Host,
    Topology,
    Tunnel,
    genkey,
    genpsk,
    inside,
    iperf3_available,
    key_to_hex,
    make_tunnel,
    pubkey,
    run_iperf3,
    wrapper_script,
)

PAIRS = [
    ("wgfast", "wgfast"),
    ("wgfast", "wireguard-go"),
    ("wireguard-go", "wgfast"),
    ("wireguard-go", "wireguard-go"),
    # Offloads forced off on one side: per-packet TUN and UDP I/O must interoperate too.
    ("wgfast-nooff", "wireguard-go"),
    ("wgfast", "wgfast-nooff"),
]


SHORT = {"wgfast": "wgfast", "wireguard-go": "wggo", "wgfast-nooff": "wgfastnooff"}


@pytest.fixture(params=PAIRS, ids=[f"{SHORT[a]}-{SHORT[b]}" for a, b in PAIRS])
def impls(request: pytest.FixtureRequest) -> tuple:
    a, b = request.param
    return require_impl(a), require_impl(b)


@pytest.fixture
def tunnel(topo: Topology, impls: tuple) -> Iterator[Tunnel]:
    tun = make_tunnel(topo, *impls)
    yield tun
    for d in tun.pair:
        assert d.alive(), f"{d} died during the test:\n{d.log()}"


def _up(tun: Tunnel) -> None:
    assert tun.topo.a.wait_ping(INNER4[1]), "no traffic through the tunnel"


# --------------------------------------------------------------------------- traffic


@pytest.mark.parametrize("outer", [4, 6])
def test_ping_inner_v4_v6_over_outer(topo: Topology, impls: tuple, outer: int) -> None:
    tun = make_tunnel(topo, *impls, outer=outer)
    a, b = topo.a, topo.b
    assert a.wait_ping(INNER4[1])
    for host, dest in ((a, INNER4[1]), (a, INNER6[1]), (b, INNER4[0]), (b, INNER6[0])):
        res = host.ping(dest, count=3, interval=0.1)
        assert res.received == 3, res.output
    # The responder learnt the initiator's outer address of the right family.
    ep = tun.b.endpoints()[tun.a.public_key]
    want = f"{UNDERLAY4[0]}:51820" if outer == 4 else f"[{UNDERLAY6[0]}]:51820"
    assert ep == want


def test_no_preshared_key(topo: Topology, impls: tuple) -> None:
    tun = make_tunnel(topo, *impls, psk=False)
    _up(tun)
    assert tun.a.dump().peers[tun.b.public_key].preshared_key is None


@pytest.mark.skipif(not iperf3_available(), reason="iperf3 is not installed")
def test_iperf3_tcp(tunnel: Tunnel) -> None:
    _up(tunnel)
    before_tx = tunnel.a.dump().peers[tunnel.b.public_key].tx_bytes
    data = run_iperf3(tunnel.topo.b, tunnel.topo.a, INNER4[1], duration=2)
    got = data["end"]["sum_received"]["bytes"]
    assert got > 0 and data["end"]["sum_received"]["bits_per_second"] > 0
    tx = tunnel.a.dump().peers[tunnel.b.public_key].tx_bytes
    rx = tunnel.b.dump().peers[tunnel.a.public_key].rx_bytes
    # Every payload byte crossed the tunnel encrypted, plus headers and tags.
    assert tx - before_tx >= got
    assert rx >= got


def test_wg_show_handshake_and_counters(tunnel: Tunnel) -> None:
    _up(tunnel)
    size, count = 200, 5
    res = tunnel.topo.a.ping(INNER4[1], count=count, interval=0.1, size=size)
    assert res.received == count
    ip_bytes = count * (size + 8 + 20)  # ICMP payload + ICMP header + IPv4 header
    now = time.time()
    da = tunnel.a.dump()
    db = tunnel.b.dump()
    pa = da.peers[tunnel.b.public_key]
    pb = db.peers[tunnel.a.public_key]
    for p in (pa, pb):
        assert now - 60 < p.latest_handshake <= now + 5
    assert pa.tx_bytes >= ip_bytes and pa.rx_bytes >= ip_bytes
    assert pb.rx_bytes >= ip_bytes and pb.tx_bytes >= ip_bytes
    # Nothing can be received that was not sent (the link is lossless, nothing in flight).
    assert pb.rx_bytes <= pa.tx_bytes and pa.rx_bytes <= pb.tx_bytes
    assert da.public_key == tunnel.a.public_key and da.listen_port == 51820
    assert pa.preshared_key == tunnel.psk
    assert sorted(pa.allowed_ips) == sorted([f"{INNER4[1]}/32", f"{INNER6[1]}/128"])


def test_showconf_roundtrip(tunnel: Tunnel) -> None:
    _up(tunnel)
    for d in tunnel.pair:
        conf = d.showconf()
        assert "PrivateKey" in conf and "[Peer]" in conf
        d.setconf(conf)
        assert d.showconf() == conf
    _up(tunnel)


# --------------------------------------------------------------------------- configuration


def test_preshared_key_mismatch_then_fixed(topo: Topology, impls: tuple) -> None:
    tun = make_tunnel(topo, *impls)
    tun.b.wg("set", tun.b.iface, "peer", tun.a.public_key, "preshared-key", "/dev/stdin",
             input=genpsk() + "\n")
    assert not topo.a.ping(INNER4[1], count=2, interval=0.5, wait=1).ok
    assert tun.a.dump().peers[tun.b.public_key].latest_handshake == 0
    assert tun.b.dump().peers[tun.a.public_key].latest_handshake == 0
    tun.b.wg("set", tun.b.iface, "peer", tun.a.public_key, "preshared-key", "/dev/stdin",
             input=tun.psk + "\n")
    assert topo.a.wait_ping(INNER4[1], deadline=12)  # next initiation after REKEY_TIMEOUT


def test_persistent_keepalive(tunnel: Tunnel) -> None:
    _up(tunnel)
    a, b = tunnel.a, tunnel.b

    def rx() -> int:
        return b.dump().peers[a.public_key].rx_bytes

    time.sleep(0.3)
    r0 = rx()
    time.sleep(2.2)
    assert rx() == r0, "traffic without keepalive configured"
    a.set("peer", b.public_key, "persistent-keepalive", "1")
    assert a.dump().peers[b.public_key].persistent_keepalive == 1
    r1 = rx()
    time.sleep(2.5)
    assert rx() >= r1 + 2 * 32  # keepalives: empty transport messages, 32 bytes each


def test_roaming_underlay_address_change(tunnel: Tunnel) -> None:
    topo = tunnel.topo
    _up(tunnel)
    a = topo.a
    assert tunnel.b.endpoints()[tunnel.a.public_key] == f"{UNDERLAY4[0]}:51820"
    new = "10.200.0.11"
    # Keep the new address when the old (primary) one is removed.
    a.run(["sysctl", "-qw", f"net.ipv4.conf.{a.veth}.promote_secondaries=1"])
    a.run(["ip", "addr", "add", f"{new}/24", "dev", a.veth])
    a.run(["ip", "addr", "del", f"{UNDERLAY4[0]}/24", "dev", a.veth])
    # The roaming side also rebinds to a new port, as after a NAT rebinding.  (wireguard-go
    # 0.0.20220316 keeps sending from its cached, now deleted, source address until it
    # rebinds: sendmsg fails with ENETUNREACH and only EINVAL clears the cache.)
    tunnel.a.set("listen-port", "51830")
    assert a.wait_ping(INNER4[1], deadline=10)
    assert topo.a.ping(INNER4[1], count=3, interval=0.1).received == 3
    assert tunnel.b.endpoints()[tunnel.a.public_key] == f"{new}:51830"
    assert topo.b.ping(INNER4[0], count=2, interval=0.1).received == 2
    # And back to IPv6 as the outer family: the responder follows again.
    tunnel.a.set("peer", tunnel.b.public_key, "endpoint", f"[{UNDERLAY6[1]}]:51821")
    assert topo.a.ping(INNER6[1], count=2, interval=0.1).received == 2
    assert tunnel.b.endpoints()[tunnel.a.public_key] == f"[{UNDERLAY6[0]}]:51830"


def test_peer_removal_stops_traffic(tunnel: Tunnel) -> None:
    _up(tunnel)
    tunnel.a.set("peer", tunnel.b.public_key, "remove")
    assert tunnel.a.dump().peers == {}
    assert not tunnel.topo.a.ping(INNER4[1], count=2, interval=0.3, wait=1).ok
    assert not tunnel.topo.b.ping(INNER4[0], count=2, interval=0.3, wait=1).ok


def test_private_key_change_needs_fresh_handshake(tunnel: Tunnel) -> None:
    topo, a, b = tunnel.topo, tunnel.a, tunnel.b
    _up(tunnel)
    first = b.dump().peers[a.public_key].latest_handshake
    new_key = genkey()
    new_pub = pubkey(new_key)
    a.wg("set", a.iface, "private-key", "/dev/stdin", input=new_key + "\n")
    assert a.dump().public_key == new_pub
    # The responder does not know the new static key: nothing gets through.
    assert not topo.a.ping(INNER4[1], count=2, interval=0.5, wait=1).ok
    b.set("peer", a.public_key, "remove", "peer", new_pub,
          "allowed-ips", f"{INNER4[0]}/32,{INNER6[0]}/128")
    b.wg("set", b.iface, "peer", new_pub, "preshared-key", "/dev/stdin", input=tunnel.psk + "\n")
    a.public_key = new_pub
    assert topo.a.wait_ping(INNER4[1], deadline=12)
    peers = b.dump().peers
    assert list(peers) == [new_pub]
    assert peers[new_pub].latest_handshake >= first > 0
    assert peers[new_pub].endpoint == f"{UNDERLAY4[0]}:51820"


# Curve25519 points of small order (1, 2, 4 or 8), the list libsodium rejects in
# crypto_scalarmult (src/libsodium/crypto_scalarmult/curve25519/ref10/x25519_ref10.c) and the
# kernel's wireguard selftests use: 0, 1, two points of order 8, p-1, p, p+1 (little endian).
LOW_ORDER_POINTS = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
]


def test_low_order_points_really_are_low_order() -> None:
    import base64

    scalar = base64.b64decode(genkey())
    for point in LOW_ORDER_POINTS:
        with pytest.raises(nacl.exceptions.RuntimeError):
            nacl.bindings.crypto_scalarmult(scalar, bytes.fromhex(point))


def test_low_order_public_keys_never_handshake(tunnel: Tunnel) -> None:
    import base64

    a, topo = tunnel.a, tunnel.topo
    _up(tunnel)
    args: list[str] = []
    keys = [base64.b64encode(bytes.fromhex(p)).decode() for p in LOW_ORDER_POINTS]
    for i, k in enumerate(keys):
        args += ["peer", k, "endpoint", f"{UNDERLAY4[1]}:51821",
                 "allowed-ips", f"10.202.{i}.0/24"]
    a.set(*args)
    topo.a.run(["ip", "route", "add", "10.202.0.0/16", "dev", a.iface])
    assert set(keys) <= set(a.dump().peers)
    topo.a.run("for i in 0 1 2 3 4 5 6; do ping -n -q -c 2 -i 0.3 -W 1 10.202.$i.1 & done; wait",
               check=False)
    time.sleep(0.5)
    peers = a.dump().peers
    for k in keys:
        assert peers[k].latest_handshake == 0, k
        assert peers[k].rx_bytes == 0, k
    assert topo.a.ping(INNER4[1], count=2, interval=0.1).received == 2


# --------------------------------------------------------------------------- wg-quick


def test_wg_quick_up_down(topo: Topology, impls: tuple) -> None:
    impl_a, impl_b = impls
    from wgfast.lab.netns import start_wireguard

    ka, kb = genkey(), genkey()
    iface_a = topo.new_iface_name(topo.a)
    b = start_wireguard(topo.b, impl_b, conf={
        "private_key": kb, "listen_port": 51821,
        "peers": [{"public_key": pubkey(ka),
                   "allowed_ips": [f"{INNER4[0]}/32", f"{INNER6[0]}/128"]}],
    }, address4=f"{INNER4[1]}/24", address6=f"{INNER6[1]}/64")
    conf = topo.tmpdir / f"{iface_a}.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {ka}\nListenPort = 51820\nMTU = 1400\n"
        f"Address = {INNER4[0]}/24, {INNER6[0]}/64\n\n"
        "[Peer]\n"
        f"PublicKey = {b.public_key}\nEndpoint = {UNDERLAY4[1]}:51821\n"
        f"AllowedIPs = {INNER4[1]}/32, {INNER6[1]}/128\n")
    conf.chmod(0o600)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "WG_QUICK_USERSPACE_IMPLEMENTATION": str(wrapper_script(impl_a, topo.tmpdir))}
    sock = SOCKET_DIR / f"{iface_a}.sock"
    up = topo.a.run(["wg-quick", "up", str(conf)], check=False, env=env, timeout=30)
    assert up.returncode == 0, up.stderr
    try:
        assert sock.exists()
        link = topo.a.run(["ip", "link", "show", iface_a]).stdout
        assert "mtu 1400" in link
        assert topo.a.wait_ping(INNER4[1])
        assert topo.a.wait_ping(INNER6[1])
        show = topo.a.run(["wg", "show", iface_a, "latest-handshakes"]).stdout
        assert int(show.split()[1]) > 0
    finally:
        down = topo.a.run(["wg-quick", "down", str(conf)], check=False, env=env, timeout=30)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        gone = topo.a.run(["ip", "link", "show", iface_a], check=False).returncode != 0
        if gone and not sock.exists():
            break
        time.sleep(0.1)
    assert not sock.exists()
    assert topo.a.run(["ip", "link", "show", iface_a], check=False).returncode != 0
    # The detached daemon exited by itself once wg-quick removed its socket/interface.
    deadline = time.monotonic() + 5
    while topo.a.pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert topo.a.pids() == []


# --------------------------------------------------------------------------- hostile input


def _uapi(path: str, request: bytes, shutdown: bool = False) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while not out.endswith(b"\n\n"):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def _errno(reply: bytes) -> int | None:
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("errno="):
            return int(line[6:])
    return None


def test_bad_uapi_input_is_rejected(tunnel: Tunnel) -> None:
    _up(tunnel)
    d = tunnel.a
    path = str(d.socket_path)
    before = d.showconf()
    peer_hex = key_to_hex(tunnel.b.public_key)
    bad = {
        "unknown key": b"set=1\nfrobnicate=1\n\n",
        "bad hex": b"set=1\nprivate_key=" + b"zz" * 32 + b"\n\n",
        "short key": b"set=1\nprivate_key=abcd\n\n",
        "bad endpoint": f"set=1\npublic_key={peer_hex}\nendpoint=not-an-endpoint\n\n".encode(),
        "bad port": b"set=1\nlisten_port=99999\n\n",
        "bad allowed ip": f"set=1\npublic_key={peer_hex}\nallowed_ip=10.0.0.0/99\n\n".encode(),
        "no equals": b"set=1\nthis line has no equals sign\n\n",
    }
    for what, req in bad.items():
        reply = _uapi(path, req)
        err = _errno(reply)
        assert err is not None and err != 0, f"{what}: {reply!r}"
    for what, req in {
        "truncated set": b"set=1\nprivate_key=ab12",
        "truncated op": b"se",
        "unknown operation": b"frobnicate=1\n\n",
    }.items():
        reply = _uapi(path, req, shutdown=True)
        err = _errno(reply)
        assert reply == b"" or (err is not None and err != 0), f"{what}: {reply!r}"
    assert d.alive()
    ok = _uapi(path, b"get=1\n\n")
    assert _errno(ok) == 0 and f"public_key={peer_hex}".encode() in ok
    assert d.showconf() == before
    _up(tunnel)


_GARBAGE_SENDER = r"""
import os, random, socket, struct, sys
dest, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
rnd = random.Random(1234)
def msg(t, n):
    body = struct.pack("<I", t) + bytes(rnd.getrandbits(8) for _ in range(max(0, n - 4)))
    return body[:n]
out = [b"", b"\x01", b"\x04\x00\x00"]
for t, good in ((1, 148), (2, 92), (3, 64)):
    out += [msg(t, n) for n in (4, good - 1, good, good + 1, 1500)]
# Transport data: too short for header+tag, then well formed but for an unknown index.
out += [msg(4, n) for n in (4, 16, 31)]
out += [struct.pack("<III", 4, 0xDEADBEEF, 0) + os.urandom(n) for n in (16, 17, 100, 1400)]
out += [msg(t, 100) for t in (0, 5, 255, 0x01000000, 0xFFFFFFFF)]
out += [os.urandom(rnd.randrange(1, 1500)) for _ in range(300)]
s = socket.socket(fam, socket.SOCK_DGRAM)
for m in out:
    s.sendto(m, (dest, port))
print(len(out))
"""


def test_garbage_udp_datagrams_are_dropped(tunnel: Tunnel) -> None:
    topo = tunnel.topo
    _up(tunnel)
    for sender, target, port in ((topo.b, 0, 51820), (topo.a, 1, 51821)):
        for dest in (UNDERLAY4[target], UNDERLAY6[target]):
            n = int(sender.python(_GARBAGE_SENDER, dest, str(port)))
            assert n > 300
    time.sleep(0.3)
    for d in tunnel.pair:
        assert d.alive(), d.log()
        d.dump()
    assert topo.a.ping(INNER4[1], count=3, interval=0.1).received == 3
    assert topo.b.ping(INNER6[0], count=3, interval=0.1).received == 3



# --------------------------------------------------------------------------- sticky source

# A second underlay address of b's: for IPv4 a secondary in the same /24 (routing prefers the
# primary towards a), for IPv6 in a prefix of its own (source selection prefers the primary
# by its longer match with a's address).
SECOND = {4: ("10.200.0.3", "24"), 6: ("fd00:202::3", "64")}


def _ep(outer: int, addr: str, port: int = 51821) -> str:
    return f"{addr}:{port}" if outer == 4 else f"[{addr}]:{port}"


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("peer_impl", ["wgfast", "wireguard-go"])
def test_sticky_source_on_a_host_with_two_addresses(topo: Topology, peer_impl: str,
                                                    outer: int) -> None:
    """wgfast (b) answers from the address the peer (a) reached it on, so a's endpoint stays
    where a configured it; setting the endpoint through UAPI forgets the source; and when
    that address leaves the host, traffic flows again from the one routing picks."""
    fam = f"-{outer}"
    primary = UNDERLAY4[1] if outer == 4 else UNDERLAY6[1]
    second, plen = SECOND[outer]
    a, b = topo.a, topo.b
    b.run(["ip", fam, "addr", "add", f"{second}/{plen}", "dev", b.veth,
           *(["nodad"] if outer == 6 else [])])
    if outer == 6:
        a.run(["ip", "-6", "route", "add", f"{second}/64", "dev", a.veth])
    tun = make_tunnel(topo, require_impl(peer_impl), require_impl("wgfast"), outer=outer)
    inner_b, inner_a = (INNER4[1], INNER4[0]) if outer == 4 else (INNER6[1], INNER6[0])

    def a_reaches(addr: str) -> None:
        tun.a.set("peer", tun.b.public_key, "endpoint", _ep(outer, addr))
        assert a.ping(inner_b, count=3, interval=0.1).received == 3
        assert b.ping(inner_a, count=2, interval=0.1).received == 2
        # Every reply and every packet b started came from addr: a never roamed away.
        assert tun.a.endpoints()[tun.b.public_key] == _ep(outer, addr)

    assert a.wait_ping(inner_b)
    a_reaches(second)
    a_reaches(primary)
    a_reaches(second)
    # UAPI sets b's endpoint for a (the same address): the source is forgotten, so what b
    # sends now leaves from routing's choice and a follows it there.
    a_addr = UNDERLAY4[0] if outer == 4 else UNDERLAY6[0]
    tun.b.set("peer", tun.a.public_key, "endpoint", _ep(outer, a_addr, 51820))
    assert b.ping(inner_a, count=2, interval=0.1).received == 2
    assert tun.a.endpoints()[tun.b.public_key] == _ep(outer, primary)
    # Sticky to the second address again, then it leaves the host: b's next send from it
    # fails, goes again from the primary, and a roams there.
    a_reaches(second)
    b.run(["ip", fam, "addr", "del", f"{second}/{plen}", "dev", b.veth])
    assert b.ping(inner_a, count=3, interval=0.1).received == 3
    assert tun.a.endpoints()[tun.b.public_key] == _ep(outer, primary)
    assert a.ping(inner_b, count=2, interval=0.1).received == 2
    for d in tun.pair:
        assert d.alive(), d.log()


# --------------------------------------------------------------------------- every TCP MSS

SMALL_MSS_BYTES = 4 * 1024 * 1024


def _retrans(host: Host) -> int:
    """TCP segments the namespace's kernel retransmitted so far (Tcp RetransSegs)."""
    rows = [r.split() for r in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
            if r.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def _tcp_transfer(sender: Host, receiver: Host, dest: str, mss: int, data: bytes) -> bytes:
    """Send data over one TCP connection from sender's namespace to dest:port in receiver's,
    both sockets clamped to mss (TCP_MAXSEG before connecting); returns what arrived.  The
    receiver reads to EOF, so nothing is counted before it has really arrived."""
    fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
    got = bytearray()
    with inside(receiver.name):
        srv = socket.socket(fam, socket.SOCK_STREAM)
    with srv:
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        srv.bind((dest, 0))
        srv.listen(1)
        srv.settimeout(60)
        port = srv.getsockname()[1]

        def receive() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(60)
                while chunk := conn.recv(1 << 16):
                    got.extend(chunk)

        t = threading.Thread(target=receive)
        t.start()
        with inside(sender.name):
            cli = socket.socket(fam, socket.SOCK_STREAM)
        with cli:
            cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            cli.settimeout(60)
            cli.connect((dest, port))
            cli.sendall(data)
            cli.shutdown(socket.SHUT_WR)
            t.join(90)
        assert not t.is_alive(), "the receiver did not see the end of the stream"
    return bytes(got)


@pytest.mark.parametrize("mss,inner", [(88, 4), (256, 4), (256, 6)])
@pytest.mark.parametrize("variant", ["wgfast", "wgfast-nooff"])
def test_small_mss_every_byte(topo: Topology, variant: str, mss: int, inner: int) -> None:
    """TSO super-packets of a small MSS hold more segments than a batch has slots: they are
    cut across batches, so every byte of a transfer arrives, in order (b's kernel sends: TSO
    through b's TUN)."""
    impl = require_impl(variant)
    tun = make_tunnel(topo, impl, impl)
    _up(tun)
    dest = INNER4[0] if inner == 4 else INNER6[0]
    data = os.urandom(SMALL_MSS_BYTES)
    before = _retrans(topo.b)
    got = _tcp_transfer(topo.b, topo.a, dest, mss, data)
    assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # For the record (-s shows it): the sender's retransmissions, offloads on against off.
    print(f"\n{variant} mss={mss} v{inner}: {_retrans(topo.b) - before} retransmitted segments")
    for d in tun.pair:
        assert d.alive(), d.log()
    assert tun.b.dump().peers[tun.a.public_key].tx_bytes > SMALL_MSS_BYTES
