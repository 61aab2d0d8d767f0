"""wireguard-go's cross-platform configuration protocol (UAPI): the text of its requests and
replies (parse_set, format_get).  The unix socket that carries them is wgfast.uapi_server.

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

Unlike wireguard-go, which applies lines as it reads them, a set is parsed and validated whole
before the handler sees it, so a bad request changes nothing.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from wgfast.endpoint import Endpoint, format_endpoint, format_ip, parse_ip
from wgfast.peers import format_key, key_of_network, network_of_key, prefix_key

__all__ = [
    "UapiError",
    "Endpoint",
    "format_endpoint",
    "AllowedIpChange",
    "PeerSet",
    "SetRequest",
    "PeerSnapshot",
    "DeviceSnapshot",
    "parse_set",
    "format_get",
    "parse_key_hex",
    "parse_allowed_ip",
    "format_network",
    "IPC_ERROR_IO",
    "IPC_ERROR_PROTOCOL",
    "IPC_ERROR_INVALID",
    "IPC_ERROR_PORT_IN_USE",
    "IPC_ERROR_UNKNOWN",
]

log = logging.getLogger(__name__)

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


def parse_allowed_ip(value: str) -> IPNetwork:
    """`addr/cidr` (the address is masked to the prefix) -> network; ValueError if malformed."""
    host, sep, bits = value.rpartition("/")
    if not sep or not _DIGITS.fullmatch(bits) or (len(bits) > 1 and bits[0] == "0"):
        raise ValueError(f"bad prefix {value!r}")
    addr = parse_ip(host, allow_scope=False)
    if int(bits) > addr.max_prefixlen:
        raise ValueError(f"prefix length out of range: {value!r}")
    return ipaddress.ip_network(f"{addr}/{bits}", strict=False)


def format_network(net: IPNetwork) -> str:
    return f"{format_ip(net.network_address)}/{net.prefixlen}"


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
