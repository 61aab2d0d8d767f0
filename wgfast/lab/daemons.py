"""Userspace WireGuard daemons inside the namespaces of topology.py: the implementations (any
daemon that speaks wireguard-go's command line, `DAEMON [-f] IFACE`, and its UAPI socket
/var/run/wireguard/IFACE.sock), starting and configuring one, reading `wg show dump`, and a
tunnel of two of them.
Just over ~400 lines: starting, configuring and reading a daemon belong together."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgfast.lab.tools import genkey, genpsk, proc_cpu_seconds, pubkey
from wgfast.lab.topology import (
    INNER4,
    INNER6,
    UNDERLAY4,
    UNDERLAY6,
    Host,
    NetnsError,
    Topology,
    terminate,
)

SOCKET_DIR = Path("/var/run/wireguard")


# --------------------------------------------------------------------------- implementations


@dataclass(frozen=True)
class Implementation:
    """A wireguard-go compatible userspace daemon: `argv + [IFACE]` runs it in the foreground.

    `daemon_argv` (optional) runs it the way wg-quick does: it must detach and return once the
    UAPI socket exists.  If not given, it is `argv` without "-f"/"--foreground".
    """

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    daemon_argv: tuple[str, ...] | None = None

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        daemon_argv: Sequence[str] | None = None,
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "argv", tuple(argv))
        object.__setattr__(self, "env", tuple(sorted((env or {}).items())))
        object.__setattr__(self, "daemon_argv", tuple(daemon_argv) if daemon_argv else None)

    def command(self, iface: str) -> list[str]:
        return [*self.argv, iface]

    def detaching_argv(self) -> list[str]:
        if self.daemon_argv is not None:
            return list(self.daemon_argv)
        return [a for a in self.argv if a not in ("-f", "--foreground")]

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        return env

    def unavailable_reason(self) -> str | None:
        """None if this implementation can be started here, else why not."""
        exe = self.argv[0]
        if shutil.which(exe) is None and not os.access(exe, os.X_OK):
            return f"{self.name}: {exe!r} is not installed"
        if exe == sys.executable and self.argv[1:2] == ("-m",):
            module = self.argv[2]
            import importlib.util

            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:
                found = False
            if not found:
                return f"{self.name}: python module {module!r} does not exist yet"
        return None


WIREGUARD_GO = Implementation("wireguard-go", ["wireguard-go", "-f"])
WGFAST = Implementation("wgfast", [sys.executable, "-m", "wgfast.daemon", "-f"])
# The same daemon with TUN and UDP offloads forced off: per-packet reads and writes.
WGFAST_NO_OFFLOADS = Implementation("wgfast-nooff", WGFAST.argv, env={"WGFAST_OFFLOADS": "off"})


def implementation_for_binary(path: str, name: str | None = None) -> Implementation:
    """An Implementation for any wireguard-go compatible binary (`--against BIN`)."""
    return Implementation(name or os.path.basename(path), [path, "-f"])


# --------------------------------------------------------------------------- daemons


@dataclass
class PeerDump:
    public_key: str
    preshared_key: str | None
    endpoint: str | None
    allowed_ips: list[str]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None


@dataclass
class DeviceDump:
    private_key: str | None
    public_key: str | None
    listen_port: int
    fwmark: int | None
    peers: dict[str, PeerDump] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DeviceDump:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise NetnsError("empty `wg show dump` output")

        def none(v: str) -> str | None:
            return None if v in ("(none)", "off") else v

        f = lines[0].split("\t")
        dev = cls(none(f[0]), none(f[1]), int(f[2]), None if f[3] == "off" else int(f[3], 0))
        for ln in lines[1:]:
            p = ln.split("\t")
            dev.peers[p[0]] = PeerDump(
                public_key=p[0],
                preshared_key=none(p[1]),
                endpoint=none(p[2]),
                allowed_ips=[] if p[3] == "(none)" else p[3].split(","),
                latest_handshake=int(p[4]),
                rx_bytes=int(p[5]),
                tx_bytes=int(p[6]),
                persistent_keepalive=None if p[7] == "off" else int(p[7]),
            )
        return dev


def render_config(conf: Mapping[str, Any]) -> str:
    """A dict (snake_case keys, like the UAPI) -> wg(8) config text for `wg setconf`.

    Interface keys: private_key, listen_port, fwmark.  peers: a list of dicts with
    public_key, preshared_key, endpoint, allowed_ips (str or list), persistent_keepalive.
    """
    names = {"private_key": "PrivateKey", "listen_port": "ListenPort", "fwmark": "FwMark"}
    pnames = {"public_key": "PublicKey", "preshared_key": "PresharedKey", "endpoint": "Endpoint",
              "allowed_ips": "AllowedIPs", "persistent_keepalive": "PersistentKeepalive"}
    out = ["[Interface]"]
    for k, v in conf.items():
        if k == "peers":
            continue
        if k not in names:
            raise ValueError(f"unknown interface key {k!r}")
        if v is not None:
            out.append(f"{names[k]} = {v}")
    for peer in conf.get("peers", []):
        out.append("")
        out.append("[Peer]")
        for k, v in peer.items():
            if k not in pnames:
                raise ValueError(f"unknown peer key {k!r}")
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                v = ", ".join(str(x) for x in v)
            out.append(f"{pnames[k]} = {v}")
    return "\n".join(out) + "\n"


class WireGuard:
    """A running userspace WireGuard daemon in one namespace."""

    def __init__(self, host: Host, impl: Implementation, iface: str,
                 proc: subprocess.Popen[Any], log_path: Path) -> None:
        self.host = host
        self.impl = impl
        self.iface = iface
        self.proc = proc
        self.log_path = log_path
        self.private_key: str | None = None
        self.public_key: str | None = None
        self.listen_port: int | None = None
        self.addr4: str | None = None
        self.addr6: str | None = None

    def __repr__(self) -> str:
        return f"WireGuard({self.impl.name}, {self.host.name}/{self.iface}, pid={self.pid})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def socket_path(self) -> Path:
        return SOCKET_DIR / f"{self.iface}.sock"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wg(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.host.run(["wg", *args], check=check, input=input).stdout

    def set(self, *args: str) -> None:
        self.wg("set", self.iface, *args)

    def setconf(self, conf: Mapping[str, Any] | str) -> None:
        text = conf if isinstance(conf, str) else render_config(conf)
        self.wg("setconf", self.iface, "/dev/stdin", input=text)

    def showconf(self) -> str:
        return self.wg("showconf", self.iface)

    def dump(self) -> DeviceDump:
        return DeviceDump.parse(self.wg("show", self.iface, "dump"))

    def endpoints(self) -> dict[str, str | None]:
        return {k: p.endpoint for k, p in self.dump().peers.items()}

    def cpu_seconds(self) -> float:
        """utime+stime of the daemon (all its threads) from /proc/PID/stat."""
        return proc_cpu_seconds(self.pid)

    def wait_handshake(self, peer: str, timeout: float = 10.0, after: int = 0) -> int:
        """Wait until `peer`'s latest handshake is newer than `after`; returns it (0 on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.dump().peers.get(peer)
            if p is not None and p.latest_handshake > after:
                return p.latest_handshake
            if time.monotonic() > deadline:
                return 0
            time.sleep(0.1)

    def stop(self, check: bool = True, grace: float = 5.0) -> None:
        """SIGTERM the daemon (by PID), then SIGKILL; the socket and interface must be gone."""
        terminate(self.proc, grace)
        if self in self.host.topo.daemons:
            self.host.topo.daemons.remove(self)
        gone_deadline = time.monotonic() + 3
        while time.monotonic() < gone_deadline:
            link = self.host.run(["ip", "link", "show", self.iface], check=False)
            if link.returncode != 0 and not self.socket_path.exists():
                return
            time.sleep(0.05)
        leftovers = []
        if self.socket_path.exists():
            leftovers.append(str(self.socket_path))
            self.socket_path.unlink(missing_ok=True)
        if self.host.run(["ip", "link", "show", self.iface], check=False).returncode == 0:
            leftovers.append(f"link {self.iface}")
            self.host.run(["ip", "link", "del", self.iface], check=False)
        if check and leftovers:
            raise NetnsError(f"{self.impl.name} left behind after exit: {', '.join(leftovers)}")


def start_wireguard(
    host: Host,
    impl: Implementation,
    iface: str | None = None,
    conf: Mapping[str, Any] | str | None = None,
    *,
    address4: str | None = None,
    address6: str | None = None,
    mtu: int = 1420,
    routes: Iterable[str] = (),
    log_level: str = "error",
    timeout: float = 10.0,
) -> WireGuard:
    """Start `impl` for `iface` in `host` (foreground), configure it with `wg setconf`, add the
    inner addresses ("10.201.0.1/24", "fd00:201::1/64"), set the MTU, bring it up, add routes."""
    topo = host.topo
    iface = iface or topo.new_iface_name(host)
    sock = SOCKET_DIR / f"{iface}.sock"
    if sock.exists():
        raise NetnsError(f"{sock} already exists: another daemon owns {iface}")
    log_path = topo.tmpdir / f"{iface}.log"
    env = impl.environ()
    env.update({"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": log_level})
    logf = open(log_path, "wb")
    try:
        proc = host.popen(impl.command(iface), stdout=logf, stderr=subprocess.STDOUT, env=env)
    finally:
        logf.close()
    wg = WireGuard(host, impl, iface, proc, log_path)
    topo.daemons.append(wg)
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None:
            topo.daemons.remove(wg)
            raise NetnsError(
                f"{impl.name} exited with {proc.returncode} before creating {sock}:\n{wg.log()}")
        if time.monotonic() > deadline:
            wg.stop(check=False)
            raise NetnsError(f"{impl.name} did not create {sock} within {timeout} s:\n{wg.log()}")
        time.sleep(0.02)
    try:
        if conf is not None:
            wg.setconf(conf)
            if isinstance(conf, Mapping):
                wg.private_key = conf.get("private_key")
                wg.listen_port = conf.get("listen_port")
                if wg.private_key:
                    wg.public_key = pubkey(wg.private_key)
        host.run(["ip", "link", "set", iface, "mtu", str(mtu)])
        if address4:
            host.run(["ip", "addr", "add", address4, "dev", iface])
            wg.addr4 = address4.split("/")[0]
        if address6:
            host.run(["ip", "-6", "addr", "add", address6, "dev", iface, "nodad"])
            wg.addr6 = address6.split("/")[0]
        host.run(["ip", "link", "set", iface, "up"])
        for r in routes:
            fam = "-6" if ipaddress.ip_network(r, strict=False).version == 6 else "-4"
            host.run(["ip", fam, "route", "add", r, "dev", iface])
    except BaseException:
        wg.stop(check=False)
        raise
    return wg


# --------------------------------------------------------------------------- tunnels


@dataclass
class Tunnel:
    """Two daemons configured as each other's peer.  `a` knows `b`'s endpoint (it initiates);
    `b` learns `a`'s endpoint from the handshake unless `b_endpoint` was asked for."""

    topo: Topology
    a: WireGuard
    b: WireGuard
    psk: str | None

    @property
    def pair(self) -> tuple[WireGuard, WireGuard]:
        return (self.a, self.b)

    def stop(self) -> None:
        for d in self.pair:
            d.stop(check=False)


def make_tunnel(
    topo: Topology,
    impl_a: Implementation,
    impl_b: Implementation,
    *,
    psk: bool | str = True,
    outer: int = 4,
    keepalive: int | None = None,
    b_endpoint: bool = False,
    ports: tuple[int, int] = (51820, 51821),
    mtu: int = 1420,
    log_level: str = "error",
) -> Tunnel:
    keys = [genkey(), genkey()]
    pubs = [pubkey(k) for k in keys]
    shared = genpsk() if psk is True else (psk or None)
    hosts = topo.hosts
    impls = (impl_a, impl_b)
    daemons: list[WireGuard] = []
    for i in (0, 1):
        other = 1 - i
        ep_host = UNDERLAY4[other] if outer == 4 else f"[{UNDERLAY6[other]}]"
        peer: dict[str, Any] = {
            "public_key": pubs[other],
            "preshared_key": shared,
            "allowed_ips": [f"{INNER4[other]}/32", f"{INNER6[other]}/128"],
        }
        if i == 0 or b_endpoint:
            peer["endpoint"] = f"{ep_host}:{ports[other]}"
        if keepalive is not None and i == 0:
            peer["persistent_keepalive"] = keepalive
        conf = {"private_key": keys[i], "listen_port": ports[i], "peers": [peer]}
        daemons.append(start_wireguard(
            hosts[i], impls[i], conf=conf, address4=f"{INNER4[i]}/24",
            address6=f"{INNER6[i]}/64", mtu=mtu, log_level=log_level))
    return Tunnel(topo, daemons[0], daemons[1], shared)


def wrapper_script(impl: Implementation, directory: Path) -> Path:
    """An executable that starts `impl` detached (the way wg-quick runs a userspace daemon;
    WG_QUICK_USERSPACE_IMPLEMENTATION must name one executable)."""
    path = directory / f"{impl.name}-daemon"
    env = "".join(f"export {k}={_shq(v)}\n" for k, v in impl.env)
    pp = os.environ.get("PYTHONPATH", "")
    root = str(Path(__file__).resolve().parents[2])
    env += f"export PYTHONPATH={_shq(root + (':' + pp if pp else ''))}\n"
    argv = " ".join(_shq(a) for a in impl.detaching_argv())
    path.write_text(f"#!/bin/sh\n{env}exec {argv} \"$@\"\n")
    path.chmod(0o755)
    return path


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
