"""The device's UDP sockets (the kernel's socket.c): one port for IPv4 and IPv6, buffer
tuning, the fwmark, the sticky source, and the control plane's own sends (handshake
messages; data leaves from C, on the same sockets).

A port change prepares the new pair first (open_pair) and swaps it in only once nothing else
in the request can fail, with the data plane's threads stopped (the device does that).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct

from wgfast.endpoint import Endpoint

log = logging.getLogger("wgfast")

# Socket options Python's socket module may lack (values from the Linux headers).
SOL_UDP = 17                    # = IPPROTO_UDP
UDP_SEGMENT = 103               # linux/udp.h: GSO, datagram size per send
UDP_GRO = 104                   # linux/udp.h: coalesce received datagrams
IP_PKTINFO = 8                  # linux/in.h
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_IN_PKTINFO = struct.Struct("=i4s4s")       # struct in_pktinfo: ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")       # struct in6_pktinfo: addr, ifindex

SOCKET_BUFFER = 4 << 20          # UDP socket buffers (forced as root): bursts of 64-packet batches
# A send from a sticky source failing with these: the address left the host (or its route).
SOURCE_ERRNOS = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH,
                           errno.EHOSTUNREACH, errno.ENODEV, errno.ENXIO})

Pair = tuple[socket.socket | None, socket.socket | None, int]


def tune(s: socket.socket, fwmark: int) -> None:
    """Large buffers (forced when we may), and the fwmark when set (0 needs no privilege)."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF),
                         (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    if fwmark:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)


# A family the host lacks (no IPv6, or no such address): the other one serves alone.
_FAMILY_MISSING = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def _bound(family: int, host: str, port: int, fwmark: int) -> socket.socket:
    """A tuned UDP socket of family bound to (host, port); closed again if that fails."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        tune(s, fwmark)
        s.bind((host, port))
    except OSError:
        s.close()
        raise
    return s


def open_pair(port: int, fwmark: int, offloads: bool, host4: str = "0.0.0.0",
              host6: str = "::") -> Pair:
    """IPv4 and IPv6 sockets on one port (random when 0), bound to host4/host6.  Either
    family may be missing from the host; both missing is an error."""
    last: OSError | None = None
    for _ in range(16 if port == 0 else 1):
        s6: socket.socket | None = None
        s4: socket.socket | None = None
        try:
            try:
                s6 = _bound(socket.AF_INET6, host6, port, fwmark)
            except OSError as e:
                if e.errno not in _FAMILY_MISSING:
                    raise
            bound = s6.getsockname()[1] if s6 is not None else port
            try:
                s4 = _bound(socket.AF_INET, host4, bound, fwmark)
            except OSError as e:
                if e.errno not in _FAMILY_MISSING or s6 is None:
                    raise
            if s4 is None and s6 is None:
                raise OSError(errno.EAFNOSUPPORT, "neither IPv4 nor IPv6 is available")
            real = (s4 or s6).getsockname()[1]  # type: ignore[union-attr]
            # The local address each datagram reached: replies leave from it (sticky).
            if s4 is not None:
                s4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            if s6 is not None:
                s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            if offloads:
                for s in (s4, s6):
                    if s is not None:
                        with contextlib.suppress(OSError):
                            s.setsockopt(SOL_UDP, UDP_GRO, 1)
            return s4, s6, real
        except OSError as e:
            for s in (s4, s6):
                if s is not None:
                    s.close()
            last = e
            if e.errno != errno.EADDRINUSE:
                break
    assert last is not None
    raise last


class UdpSockets:
    """The pair a device listens on, and its port and fwmark.  host4/host6 are the bind
    addresses (the wildcard; tests bind loopback)."""

    def __init__(self, offloads: bool, host4: str = "0.0.0.0", host6: str = "::") -> None:
        self.offloads = offloads
        self.host4, self.host6 = host4, host6
        self.sock4: socket.socket | None = None
        self.sock6: socket.socket | None = None
        self.port = 0
        self.fwmark = 0

    def open_pair(self, port: int, fwmark: int) -> Pair:
        """A new pair, not yet in use (swap() puts it in)."""
        return open_pair(port, fwmark, self.offloads, self.host4, self.host6)

    def swap(self, s4: socket.socket | None, s6: socket.socket | None, port: int) -> None:
        old = (self.sock4, self.sock6)
        self.sock4, self.sock6, self.port = s4, s6, port
        for s in old:
            if s is not None:
                s.close()

    def set_fwmark(self, mark: int) -> None:
        self.fwmark = mark
        for s in (self.sock4, self.sock6):
            if s is not None:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def fds(self) -> tuple[int, int]:
        """(IPv4, IPv6) descriptors for the data plane, -1 for a missing family."""
        return (self.sock4.fileno() if self.sock4 else -1,
                self.sock6.fileno() if self.sock6 else -1)

    def gro(self) -> bool:
        """Whether every open socket took UDP_GRO."""
        socks = [s for s in (self.sock4, self.sock6) if s is not None]
        return bool(socks) and all(s.getsockopt(SOL_UDP, UDP_GRO) for s in socks)

    def close(self) -> None:
        self.swap(None, None, 0)

    def send(self, data: bytes, ep: tuple[str, int]) -> bool:
        return send(self.sock4, self.sock6, data, ep)


def send(sock4: socket.socket | None, sock6: socket.socket | None, data: bytes,
         ep: tuple[str, int]) -> bool:
    """Send a handshake message to ep; from its sticky source (ep.src, when it is an Endpoint
    that has one) like the data plane, else from where routing says."""
    host, port = ep
    s = sock6 if ":" in host else sock4
    if s is None:
        return False
    v6 = s is sock6
    dest: tuple[str, int] | tuple[str, int, int, int] = (host, port)
    src = ep.src if isinstance(ep, Endpoint) else None
    try:
        if v6 and "%" in host:
            addr, _, zone = host.partition("%")
            scope = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
            dest = (addr, port, 0, scope)
        if src is not None:
            if v6:
                info = _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, src[0]), src[1])
                cmsg = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)
            else:
                info = _IN_PKTINFO.pack(0, socket.inet_aton(src[0]), bytes(4))
                cmsg = (socket.IPPROTO_IP, IP_PKTINFO, info)
            try:
                s.sendmsg([data], [cmsg], 0, dest)
                return True
            except OSError as e:
                if e.errno not in SOURCE_ERRNOS:
                    raise
                # Not too sticky: that address is gone, so routing picks one.
                log.debug("source %s for %s:%d refused (%s)", src[0], host, port, e)
        s.sendto(data, dest)
        return True
    except OSError as e:
        log.debug("send to %s:%d failed: %s", host, port, e)
        return False
