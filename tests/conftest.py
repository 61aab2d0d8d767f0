"""Fixtures shared by several test files: the namespace topologies of real daemons (`topo`),
the data-plane benches (`plane` on a real TUN, `loop_plane` / `loop_plane46` on the TUN stand-in,
`loop_pair`), `multi` (sticky sources), a namespace and an interface name for a daemon (`ns`,
`iface`) and a tunnel of two daemons serving metrics (`metrics_tunnel`).  Helpers live in
the support package (tests/support/: __init__, daemon, device, protocol)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Iterator

import pytest

# Assertions that moved from test files into the support modules keep pytest's introspection;
# registering has to come before their first import, which is this file's.
pytest.register_assert_rewrite("support")      # and its submodules

from hypothesis import settings  # noqa: E402
from support import (  # noqa: E402
    ADDRS,
    COOKIE_KEY,
    IP_PKTINFO,
    LOCAL,
    LOCAL_INDEX,
    MAC1_KEY,
    NETNS_PREFIX,
    PEER_IP,
    REMOTE_INDEX,
    End,
    Multi,
    Plane,
    loopback_pair,
    netns,
    netns_unavailable,
    require_impl,
    seqpacket_plane,
    sh,
    tun_plane,
    tun_unavailable,
)
from support.daemon import WGFAST_METRICS, daemon_name  # noqa: E402

from wgfast.dataplane import DataPlane  # noqa: E402
from wgfast.lab.netns import INNER4, Topology, Tunnel, inside, make_tunnel  # noqa: E402
from wgfast.tun import Tun  # noqa: E402

# CI machines are shared and 2-core: a slow example is load, not a bug, so no per-example deadline.
settings.register_profile("wgfast", deadline=None)
settings.load_profile("wgfast")


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pyproject.toml; here too so a checkout without it runs warning-free.
    config.addinivalue_line("markers", "fuzz: a Hypothesis fuzzer of a parser (the ASan lane)")


@pytest.fixture
def topo() -> Iterator[Topology]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with Topology(NETNS_PREFIX) as t:
        yield t


@pytest.fixture(name="plane")
def plane_fixture() -> Iterator[Plane]:
    """A DataPlane on a real TUN in namespace h6dp (root)."""
    with tun_plane("h6dp", "h6tun0") as p:
        yield p


@pytest.fixture
def loop_plane() -> Iterator[Plane]:
    """A DataPlane on the TUN stand-in, UDP on 127.0.0.1 (no root)."""
    with seqpacket_plane(socket.AF_INET) as p:
        yield p


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["udp4", "udp6"])
def loop_plane46(request: pytest.FixtureRequest) -> Iterator[Plane]:
    """loop_plane with UDP on 127.0.0.1, then on ::1 (no root)."""
    with seqpacket_plane(request.param) as p:
        yield p


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["udp4", "udp6"])
def loop_pair(request: pytest.FixtureRequest) -> Iterator[tuple[End, End]]:
    """Two DataPlanes, each other's peer, over loopback UDP (no root)."""
    with loopback_pair(request.param) as ends:
        yield ends


@pytest.fixture(name="multi")
def multi_fixture() -> Iterator[Multi]:
    """A DataPlane on a real TUN in a namespace whose lo has the ADDRS (root)."""
    if tun_unavailable():
        pytest.skip(tun_unavailable())
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
        dp.set_handshake_keys(MAC1_KEY, COOKIE_KEY)      # handshake intake checks mac1 in C
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


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace of our own for a daemon (root)."""
    with netns("h6dns" + secrets.token_hex(2)) as name:
        yield name


@pytest.fixture
def iface() -> Iterator[str]:
    """A unique interface name; any daemon still serving it afterwards is stopped."""
    with daemon_name() as name:
        yield name


@pytest.fixture
def metrics_tunnel(topo: Topology) -> Iterator[Tunnel]:
    """Two wgfast daemons in `topo`, each serving metrics on 127.0.0.1:METRICS_PORT of its
    namespace, with traffic through the tunnel between them."""
    require_impl("wgfast")
    tun = make_tunnel(topo, WGFAST_METRICS, WGFAST_METRICS)
    assert topo.a.wait_ping(INNER4[1]), "no traffic through the tunnel"
    yield tun
    for d in tun.pair:
        assert d.alive(), d.log()
