"""wireguard-go's cross-platform configuration protocol (UAPI) on a unix socket.

Facts followed here (https://www.wireguard.com/xplatform/ and wireguard-go device/uapi.go,
ipc/uapi_unix.go):

- A request is `get=1\\n\\n` or `set=1\\n` + `key=value` lines + a blank line; the reply ends
  with `errno=<n>\\n\\n`, n = 0 or a negative errno (-EINVAL bad value or key, -EPROTO a line
  without '=', -EADDRINUSE port/fwmark failures, -EIO, -55 "unknown").
- Device keys come first; `public_key` starts a peer and every following key belongs to it.
- `get` replies in the order private_key, listen_port, fwmark, then per peer public_key,
  preshared_key, protocol_version, endpoint, last_handshake_time_sec/_nsec, tx_bytes, rx_bytes,
  persistent_keepalive_interval, allowed_ip...; a zero private key, port 0 and fwmark 0 are
  left out, the preshared key is always present.
- The socket is /var/run/wireguard/<iface>.sock, made under umask 077 in a 0755 directory; a
  stale socket (nobody answers) is replaced, a live one is left alone.

Unlike wireguard-go, which applies lines as it reads them, a set is parsed and validated whole
before the handler sees it, so a bad request changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import gc
import inspect
import ipaddress
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from wgfast.peers import format_key, key_of_network, network_of_key, prefix_key

__all__ = [
    "UapiError",
    "Endpoint",
    "AllowedIpChange",
    "PeerSet",
    "SetRequest",
    "PeerSnapshot",
    "DeviceSnapshot",
    "UapiHandler",
    "UapiServer",
    "UapiSocketInUse",
    "parse_set",
    "format_get",
    "parse_key_hex",
    "parse_allowed_ip",
    "format_network",
    "socket_path",
    "SOCKET_DIR",
    "IPC_ERROR_IO",
    "IPC_ERROR_PROTOCOL",
    "IPC_ERROR_INVALID",
    "IPC_ERROR_PORT_IN_USE",
    "IPC_ERROR_UNKNOWN",
]

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"

# Positive errno values; the reply carries them negated, as wireguard-go does.
IPC_ERROR_IO = _errno.EIO
IPC_ERROR_PROTOCOL = _errno.EPROTO
IPC_ERROR_INVALID = _errno.EINVAL
IPC_ERROR_PORT_IN_USE = _errno.EADDRINUSE
IPC_ERROR_UNKNOWN = 55      # ENOANO, wireguard-go's "other error"

KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UapiError(Exception):
    """A request failed; errno is positive (EINVAL, EPROTO, ...), the reply sends -errno."""

    def __init__(self, errno: int, message: str = "") -> None:
        self.errno = errno
        self.message = message
        super().__init__(f"UAPI error {errno} ({_errno.errorcode.get(errno, '?')}): {message}")


class UapiSocketInUse(OSError):
    """Another live process is serving this interface's UAPI socket."""


# ---- values ------------------------------------------------------------------------------

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]+")


def parse_key_hex(value: str) -> bytes:
    """64 hex characters (either case) -> 32 bytes; UapiError(EINVAL) otherwise."""
    # fromhex skips whitespace, so 64 characters that are not all hex digits give fewer than
    # 32 bytes or an error: no regex needed on this hot path (one per peer).
    if len(value) == 64:
        try:
            b = bytes.fromhex(value)
        except ValueError:
            b = b""
        if len(b) == KEY_LEN and value.isascii():
            return b
    raise UapiError(IPC_ERROR_INVALID, "a key is 64 hex characters")


def _parse_uint(value: str, bits: int, what: str) -> int:
    # Decimal digits only, like Go's strconv.ParseUint(value, 10, bits).
    if not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:
        raise UapiError(IPC_ERROR_INVALID, f"bad {what}: {value!r}")
    return int(value)


def _parse_true(value: str, what: str) -> bool:
    if value != "true":
        raise UapiError(IPC_ERROR_INVALID, f"{what} takes only 'true', got {value!r}")
    return True


def _parse_ip(text: str, allow_scope: bool) -> IPAddress:
    if "%" in text and not allow_scope:
        raise ValueError("zone not allowed")
    if "%" in text and (text.endswith("%") or ":" not in text):
        raise ValueError("empty or misplaced zone")
    return ipaddress.ip_address(text)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A peer's UDP endpoint.  An IPv6 address may carry a scope (interface name or number)."""

    address: IPAddress
    port: int

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        """`a.b.c.d:port` or `[v6addr%scope]:port`; ValueError when malformed."""
        if "%" not in value:
            # Fast path (one per peer in a large set): inet_pton validates, as strictly.
            if value.startswith("["):
                close = value.find("]")
                host, port, fam = value[1:close], value[close + 2:], socket.AF_INET6
                ok = close > 0 and value[close + 1:close + 2] == ":"
            else:
                host, _, port = value.rpartition(":")
                fam, ok = socket.AF_INET, bool(host)
            if ok and port.isdigit() and port.isascii() and int(port) <= 65535:
                try:
                    packed = socket.inet_pton(fam, host)
                except (OSError, ValueError):
                    packed = b""
                if packed:
                    addr: IPAddress = (ipaddress.IPv4Address(packed) if fam == socket.AF_INET
                                       else ipaddress.IPv6Address(packed))
                    return cls(addr, int(port))
        if value.startswith("["):
            close = value.find("]")
            if close < 0 or value[close + 1:close + 2] != ":":
                raise ValueError(f"bad endpoint {value!r}")
            host, port = value[1:close], value[close + 2:]
            addr = _parse_ip(host, allow_scope=True)
            if addr.version != 6:
                raise ValueError(f"bracketed endpoint must be IPv6: {value!r}")
        else:
            host, sep, port = value.rpartition(":")
            if not sep:
                raise ValueError(f"endpoint without port: {value!r}")
            addr = _parse_ip(host, allow_scope=False)
            if addr.version != 4:
                raise ValueError(f"IPv6 endpoint must be bracketed: {value!r}")
        if not _DIGITS.fullmatch(port) or int(port) > 65535:
            raise ValueError(f"bad endpoint port in {value!r}")
        return cls(addr, int(port))

    @property
    def family(self) -> int:
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6

    @property
    def scope_id(self) -> int:
        """The numeric IPv6 scope (0 if none; an interface name is looked up)."""
        scope = getattr(self.address, "scope_id", None)
        if not scope:
            return 0
        if scope.isdigit():
            return int(scope)
        try:
            return socket.if_nametoindex(scope)
        except OSError:
            return 0

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{_format_ip(self.address)}]:{self.port}"
        return f"{self.address}:{self.port}"


def format_endpoint(family: int, port: int, scope: int, addr: bytes) -> str | None:
    """A wg_addr's fields as an endpoint= value (None: no endpoint), as Endpoint.__str__."""
    if family == socket.AF_INET:
        return f"{socket.inet_ntop(socket.AF_INET, addr[:4])}:{port}"
    if family != socket.AF_INET6:
        return None
    a = addr[:16]
    host = (socket.inet_ntop(socket.AF_INET6, a) if a[:12] != bytes(12)
            else str(ipaddress.IPv6Address(a)))      # glibc writes ::a.b.c.d, Go does not
    return f"[{host}%{scope}]:{port}" if scope else f"[{host}]:{port}"


def _format_ip(addr: IPAddress) -> str:
    # Go (netip) writes IPv4-mapped IPv6 with a dotted tail; Python 3.11 does not.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        scope = f"%{addr.scope_id}" if addr.scope_id else ""
        return f"::ffff:{addr.ipv4_mapped}{scope}"
    return str(addr)


def parse_allowed_ip(value: str) -> IPNetwork:
    """`addr/cidr` (the address is masked to the prefix) -> network; ValueError if malformed."""
    host, sep, bits = value.rpartition("/")
    if not sep or not _DIGITS.fullmatch(bits) or (len(bits) > 1 and bits[0] == "0"):
        raise ValueError(f"bad prefix {value!r}")
    addr = _parse_ip(host, allow_scope=False)
    if int(bits) > addr.max_prefixlen:
        raise ValueError(f"prefix length out of range: {value!r}")
    return ipaddress.ip_network(f"{addr}/{bits}", strict=False)


def format_network(net: IPNetwork) -> str:
    return f"{_format_ip(net.network_address)}/{net.prefixlen}"


# ---- the set request ---------------------------------------------------------------------

class AllowedIpChange:
    """One `allowed_ip=` line.  Held as a prefix key (wgfast.peers.prefix_key: packed masked
    address + cidr), the form the device stores; `network` builds the ipaddress object."""

    __slots__ = ("key", "remove")

    def __init__(self, network: IPNetwork | bytes, remove: bool = False) -> None:
        self.key = network if isinstance(network, bytes) else key_of_network(network)
        self.remove = remove        # `allowed_ip=-addr/cidr`: drop it if this peer owns it

    @property
    def network(self) -> IPNetwork:
        return network_of_key(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllowedIpChange) and (self.key, self.remove) == (
            other.key, other.remove)

    def __hash__(self) -> int:
        return hash((self.key, self.remove))

    def __repr__(self) -> str:
        return f"AllowedIpChange({format_key(self.key)!r}, remove={self.remove})"


@dataclass(slots=True)
class PeerSet:
    """One `public_key=` block.  Blocks apply in order; the same key may appear again."""

    public_key: bytes
    remove: bool = False                    # remove the peer; nothing else in the block applies
    update_only: bool = False               # apply only if the peer already exists
    preshared_key: bytes | None = None      # 32 zero bytes = no preshared key
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False       # drop the peer's allowed IPs before the changes
    allowed_ips: list[AllowedIpChange] = field(default_factory=list)


@dataclass
class SetRequest:
    """A whole, validated `set=1` request.  The device applies it all or not at all.

    A private key of 32 zero bytes clears the key.  A peer whose public key is the device's own
    is to be ignored (wireguard-go does), which only the device can tell."""

    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None               # 0 = off
    replace_peers: bool = False
    peers: list[PeerSet] = field(default_factory=list)


def _iter_lines(text: str) -> Iterator[str]:
    """The lines of text, one at a time: a large request never becomes a million strings at
    once (they would stay behind as fragmented heap next to the configuration)."""
    start = 0
    find = text.find
    while True:
        end = find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def parse_set(lines: Iterable[str] | str) -> SetRequest:
    """Parse the key=value lines of a set request (without `set=1` and the blank line)."""
    if isinstance(lines, str):
        lines = _iter_lines(lines)
    req = SetRequest()
    peer: PeerSet | None = None
    dead = False            # after remove=true the rest of the block is checked but ignored
    for line in lines:
        if line == "":
            break
        key, sep, value = line.partition("=")
        if not sep:
            # The line itself is not echoed: it might be a key that lost its '='.
            raise UapiError(IPC_ERROR_PROTOCOL, f"line without '=' ({len(line)} characters)")
        if peer is not None and not dead:
            # The common lines of a large request, kept short (one call per line).
            if key == "allowed_ip" and value[:1] != "-":
                try:
                    peer.allowed_ips.append(AllowedIpChange(prefix_key(value)))
                except ValueError as e:
                    raise UapiError(IPC_ERROR_INVALID, str(e)) from None
                continue
            if key == "endpoint" and "%" not in value:     # a scope takes the long way
                try:
                    peer.endpoint = Endpoint.parse(value)
                except ValueError as e:
                    raise UapiError(IPC_ERROR_INVALID, str(e)) from None
                continue
            if key == "replace_allowed_ips" and value == "true":
                peer.replace_allowed_ips = True
                peer.allowed_ips.clear()
                continue
        if key == "public_key":
            peer = PeerSet(parse_key_hex(value))
            req.peers.append(peer)
            dead = False
            continue
        if peer is None:
            _device_line(req, key, value)
            continue
        _peer_line(peer, key, value, dead)
        if peer.remove:
            dead = True
    return req


def _device_line(req: SetRequest, key: str, value: str) -> None:
    if key == "private_key":
        req.private_key = parse_key_hex(value)
    elif key == "listen_port":
        req.listen_port = _parse_uint(value, 16, "listen_port")
    elif key == "fwmark":
        req.fwmark = 0 if value == "" else _parse_uint(value, 32, "fwmark")
    elif key == "replace_peers":
        req.replace_peers = _parse_true(value, "replace_peers")
        # Peers named earlier in this request would be removed by it: nothing precedes it
        # here because device keys come before every peer.
    else:
        raise UapiError(IPC_ERROR_INVALID, f"invalid device key {key!r}")


def _peer_line(peer: PeerSet, key: str, value: str, dead: bool) -> None:
    if key == "remove":
        _parse_true(value, "remove")
        if not dead:
            peer.remove = True
    elif key == "update_only":
        _parse_true(value, "update_only")
        peer.update_only = True
    elif key == "preshared_key":
        psk = parse_key_hex(value)
        if not dead:
            peer.preshared_key = psk
    elif key == "endpoint":
        try:
            ep = Endpoint.parse(value)
        except ValueError as e:
            raise UapiError(IPC_ERROR_INVALID, str(e)) from None
        # An interface scope is resolved now, so a set naming an unknown one is refused
        # whole (EINVAL) before anything is applied.
        scope = getattr(ep.address, "scope_id", None)
        if scope and not scope.isdigit():
            try:
                socket.if_nametoindex(scope)
            except OSError:
                raise UapiError(IPC_ERROR_INVALID,
                                f"endpoint {value!r}: no interface {scope!r}") from None
        if not dead:
            peer.endpoint = ep
    elif key == "persistent_keepalive_interval":
        ka = _parse_uint(value, 16, "persistent_keepalive_interval")
        if not dead:
            peer.persistent_keepalive_interval = ka
    elif key == "replace_allowed_ips":
        _parse_true(value, "replace_allowed_ips")
        if not dead:
            # Replacing discards whatever this block added before: same result as in order.
            peer.replace_allowed_ips = True
            peer.allowed_ips.clear()
    elif key == "allowed_ip":
        remove = value.startswith("-")
        try:
            k = prefix_key(value[1:] if remove else value)
        except ValueError as e:
            raise UapiError(IPC_ERROR_INVALID, str(e)) from None
        if not dead:
            peer.allowed_ips.append(AllowedIpChange(k, remove))
    elif key == "protocol_version":
        if value != "1":
            raise UapiError(IPC_ERROR_INVALID, f"unsupported protocol_version {value!r}")
    else:
        raise UapiError(IPC_ERROR_INVALID, f"invalid peer key {key!r}")


# ---- the get reply -----------------------------------------------------------------------

@dataclass
class PeerSnapshot:
    public_key: bytes
    preshared_key: bytes = ZERO_KEY
    protocol_version: int = 1
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake_time_sec: int = 0        # absolute unix time; 0 = never
    last_handshake_time_nsec: int = 0


@dataclass
class DeviceSnapshot:
    private_key: bytes = ZERO_KEY
    listen_port: int = 0                    # the port actually bound
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)


def format_get(state: DeviceSnapshot) -> str:
    """The full reply to `get=1`, ending with `errno=0` and a blank line."""
    out: list[str] = []
    if state.private_key != ZERO_KEY:
        out.append(f"private_key={state.private_key.hex()}")
    if state.listen_port:
        out.append(f"listen_port={state.listen_port}")
    if state.fwmark:
        out.append(f"fwmark={state.fwmark}")
    for p in state.peers:
        out.append(f"public_key={p.public_key.hex()}")
        out.append(f"preshared_key={p.preshared_key.hex()}")
        out.append(f"protocol_version={p.protocol_version}")
        if p.endpoint is not None:
            out.append(f"endpoint={p.endpoint}")
        out.append(f"last_handshake_time_sec={p.last_handshake_time_sec}")
        out.append(f"last_handshake_time_nsec={p.last_handshake_time_nsec}")
        out.append(f"tx_bytes={p.tx_bytes}")
        out.append(f"rx_bytes={p.rx_bytes}")
        out.append(f"persistent_keepalive_interval={p.persistent_keepalive_interval}")
        out.extend(f"allowed_ip={format_network(n)}" for n in p.allowed_ips)
    out.append("errno=0")
    return "\n".join(out) + "\n\n"


# ---- the server --------------------------------------------------------------------------

@runtime_checkable
class UapiHandler(Protocol):
    """What the server drives: the device.  Either method may also be a coroutine."""

    def uapi_get(self) -> DeviceSnapshot: ...

    def uapi_set(self, req: SetRequest) -> None: ...

# A handler may also offer uapi_get_chunks() -> Iterable[str]: the get reply (ending with
# errno=0 and the blank line) in pieces, which the server then streams.


def socket_path(iface: str) -> str:
    return os.path.join(SOCKET_DIR, f"{iface}.sock")


def _bind_uapi_socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    for attempt in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            sock.bind(path)
            return sock
        except OSError as e:
            sock.close()
            if e.errno != _errno.EADDRINUSE or attempt:
                raise
        finally:
            os.umask(old)
        # Something is there: a live server answers, a stale socket refuses.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            pass
        else:
            raise UapiSocketInUse(_errno.EADDRINUSE, f"UAPI socket {path} is in use")
        finally:
            probe.close()
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UapiSocketInUse(_errno.EEXIST, f"{path} exists and is not a socket")
        os.unlink(path)
    raise AssertionError("unreachable")


class UapiServer:
    """Serves the UAPI for one interface on an asyncio loop."""

    MAX_REQUEST_LINES = 1 << 24
    MAX_REQUEST_BYTES = 1 << 30     # a million peers' worth, with room to spare
    # A live socket may belong to a daemon that is shutting down (its interface was just
    # deleted, and `ip link del wg0; wgfast-daemon wg0` starts the next one at once): wait
    # this long for it to let go before refusing.
    BUSY_WAIT = 3.0

    def __init__(self, iface: str, handler: UapiHandler, path: str | None = None,
                 busy_wait: float | None = None) -> None:
        self.iface = iface
        self.handler = handler
        self.path = path or socket_path(iface)
        self.busy_wait = self.BUSY_WAIT if busy_wait is None else busy_wait
        self._server: asyncio.AbstractServer | None = None
        self._ino: int | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        deadline = time.monotonic() + self.busy_wait
        while True:
            try:
                sock = _bind_uapi_socket(self.path)
                break
            except UapiSocketInUse as e:
                if e.errno != _errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)
        self._ino = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                       limit=self.MAX_REQUEST_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()
            self._server = None
        # Remove our socket file, not one a successor put there.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    async def __aenter__(self) -> UapiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            while True:
                op = await reader.readline()
                if op == b"get=1\n":
                    nxt = await reader.read(1)
                    if not nxt:
                        return
                    code = 0 if nxt == b"\n" else IPC_ERROR_INVALID
                    if code == 0:
                        if await self._stream_get(writer):
                            continue
                        code = IPC_ERROR_UNKNOWN
                    writer.write(f"errno={-code}\n\n".encode())
                elif op == b"set=1\n":
                    lines = await self._read_request(reader)
                    if lines is None:
                        return          # truncated: apply nothing
                    code = await self._set(lines)
                    writer.write(f"errno={-code}\n\n".encode())
                else:
                    return              # EOF or an unknown operation: hang up, as wireguard-go
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, UnicodeDecodeError):
            return
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> str | None:
        """The lines up to the blank one, read in bulk (a large set is a million lines)."""
        first = await reader.read(1)
        if not first:
            return None
        if first == b"\n":
            return ""
        try:
            # The first byte is not a newline, so the blank line ends in "\n\n" after it.
            raw = first + await reader.readuntil(b"\n\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        del first
        text = raw[:-2].decode()
        del raw
        return text if text.count("\n") < self.MAX_REQUEST_LINES else None

    async def _stream_get(self, writer: asyncio.StreamWriter) -> bool:
        """Write the get reply.  A handler with uapi_get_chunks() is streamed: each chunk is
        written as it is made, so a large device never becomes one giant string.  False =
        the handler failed before writing anything (the caller sends the errno)."""
        chunks_fn = getattr(self.handler, "uapi_get_chunks", None)
        if chunks_fn is None:
            reply = await self._get()
            if reply is None:
                return False
            writer.write(reply.encode())
            await writer.drain()
            return True
        try:
            it = iter(chunks_fn())
            first = next(it, None)
        except Exception:
            log.exception("UAPI get failed")
            return False
        try:
            while first is not None:
                writer.write(first.encode())
                await writer.drain()
                first = next(it, None)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # Half a reply is out: hang up rather than end it with a misleading errno.
            log.exception("UAPI get failed midway")
            raise ConnectionError("get failed") from None
        return True

    async def _get(self) -> str | None:
        try:
            snap = self.handler.uapi_get()
            if inspect.isawaitable(snap):
                snap = await snap
            return format_get(snap)
        except Exception:
            log.exception("UAPI get failed")
            return None

    LARGE_SET = 1 << 20     # characters: a set this large is parsed with the cyclic GC paused

    async def _set(self, lines: str) -> int:
        # The cyclic GC would walk every object so far, again and again, while a large request
        # makes millions of them (none in cycles): paused, a million peers parse in linear time.
        paused = len(lines) >= self.LARGE_SET and gc.isenabled()
        if paused:
            gc.disable()
        try:
            req = parse_set(lines)
            res = self.handler.uapi_set(req)
            if inspect.isawaitable(res):
                await res
            return 0
        except UapiError as e:
            log.info("UAPI set rejected: %s", e.message or e)
            return e.errno
        except Exception:
            log.exception("UAPI set failed")
            return IPC_ERROR_UNKNOWN
        finally:
            if paused:
                gc.enable()
