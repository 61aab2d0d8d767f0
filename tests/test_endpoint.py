"""wgfast.endpoint: the one Endpoint type, as the UAPI, config files, the device and the data
plane use it."""

from __future__ import annotations

import ipaddress

import pytest

from wgfast.dataplane import ADDR_LAYOUT, DataPlane, addr_from_c, ffi, pack_endpoints
from wgfast.endpoint import Endpoint, format_endpoint


def test_an_endpoint_is_its_host_port_pair() -> None:
    ep = Endpoint("192.0.2.1", 51820, src=("192.0.2.9", 0))
    assert ep == ("192.0.2.1", 51820) and hash(ep) == hash(("192.0.2.1", 51820))
    host, port = ep
    assert (host, port) == (ep.host, ep.port) and ep.src == ("192.0.2.9", 0)
    assert ep == Endpoint(ipaddress.ip_address("192.0.2.1"), 51820)     # src is not its value
    assert repr(ep) == "Endpoint('192.0.2.1', 51820, src=('192.0.2.9', 0))"
    assert Endpoint("::1", 9).src is None


@pytest.mark.parametrize("text,host,port,wire", [
    ("1.2.3.4:5", "1.2.3.4", 5, "1.2.3.4:5"),
    ("[2001:DB8::7]:51820", "2001:db8::7", 51820, "[2001:db8::7]:51820"),
    ("[fe80::1%lo]:9", "fe80::1%lo", 9, "[fe80::1%lo]:9"),
    ("[::ffff:1.2.3.4]:9", str(ipaddress.ip_address("::ffff:1.2.3.4")), 9,
     "[::ffff:1.2.3.4]:9"),
])
def test_parse_and_format(text: str, host: str, port: int, wire: str) -> None:
    ep = Endpoint.parse(text)
    assert (ep.host, ep.port, str(ep)) == (host, port, wire)


@pytest.mark.parametrize("bad", ["1.2.3.4", "1.2.3.4:", "1.2.3.4:65536", "::1:5", "[1.2.3.4]:5",
                                 "01.2.3.4:5", "[fe80::1%]:5", "1.2.3.4%lo:5", "[::1]5"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(bad)


def test_scope_family_packed() -> None:
    ep = Endpoint.parse("[fe80::1%lo]:9")
    assert ep.scope_id == 1 and ep.family == 10 and ep.packed == ipaddress.ip_address(
        "fe80::1").packed
    assert Endpoint("fe80::1%7", 1).scope_id == 7 and Endpoint("fe80::1%nosuch0", 1).scope_id == 0
    assert Endpoint("192.0.2.1", 1).packed == bytes([192, 0, 2, 1])


def test_through_the_data_plane() -> None:
    """Set and read back in C: the same Endpoint, one at a time and packed in bulk; the bulk
    form of the get reply says what str() says."""
    dp = DataPlane(max_peers=4)
    eps = [Endpoint("192.0.2.1", 1), Endpoint("2001:db8::1", 2), Endpoint("fe80::1%1", 3)]
    for pid in range(3):
        dp.peer_add(pid)
    dp.set_endpoints([0, 1, 2], pack_endpoints(eps))
    assert [dp.get_endpoint(pid) for pid in range(3)] == eps
    got = dp.get_endpoints([0, 1, 2])
    assert got.dtype == ADDR_LAYOUT
    addrs = got["addr"].tobytes()
    assert [format_endpoint(int(got["family"][k]), int(got["port"][k]),
                            int(got["scope_id"][k]), addrs[16 * k:16 * k + 16])
            for k in range(3)] == [str(ep) for ep in eps]
    dp.set_endpoint(1, None)
    assert dp.get_endpoint(1) is None
    assert addr_from_c(ffi.new("wg_addr *")) is None
