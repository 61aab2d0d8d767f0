"""A peer's UDP endpoint: the one type the UAPI, the config file, the device and the data
plane hand each other.

An Endpoint is the pair (host, port) -- it compares, hashes and unpacks as that tuple, so a
socket address such as `sock.getsockname()` can stand for one -- and may carry the local
source it last reached us on (`src`, the sticky source; not part of its value).  The host is a
textual address; an IPv6 one may carry a scope as `fe80::1%eth0` (a name) or `fe80::1%2` (an
index, as the data plane reports it).
"""

from __future__ import annotations

import ipaddress
import socket

from wgfast.messages import AF_INET, AF_INET6

__all__ = ["Endpoint", "format_endpoint", "format_ip", "parse_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Source = tuple[str, int]        # (local address, ifindex; 0 for IPv4)


class Endpoint(tuple):
    """(host, port), with the sticky source `src` (None: routing picks)."""

    src: Source | None

    def __new__(cls, address: str | IPAddress, port: int,
                src: Source | None = None) -> Endpoint:
        t = super().__new__(cls, (address if isinstance(address, str) else str(address), port))
        t.src = src
        return t

    def __getnewargs__(self) -> tuple[str, int]:      # copy/pickle rebuild from the pair
        return (self[0], self[1])

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        """`a.b.c.d:port` or `[v6addr%scope]:port`; ValueError when malformed."""
        if "%" not in value:
            # Fast path (one per peer in a large set): inet_pton validates, as strictly.
            if value.startswith("["):
                close = value.find("]")
                host, port, fam = value[1:close], value[close + 2:], AF_INET6
                ok = close > 0 and value[close + 1:close + 2] == ":"
            else:
                host, _, port = value.rpartition(":")
                fam, ok = AF_INET, bool(host)
            if ok and port.isdigit() and port.isascii() and int(port) <= 65535:
                try:
                    packed = socket.inet_pton(fam, host)
                except (OSError, ValueError):
                    packed = b""
                if packed:
                    # inet_pton takes IPv4 only in its one canonical spelling.
                    return cls(host if fam == AF_INET else str(ipaddress.IPv6Address(packed)),
                               int(port))
        if value.startswith("["):
            close = value.find("]")
            if close < 0 or value[close + 1:close + 2] != ":":
                raise ValueError(f"bad endpoint {value!r}")
            host, port = value[1:close], value[close + 2:]
            addr = parse_ip(host, allow_scope=True)
            if addr.version != 6:
                raise ValueError(f"bracketed endpoint must be IPv6: {value!r}")
        else:
            host, sep, port = value.rpartition(":")
            if not sep:
                raise ValueError(f"endpoint without port: {value!r}")
            addr = parse_ip(host, allow_scope=False)
            if addr.version != 4:
                raise ValueError(f"IPv6 endpoint must be bracketed: {value!r}")
        if not port.isdigit() or not port.isascii() or int(port) > 65535:
            raise ValueError(f"bad endpoint port in {value!r}")
        return cls(addr, int(port))

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:      # type: ignore[override]
        return self[1]

    @property
    def address(self) -> IPAddress:
        return ipaddress.ip_address(self[0])

    @property
    def family(self) -> int:
        return AF_INET6 if ":" in self[0] else AF_INET

    @property
    def packed(self) -> bytes:
        """The address without its scope: 4 or 16 bytes."""
        host = self[0]
        if ":" in host:
            return socket.inet_pton(AF_INET6, host.partition("%")[0])
        return socket.inet_pton(AF_INET, host)

    @property
    def scope_id(self) -> int:
        """The numeric IPv6 scope (0 if none; an interface name is looked up, 0 if unknown)."""
        zone = self[0].partition("%")[2]
        if not zone:
            return 0
        if zone.isdigit():
            return int(zone)
        try:
            return socket.if_nametoindex(zone)
        except OSError:
            return 0

    def __str__(self) -> str:
        if ":" in self[0]:
            return f"[{format_ip(self.address)}]:{self[1]}"
        return f"{self[0]}:{self[1]}"

    def __repr__(self) -> str:
        src = f", src={self.src!r}" if self.src is not None else ""
        return f"Endpoint({self[0]!r}, {self[1]!r}{src})"


def format_endpoint(family: int, port: int, scope: int, addr: bytes) -> str | None:
    """A wg_addr's fields as an endpoint= value (None: no endpoint), as Endpoint.__str__."""
    if family == AF_INET:
        return f"{socket.inet_ntop(AF_INET, addr[:4])}:{port}"
    if family != AF_INET6:
        return None
    a = addr[:16]
    host = (socket.inet_ntop(AF_INET6, a) if a[:12] != bytes(12)
            else str(ipaddress.IPv6Address(a)))      # glibc writes ::a.b.c.d, Go does not
    return f"[{host}%{scope}]:{port}" if scope else f"[{host}]:{port}"


def parse_ip(text: str, allow_scope: bool) -> IPAddress:
    if "%" in text and not allow_scope:
        raise ValueError("zone not allowed")
    if "%" in text and (text.endswith("%") or ":" not in text):
        raise ValueError("empty or misplaced zone")
    return ipaddress.ip_address(text)


def format_ip(addr: IPAddress) -> str:
    # Go (netip) writes IPv4-mapped IPv6 with a dotted tail; Python 3.11 does not.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        scope = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{scope}"
    return str(addr)
