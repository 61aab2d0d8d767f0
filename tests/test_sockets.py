"""wgfast.sockets: the device's UDP sockets.  The pair on one port and its options, the fwmark,
and the control plane's handshake sends leaving from the sticky source (in a namespace of
our own, as root) or, once that address is gone, from routing's choice."""

from __future__ import annotations

import socket

import pytest
from support import ADDRS, Multi, needs_tun, sh

from wgfast import sockets
from wgfast.endpoint import Endpoint
from wgfast.lab.netns import inside
from wgfast.sockets import IP_PKTINFO


def test_loopback_pair_without_privilege() -> None:
    """Bound on loopback with fwmark 0 (no CAP_NET_ADMIN needed): one port for both
    families, the source-address option set, a send reaches its endpoint."""
    s = sockets.UdpSockets(offloads=False, host4="127.0.0.1", host6="::1")
    s.swap(*s.open_pair(0, 0))
    try:
        assert s.port > 0 and s.sock4 is not None
        assert s.sock4.getsockname() == ("127.0.0.1", s.port)
        assert s.sock4.getsockopt(socket.IPPROTO_IP, IP_PKTINFO) == 1
        fd4, fd6 = s.fds()
        assert fd4 == s.sock4.fileno() and (fd6 == -1) == (s.sock6 is None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(5)
            assert s.send(b"\x01hi", Endpoint(*rx.getsockname()))
            assert rx.recvfrom(100) == (b"\x01hi", ("127.0.0.1", s.port))
        assert s.fwmark == 0        # setting one, even 0, needs CAP_NET_ADMIN
    finally:
        s.close()
    assert s.sock4 is None and s.sock6 is None and s.port == 0


def test_port_in_use_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            sockets.open_pair(taken.getsockname()[1], 0, False, "127.0.0.1", "::1")


# ---- sticky source of the control plane's handshake sends ------------------------------------

@needs_tun()
@pytest.mark.parametrize("fam", [4, 6])
def test_handshake_sends_leave_from_the_sticky_source(multi: Multi, fam: int) -> None:
    """send() answers from the local address a handshake reached (Endpoint.src), and falls
    back to routing's choice once that address is gone."""
    socks = (multi.socks[4], multi.socks[6])
    a, b, r = ADDRS[fam]
    idx = multi.lo_index if fam == 6 else 0
    remote = multi.remote[fam]
    for src, want in ((a, a), (b, b), (None, r)):
        ep = Endpoint(*multi.remote_ep(fam), src=(src, idx) if src else None)
        assert sockets.send(*socks, b"\x02hello", ep)
        data, frm = remote.recvfrom(100)
        assert (data, frm[0], frm[1]) == (b"\x02hello", want, multi.port(fam))
    sh("ip", "-n", multi.ns, f"-{fam}", "addr", "del", f"{a}/{32 if fam == 4 else 128}",
       "dev", "lo")
    assert sockets.send(*socks, b"\x02again", Endpoint(*multi.remote_ep(fam), src=(a, idx)))
    data, frm = remote.recvfrom(100)
    assert (data, frm[0]) == (b"\x02again", r)


@needs_tun()
def test_sockets_ask_for_the_local_address(multi: Multi) -> None:
    with inside(multi.ns):
        s4, s6, port = sockets.open_pair(0, 0, False)
    try:
        assert s4 is not None and s6 is not None and port > 0
        assert s4.getsockopt(socket.IPPROTO_IP, IP_PKTINFO) == 1
        assert s6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO) == 1
    finally:
        s4.close()
        s6.close()
