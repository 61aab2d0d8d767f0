"""wg(8) and wg-quick(8) configuration files.

A file parses into the same `SetRequest` the UAPI produces (replace_peers, and
replace_allowed_ips on every peer: the semantics of `wg setconf`), so the device has one apply
path.  wg-quick's own keys (Address, DNS, MTU, Table, Pre/PostUp/Down, SaveConfig) go into a
separate `QuickSettings` the daemon ignores.

Rules followed (wg(8), wg-quick(8)): sections and keys are case-insensitive; '#' starts a
comment; wg's keys ignore all whitespace; AllowedIPs, Address and DNS are comma lists that may
repeat; an allowed IP without /cidr is a host route; FwMark and PersistentKeepalive take "off";
FwMark may be hex (0x..).  An Endpoint host name is resolved when the file is read.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from wgfast.endpoint import Endpoint
from wgfast.messages import KEY_LEN
from wgfast.uapi import (
    ZERO_KEY,
    AllowedIpChange,
    DeviceSnapshot,
    PeerSet,
    SetRequest,
    format_network,
)

__all__ = [
    "ConfigError",
    "QuickSettings",
    "Config",
    "parse_config",
    "load_config",
    "format_config",
    "snapshot_to_request",
    "format_snapshot",
    "key_from_base64",
    "key_to_base64",
]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ConfigError(ValueError):
    """A broken configuration file: where and why."""

    def __init__(self, message: str, lineno: int | None = None, filename: str = "<config>"):
        self.message = message
        self.lineno = lineno
        self.filename = filename
        where = f"{filename}:{lineno}" if lineno is not None else filename
        super().__init__(f"{where}: {message}")


@dataclass
class QuickSettings:
    """wg-quick's keys from [Interface]; wgfast itself ignores them (`wgfast demo` may not)."""

    addresses: list[IPInterface] = field(default_factory=list)
    dns: list[IPAddress] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False


@dataclass
class Config:
    request: SetRequest
    quick: QuickSettings = field(default_factory=QuickSettings)

    def to_text(self) -> str:
        return format_config(self.request, self.quick)


def key_from_base64(value: str) -> bytes:
    """A 44-character base64 key -> 32 bytes; ValueError otherwise."""
    if len(value) != 44 or not value.endswith("="):
        raise ValueError("a key is 44 base64 characters")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("a key is 44 base64 characters") from None
    if len(raw) != KEY_LEN:
        raise ValueError("a key is 32 bytes")
    return raw


def key_to_base64(key: bytes) -> str:
    return base64.b64encode(key).decode()


_DIGITS = re.compile(r"[0-9]+")
_WG_KEYS = {
    "interface": {"privatekey", "listenport", "fwmark"},
    "peer": {"publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive"},
}
_QUICK_KEYS = {"address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown",
               "saveconfig"}


def _number(value: str, limit: int, what: str) -> int:
    if not _DIGITS.fullmatch(value) or int(value) > limit:
        raise ValueError(f"{what} must be a number from 0 to {limit}, not {value!r}")
    return int(value)


def _fwmark(value: str) -> int:
    if value.lower() == "off":
        return 0
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", value):
        mark = int(value, 16)
    elif _DIGITS.fullmatch(value):
        mark = int(value)
    else:
        raise ValueError(f"FwMark must be 'off' or a number, not {value!r}")
    if mark > 0xFFFFFFFF:
        raise ValueError("FwMark is a 32-bit number")
    return mark


def _allowed_ip(item: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    host, sep, bits = item.partition("/")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad address in AllowedIPs: {item!r}") from None
    if "%" in host:
        raise ValueError(f"AllowedIPs take no scope: {item!r}")
    cidr: int = addr.max_prefixlen
    if sep:
        cidr = _number(bits, addr.max_prefixlen, f"prefix length of {item!r}")
    return ipaddress.ip_network(f"{addr}/{cidr}", strict=False)


def _endpoint(value: str, resolve: bool) -> Endpoint:
    try:
        return Endpoint.parse(value)
    except ValueError:
        pass
    # A host name: split host and port as wg does, then resolve.
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    if not host or not _DIGITS.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"Endpoint must be host:port, not {value!r}")
    if not resolve:
        raise ValueError(f"Endpoint {value!r} is not an address (resolution disabled)")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"cannot resolve Endpoint {host!r}: {e}") from None
    family, _, _, _, sa = infos[0]
    host_text = str(sa[0])
    addr = ipaddress.ip_address(host_text)
    if family == socket.AF_INET6 and len(sa) == 4 and sa[3]:
        addr = ipaddress.ip_address(f"{host_text.split('%')[0]}%{sa[3]}")
    return Endpoint(addr, int(port))


def parse_config(text: str, filename: str = "<config>", resolve: bool = True) -> Config:
    """Parse a wg / wg-quick configuration; ConfigError names the line of any problem."""
    req = SetRequest(replace_peers=True)
    quick = QuickSettings()
    section: str | None = None
    seen_interface = False
    peer: PeerSet | None = None
    peer_line = 0

    def finish_peer() -> None:
        if peer is not None and peer.public_key == ZERO_KEY:
            raise ConfigError("[Peer] has no PublicKey", peer_line, filename)

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.replace(" ", "").replace("\t", "").lower()
            if name == "[interface]":
                section = "interface"
                seen_interface = True
            elif name == "[peer]":
                finish_peer()
                section = "peer"
                peer = PeerSet(public_key=ZERO_KEY, replace_allowed_ips=True)
                peer_line = lineno
                req.peers.append(peer)
            else:
                raise ConfigError(f"unknown section {line!r}", lineno, filename)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"expected 'Key = Value', got {line!r}", lineno, filename)
        key = re.sub(r"\s+", "", key).lower()
        if section is None:
            raise ConfigError(f"{key!r} outside of a section", lineno, filename)
        try:
            if section == "interface" and key in _QUICK_KEYS:
                _quick_line(quick, key, value.strip())
                continue
            if key not in _WG_KEYS[section]:
                raise ValueError(f"unknown key in [{section.capitalize()}]: {line.split('=')[0]!r}")
            value = re.sub(r"\s+", "", value)
            if section == "interface":
                _interface_line(req, key, value)
            else:
                assert peer is not None
                _peer_line(peer, key, value, resolve)
        except ValueError as e:
            raise ConfigError(str(e), lineno, filename) from None
    finish_peer()
    if not seen_interface and not req.peers:
        raise ConfigError("no [Interface] or [Peer] section", None, filename)
    return Config(req, quick)


def _interface_line(req: SetRequest, key: str, value: str) -> None:
    if key == "privatekey":
        req.private_key = key_from_base64(value)
    elif key == "listenport":
        req.listen_port = _number(value, 65535, "ListenPort")
    elif key == "fwmark":
        req.fwmark = _fwmark(value)


def _peer_line(peer: PeerSet, key: str, value: str, resolve: bool) -> None:
    if key == "publickey":
        peer.public_key = key_from_base64(value)
    elif key == "presharedkey":
        peer.preshared_key = key_from_base64(value)
    elif key == "allowedips":
        for item in value.split(","):
            if item:
                peer.allowed_ips.append(AllowedIpChange(_allowed_ip(item)))
    elif key == "endpoint":
        peer.endpoint = _endpoint(value, resolve)
    elif key == "persistentkeepalive":
        peer.persistent_keepalive_interval = (
            0 if value.lower() == "off" else _number(value, 65535, "PersistentKeepalive"))


def _quick_line(q: QuickSettings, key: str, value: str) -> None:
    if key == "address":
        for item in (s.strip() for s in value.split(",")):
            if item:
                try:
                    q.addresses.append(ipaddress.ip_interface(item))
                except ValueError:
                    raise ValueError(f"bad Address {item!r}") from None
    elif key == "dns":
        for item in (s.strip() for s in value.split(",")):
            if not item:
                continue
            try:
                q.dns.append(ipaddress.ip_address(item))
            except ValueError:
                q.dns_search.append(item)
    elif key == "mtu":
        q.mtu = _number(value, 65535, "MTU")
    elif key == "table":
        if not value:
            raise ValueError("Table needs a value")
        q.table = value
    elif key == "saveconfig":
        if value.lower() not in ("true", "false"):
            raise ValueError(f"SaveConfig must be true or false, not {value!r}")
        q.save_config = value.lower() == "true"
    else:
        {"preup": q.pre_up, "postup": q.post_up, "predown": q.pre_down,
         "postdown": q.post_down}[key].append(value)


def load_config(path: str | Path, resolve: bool = True) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", None, str(p)) from None
    return parse_config(text, str(p), resolve)


def format_config(req: SetRequest, quick: QuickSettings | None = None) -> str:
    """Text in `wg showconf`'s layout (wg-quick keys first when given)."""
    out = ["[Interface]"]
    if quick is not None:
        if quick.addresses:
            out.append("Address = " + ", ".join(str(a) for a in quick.addresses))
        if quick.dns or quick.dns_search:
            out.append("DNS = " + ", ".join([*map(str, quick.dns), *quick.dns_search]))
        if quick.mtu is not None:
            out.append(f"MTU = {quick.mtu}")
        if quick.table is not None:
            out.append(f"Table = {quick.table}")
        for name, cmds in (("PreUp", quick.pre_up), ("PostUp", quick.post_up),
                           ("PreDown", quick.pre_down), ("PostDown", quick.post_down)):
            out.extend(f"{name} = {c}" for c in cmds)
        if quick.save_config:
            out.append("SaveConfig = true")
    if req.listen_port:
        out.append(f"ListenPort = {req.listen_port}")
    if req.fwmark:
        out.append(f"FwMark = {req.fwmark:#x}")
    if req.private_key is not None and req.private_key != ZERO_KEY:
        out.append(f"PrivateKey = {key_to_base64(req.private_key)}")
    for p in req.peers:
        if p.remove:
            continue
        out += ["", "[Peer]", f"PublicKey = {key_to_base64(p.public_key)}"]
        if p.preshared_key is not None and p.preshared_key != ZERO_KEY:
            out.append(f"PresharedKey = {key_to_base64(p.preshared_key)}")
        nets = [format_network(c.network) for c in p.allowed_ips if not c.remove]
        if nets:
            out.append("AllowedIPs = " + ", ".join(nets))
        if p.endpoint is not None:
            out.append(f"Endpoint = {p.endpoint}")
        ka = p.persistent_keepalive_interval
        if ka is not None:      # an explicit 0 stays explicit: "off"
            out.append(f"PersistentKeepalive = {ka or 'off'}")
    return "\n".join(out) + "\n"


def snapshot_to_request(snap: DeviceSnapshot) -> SetRequest:
    """A device's state as the setconf request that recreates it."""
    return SetRequest(
        private_key=snap.private_key, listen_port=snap.listen_port, fwmark=snap.fwmark,
        replace_peers=True,
        peers=[PeerSet(public_key=p.public_key,
                       preshared_key=p.preshared_key if p.preshared_key != ZERO_KEY else None,
                       endpoint=p.endpoint,
                       persistent_keepalive_interval=p.persistent_keepalive_interval or None,
                       replace_allowed_ips=True,
                       allowed_ips=[AllowedIpChange(n) for n in p.allowed_ips])
               for p in snap.peers])


def format_snapshot(snap: DeviceSnapshot) -> str:
    """`wg showconf` for a device state."""
    return format_config(snapshot_to_request(snap))
