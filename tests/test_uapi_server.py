"""wgfast.uapi_server: the UAPI socket, against an in-memory device with wireguard-go's
semantics and the real `wg` tool.

Protocol facts: https://www.wireguard.com/xplatform/ and wireguard-go device/uapi.go
(errno=-22 EINVAL for bad values/keys, -71 EPROTO for a line without '=').

Over ~400 lines: one protocol's socket, key by key and error by error, as wg drives it."""

from __future__ import annotations

import asyncio
import base64
import copy
import errno
import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from nacl.public import PrivateKey

from wgfast.endpoint import Endpoint
from wgfast.uapi import (
    ZERO_KEY,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    UapiError,
)
from wgfast.uapi_server import UapiHandler, UapiServer, UapiSocketInUse

IFACE = "h3wg0"
WG_SOCK = f"/var/run/wireguard/{IFACE}.sock"


def key() -> bytes:
    return bytes(PrivateKey.generate())


def pub(sk: bytes) -> bytes:
    return bytes(PrivateKey(sk).public_key)


# ---- a fake device with wireguard-go's semantics ------------------------------------------

@dataclass
class FakePeer:
    psk: bytes = ZERO_KEY
    endpoint: Endpoint | None = None
    keepalive: int = 0
    aips: list = field(default_factory=list)
    rx: int = 0
    tx: int = 0
    hs: tuple[int, int] = (0, 0)


class FakeDevice:
    """Applies SetRequests to plain dicts; rejects listen_port 1 as 'in use'."""

    def __init__(self) -> None:
        self.private_key = ZERO_KEY
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[bytes, FakePeer] = {}
        self.sets = 0

    def uapi_get(self) -> DeviceSnapshot:
        return DeviceSnapshot(self.private_key, self.listen_port, self.fwmark, [
            PeerSnapshot(pk, p.psk, 1, p.endpoint, p.keepalive, list(p.aips), p.rx, p.tx,
                         *p.hs) for pk, p in self.peers.items()])

    def uapi_set(self, req: SetRequest) -> None:
        if req.listen_port == 1:
            raise UapiError(errno.EADDRINUSE, "port in use")
        new = copy.deepcopy(self.__dict__)
        own = None
        if req.private_key is not None:
            new["private_key"] = req.private_key
        if new["private_key"] != ZERO_KEY:
            own = pub(new["private_key"])
            new["peers"].pop(own, None)
        if req.listen_port is not None:
            new["listen_port"] = req.listen_port
        if req.fwmark is not None:
            new["fwmark"] = req.fwmark
        peers: dict[bytes, FakePeer] = {} if req.replace_peers else new["peers"]
        for ps in req.peers:
            if ps.public_key == own:
                continue
            if ps.remove:
                peers.pop(ps.public_key, None)
                continue
            if ps.update_only and ps.public_key not in peers:
                continue
            p = peers.setdefault(ps.public_key, FakePeer())
            if ps.preshared_key is not None:
                p.psk = ps.preshared_key
            if ps.endpoint is not None:
                p.endpoint = ps.endpoint
            if ps.persistent_keepalive_interval is not None:
                p.keepalive = ps.persistent_keepalive_interval
            if ps.replace_allowed_ips:
                p.aips.clear()
            for ch in ps.allowed_ips:
                if ch.remove:
                    if ch.network in p.aips:
                        p.aips.remove(ch.network)
                    continue
                for other in peers.values():       # a prefix moves to its new owner
                    if ch.network in other.aips:
                        other.aips.remove(ch.network)
                p.aips.append(ch.network)
        new["peers"] = peers
        new["sets"] += 1
        self.__dict__.update(new)


def test_fake_satisfies_protocol() -> None:
    assert isinstance(FakeDevice(), UapiHandler)


# ---- the server, in a background loop -----------------------------------------------------

class ServerThread:
    def __init__(self, handler: object, path: str, busy_wait: float | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = UapiServer(IFACE, handler, path=path,  # type: ignore[arg-type]
                                 busy_wait=busy_wait)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore

    def start(self) -> None:
        self.call(self.server.start())

    def stop(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def served(tmp_path: object) -> Iterator[tuple[FakeDevice, str]]:
    dev = FakeDevice()
    path = os.path.join(str(tmp_path), "sock", "t.sock")
    st_ = ServerThread(dev, path)
    st_.start()
    try:
        yield dev, path
    finally:
        st_.stop()
    assert not os.path.exists(path)


def talk(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_server_socket_modes(served: tuple[FakeDevice, str]) -> None:
    _, path = served
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    # umask 077 at bind, as wireguard-go: the socket is srwx------ (0700: bind gives 0777
    # minus the umask), reachable by root only.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755


def test_server_get_set_many_per_connection(served: tuple[FakeDevice, str]) -> None:
    dev, path = served
    pk = pub(key())
    out = talk(path, b"get=1\n\n"
               + f"set=1\nlisten_port=7\npublic_key={pk.hex()}\nallowed_ip=10.0.0.0/8\n\n"
               .encode() + b"get=1\n\n")
    replies = out.decode().split("\n\n")
    assert replies[0] == "errno=0"
    assert replies[1] == "errno=0"
    assert "listen_port=7\n" in replies[2] and "allowed_ip=10.0.0.0/8\n" in replies[2]
    assert dev.listen_port == 7 and pk in dev.peers


def test_server_errors_apply_nothing(served: tuple[FakeDevice, str]) -> None:
    dev, path = served
    pk = pub(key())
    # A valid line before a bad one must not be applied: the set is all or nothing.
    out = talk(path, f"set=1\nlisten_port=9\npublic_key={pk.hex()}\nallowed_ip=1/99\n\n"
               .encode() + b"set=1\nnonsense\n\n" + b"set=1\nlisten_port=1\n\n")
    assert out == b"errno=-22\n\nerrno=-71\n\nerrno=-98\n\n"
    assert dev.listen_port == 0 and not dev.peers and dev.sets == 0


def test_server_truncated_and_unknown(served: tuple[FakeDevice, str]) -> None:
    dev, path = served
    assert talk(path, b"set=1\nlisten_port=9\n") == b""             # EOF mid-request
    assert talk(path, b"set=1\nlisten_port=9\n\nset=1\nfwmark=5") == b"errno=0\n\n"
    assert dev.listen_port == 9 and dev.fwmark == 0 and dev.sets == 1
    assert talk(path, b"hello=1\n\nget=1\n\n") == b""               # unknown op: hang up
    assert talk(path, b"get=1\nx") == b"errno=-22\n\n"
    assert talk(path, b"get=1\n") == b""
    assert talk(path, b"set=1\n\xff\xfe\n\n") == b""                # not text: hang up
    assert dev.sets == 1


def test_server_handler_crash_is_reported(tmp_path: object) -> None:
    class Broken:
        def uapi_get(self) -> DeviceSnapshot:
            raise RuntimeError("boom")

        def uapi_set(self, req: SetRequest) -> None:
            raise RuntimeError("boom")

    path = os.path.join(str(tmp_path), "b.sock")
    t = ServerThread(Broken(), path)
    t.start()
    try:
        assert talk(path, b"get=1\n\nset=1\n\n") == b"errno=-55\n\nerrno=-55\n\n"
    finally:
        t.stop()


def test_async_handler(tmp_path: object) -> None:
    class Async(FakeDevice):
        async def uapi_get(self) -> DeviceSnapshot:  # type: ignore[override]
            return FakeDevice.uapi_get(self)

        async def uapi_set(self, req: SetRequest) -> None:  # type: ignore[override]
            FakeDevice.uapi_set(self, req)

    path = os.path.join(str(tmp_path), "a.sock")
    dev = Async()
    t = ServerThread(dev, path)
    t.start()
    try:
        assert talk(path, b"set=1\nfwmark=3\n\nget=1\n\n") == b"errno=0\n\nfwmark=3\nerrno=0\n\n"
    finally:
        t.stop()


def test_stale_socket_replaced_live_not_stolen(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                   # the file stays, nobody listens
    a = ServerThread(FakeDevice(), path)
    a.start()
    try:
        assert talk(path, b"get=1\n\n") == b"errno=0\n\n"
        b = ServerThread(FakeDevice(), path, busy_wait=0.3)
        try:
            with pytest.raises(UapiSocketInUse, match="in use"):
                b.start()
        finally:
            b.stop()
        assert talk(path, b"get=1\n\n") == b"errno=0\n\n"   # the first server still serves
    finally:
        a.stop()
    with open(path, "w") as f:      # a regular file is never removed
        f.write("x")
    c = ServerThread(FakeDevice(), path, busy_wait=0.3)
    try:
        with pytest.raises(UapiSocketInUse):
            c.start()
    finally:
        c.stop()
    assert os.path.isfile(path)


def test_socket_of_a_server_shutting_down_is_waited_for(tmp_path: object) -> None:
    """A server that still listens when the next one starts, and lets go a moment later (the
    old daemon of a just-deleted interface): the next one waits and takes the name."""
    path = os.path.join(str(tmp_path), "s.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.listen()

    def let_go() -> None:
        old.close()
        os.unlink(path)

    timer = threading.Timer(0.3, let_go)
    timer.start()
    new = ServerThread(FakeDevice(), path, busy_wait=UapiServer.BUSY_WAIT)
    try:
        new.start()
        assert talk(path, b"get=1\n\n") == b"errno=0\n\n"
    finally:
        timer.join()
        new.stop()
    assert 1.0 <= UapiServer.BUSY_WAIT <= 5.0        # "a few seconds at most"


# ---- the real wg tool ---------------------------------------------------------------------

needs_wg = pytest.mark.skipif(shutil.which("wg") is None or os.geteuid() != 0,
                              reason="needs wireguard-tools and root")


@pytest.fixture
def wg_served() -> Iterator[FakeDevice]:
    if os.path.exists(WG_SOCK):
        pytest.fail(f"{WG_SOCK} exists: another test run?")
    dev = FakeDevice()
    t = ServerThread(dev, WG_SOCK)
    t.start()
    try:
        yield dev
    finally:
        t.stop()
        if os.path.exists(WG_SOCK):
            os.unlink(WG_SOCK)


def wg(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["wg", *args], input=input, capture_output=True, text=True,
                          timeout=10, check=check)


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


@needs_wg
def test_wg_set_every_option(wg_served: FakeDevice, tmp_path: object) -> None:
    dev = wg_served
    sk, psk, peer_sk = key(), key(), key()
    pk = pub(peer_sk)
    skf, pskf = os.path.join(str(tmp_path), "sk"), os.path.join(str(tmp_path), "psk")
    with open(skf, "w") as f:
        f.write(b64(sk) + "\n")
    with open(pskf, "w") as f:
        f.write(b64(psk) + "\n")
    wg("set", IFACE, "private-key", skf, "listen-port", "51820", "fwmark", "0x1234",
       "peer", b64(pk), "preshared-key", pskf, "endpoint", "192.0.2.1:4500",
       "persistent-keepalive", "25", "allowed-ips", "10.0.0.1/24,fd00::/64")
    assert dev.private_key == sk and dev.listen_port == 51820 and dev.fwmark == 0x1234
    p = dev.peers[pk]
    assert p.psk == psk and str(p.endpoint) == "192.0.2.1:4500" and p.keepalive == 25
    assert set(p.aips) == {ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")}

    p.rx, p.tx, p.hs = 1234, 5678, (1700000000, 42)
    dump = wg("show", IFACE, "dump").stdout.strip().split("\n")
    assert dump[0].split("\t") == [b64(sk), b64(pub(sk)), "51820", "0x1234"]
    fields = dump[1].split("\t")
    assert fields[:4] == [b64(pk), b64(psk), "192.0.2.1:4500", fields[3]]
    assert set(fields[3].split(",")) == {"10.0.0.0/24", "fd00::/64"}
    assert fields[4:] == ["1700000000", "1234", "5678", "25"]
    assert wg("show", IFACE, "public-key").stdout.strip() == b64(pub(sk))

    wg("set", IFACE, "peer", b64(pk), "endpoint", "[fe80::1%lo]:51820", "allowed-ips",
       "192.168.0.0/16", "persistent-keepalive", "off")
    p = dev.peers[pk]       # the fake swaps in a new state on each set
    assert str(p.endpoint) == "[fe80::1%lo]:51820" and p.endpoint.scope_id == 1
    assert p.aips == [ipaddress.ip_network("192.168.0.0/16")] and p.keepalive == 0
    wg("set", IFACE, "peer", b64(pk), "preshared-key", "/dev/null", "allowed-ips", "")
    p = dev.peers[pk]
    assert p.psk == ZERO_KEY and p.aips == []
    wg("set", IFACE, "fwmark", "off", "listen-port", "0")
    assert dev.fwmark == 0 and dev.listen_port == 0
    wg("set", IFACE, "peer", b64(pk), "remove")
    assert dev.peers == {}
    # Our own public key as a peer is ignored, as in wireguard-go.
    wg("set", IFACE, "peer", b64(pub(sk)), "allowed-ips", "10.9.0.0/16")
    assert dev.peers == {}
    wg("set", IFACE, "private-key", "/dev/null")
    assert dev.private_key == ZERO_KEY
    assert "private-key" not in wg("showconf", IFACE).stdout.lower()


@needs_wg
def test_wg_reports_errors(wg_served: FakeDevice) -> None:
    dev = wg_served
    r = wg("set", IFACE, "listen-port", "1", check=False)     # the fake says "in use"
    assert r.returncode != 0 and "Address already in use" in r.stderr
    assert dev.sets == 0
    r = wg("set", "h3nosuch0", "listen-port", "5", check=False)
    assert r.returncode != 0


@needs_wg
def test_wg_setconf_showconf_syncconf(wg_served: FakeDevice, tmp_path: object) -> None:
    dev = wg_served
    sk, pks = key(), [pub(key()) for _ in range(3)]
    psk = key()
    conf = f"""[Interface]
PrivateKey = {b64(sk)}
ListenPort = 40000
FwMark = 0x7

[Peer]
PublicKey = {b64(pks[0])}
PresharedKey = {b64(psk)}
AllowedIPs = 10.0.0.0/24, fd00:1::/64
Endpoint = 198.51.100.7:51820
PersistentKeepalive = 15

[Peer]
PublicKey = {b64(pks[1])}
AllowedIPs = 10.0.1.0/24
"""
    path = os.path.join(str(tmp_path), "h3.conf")
    with open(path, "w") as f:
        f.write(conf)
    dev.peers[pks[2]] = FakePeer()      # setconf replaces every peer
    wg("setconf", IFACE, path)
    assert list(dev.peers) == pks[:2] and dev.listen_port == 40000 and dev.fwmark == 7
    shown = wg("showconf", IFACE).stdout

    def norm(text: str) -> list[list[str]]:
        """Sections in order, each one's lines sorted (showconf has its own key order)."""
        sections: list[list[str]] = []
        for line in text.split("\n"):
            if line.startswith("["):
                sections.append([line])
            elif "=" in line:
                k, v = (s.strip() for s in line.split("=", 1))
                if k == "AllowedIPs":
                    v = ",".join(sorted(s.strip() for s in v.split(",")))
                sections[-1].append(f"{k}={v}")
        return [sorted(sec) for sec in sections]

    assert norm(shown) == norm(conf)
    # showconf output fed back reproduces the same state.
    before = copy.deepcopy(dev.peers)
    with open(path, "w") as f:
        f.write(shown)
    wg("setconf", IFACE, path)
    assert dev.peers == before
    # syncconf: drop peer 1, change peer 0's allowed IPs, keep the rest.
    conf2 = conf.split("[Peer]\nPublicKey = " + b64(pks[1]))[0].replace(
        "10.0.0.0/24, fd00:1::/64", "10.5.0.0/16")
    with open(path, "w") as f:
        f.write(conf2)
    dev.peers[pks[0]].rx = 99           # syncconf must not recreate the peer
    wg("syncconf", IFACE, path)
    assert list(dev.peers) == [pks[0]]
    assert dev.peers[pks[0]].aips == [ipaddress.ip_network("10.5.0.0/16")]
    assert dev.peers[pks[0]].rx == 99
