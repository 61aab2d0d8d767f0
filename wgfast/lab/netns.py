"""Two network namespaces joined by a veth pair, and userspace WireGuard daemons inside them.

Used by the end-to-end tests, `wgfast demo` and `wgfast bench`.  Everything created here is
named with a caller-given prefix plus a random suffix and is always removed again: on normal
exit, on exceptions, on Ctrl-C, on SIGTERM and (as a last resort) at interpreter exit.  Only
processes started here are ever signalled, by PID.

Any daemon that speaks wireguard-go's command line (`DAEMON [-f] IFACE`) and its UAPI socket
(/var/run/wireguard/IFACE.sock) can be plugged in as an `Implementation`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOCKET_DIR = Path("/var/run/wireguard")

# Underlay (veth) and inner (tunnel) address plans.  They only exist inside our namespaces.
UNDERLAY4 = ("10.200.0.1", "10.200.0.2")
UNDERLAY6 = ("fd00:200::1", "fd00:200::2")
INNER4 = ("10.201.0.1", "10.201.0.2")
INNER6 = ("fd00:201::1", "fd00:201::2")


class NetnsError(RuntimeError):
    """A namespace, link or daemon could not be set up as asked."""


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
# The same daemon with two-stage pipelines instead of run-to-completion threads.
WGFAST_PIPELINE = Implementation("wgfast-pipeline", WGFAST.argv,
                                 env={"WGFAST_THREADS": "pipeline"})


def implementation_for_binary(path: str, name: str | None = None) -> Implementation:
    """An Implementation for any wireguard-go compatible binary (`--against BIN`)."""
    return Implementation(name or os.path.basename(path), [path, "-f"])


# --------------------------------------------------------------------------- keys


def genkey() -> str:
    return _tool(["wg", "genkey"])


def pubkey(private_key: str) -> str:
    return _tool(["wg", "pubkey"], private_key + "\n")


def genpsk() -> str:
    return _tool(["wg", "genpsk"])


def key_to_hex(key_b64: str) -> str:
    return base64.b64decode(key_b64).hex()


def hex_to_key(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


def _tool(argv: list[str], stdin: str | None = None) -> str:
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.strip()


# --------------------------------------------------------------------------- cleanup registry

_live: set[Topology] = set()
_live_lock = threading.Lock()
_handlers_installed = False


def _cleanup_all() -> None:
    with _live_lock:
        topos = list(_live)
    for t in topos:
        t.close()


def _install_handlers() -> None:
    """SIGTERM/SIGHUP become SystemExit so `with` blocks unwind; atexit catches the rest."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_cleanup_all)
    if threading.current_thread() is not threading.main_thread():
        return

    def _raise_exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_exit)


# --------------------------------------------------------------------------- hosts & topology


class Host:
    """One network namespace.  Commands run through `ip netns exec`, which execs in place, so
    a Popen's PID is the PID of the command itself."""

    def __init__(self, topo: Topology, name: str, veth: str, index: int) -> None:
        self.topo = topo
        self.name = name  # the namespace name
        self.veth = veth
        self.index = index  # 0 or 1
        self.addr4 = UNDERLAY4[index]
        self.addr6 = UNDERLAY6[index]
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name})"

    def wrap(self, cmd: Sequence[str] | str) -> list[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        cmd: Sequence[str] | str,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.wrap(cmd),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
        )
        if check and res.returncode != 0:
            raise NetnsError(
                f"[{self.name}] {cmd!r} failed ({res.returncode}): "
                f"{res.stderr.strip() or res.stdout.strip()}"
            )
        return res

    def popen(self, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in the namespace; it is killed (by PID) when the topology closes."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.wrap(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, timeout: float = 30) -> str:
        """Run a Python snippet inside the namespace; returns its stdout."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout).stdout

    def ping(
        self, dest: str, count: int = 3, interval: float = 0.2, wait: float = 2.0,
        size: int | None = None, timeout: float | None = None,
    ) -> PingResult:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if size is not None:
            argv += ["-s", str(size)]
        argv.append(dest)
        res = self.run(argv, check=False, timeout=timeout or (count * (interval + wait) + 10))
        return PingResult.parse(res.stdout, res.returncode)

    def wait_ping(self, dest: str, deadline: float = 10.0) -> bool:
        """Ping once a second until one reply arrives or `deadline` seconds pass."""
        res = self.run(["ping", "-n", "-q", "-c", "1", "-i", "0.5", "-w", str(int(deadline)), dest],
                       check=False, timeout=deadline + 10)
        return PingResult.parse(res.stdout, res.returncode).ok

    def pids(self) -> list[int]:
        """Every process inside this namespace (all of them were started by us)."""
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True,
                             timeout=10)
        return [int(x) for x in res.stdout.split()]

    def kill_started(self) -> None:
        for proc in self._procs:
            terminate(proc)
        self._procs.clear()
        # Anything else still inside our namespace descends from us (e.g. a daemon that
        # wg-quick started and that detached): kill it by PID so the namespace can go.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.pids():
                break


@dataclass
class PingResult:
    transmitted: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.received > 0

    @classmethod
    def parse(cls, out: str, rc: int) -> PingResult:
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
        tx, rx = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        r = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", out)
        mn, avg, mx = (float(r.group(1)), float(r.group(2)), float(r.group(3))) if r else (
            None, None, None)
        return cls(tx, rx, mn, avg, mx, rc, out)


def terminate(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL — by PID, only for a process we started."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


class Topology:
    """Context manager: namespaces `<prefix>a<sfx>` and `<prefix>b<sfx>` over veth
    `<prefix>va<sfx>` <-> `<prefix>vb<sfx>` with 10.200.0.{1,2}/24 and fd00:200::{1,2}/64."""

    def __init__(self, prefix: str = "h4", mtu: int | None = None) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,4}", prefix):
            raise ValueError("prefix must be 1-4 lowercase letters/digits")
        self.prefix = prefix
        self.suffix = secrets.token_hex(3)
        self.mtu = mtu
        self.a = Host(self, f"{prefix}a{self.suffix}", f"{prefix}va{self.suffix}", 0)
        self.b = Host(self, f"{prefix}b{self.suffix}", f"{prefix}vb{self.suffix}", 1)
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"wgfast-{prefix}{self.suffix}-"))
        self.daemons: list[WireGuard] = []
        self._ifcount = 0
        self._closed = False
        self._created: list[str] = []

    @property
    def hosts(self) -> tuple[Host, Host]:
        return (self.a, self.b)

    def new_iface_name(self, host: Host) -> str:
        # Unique across both namespaces: /var/run/wireguard is shared by all of them.
        self._ifcount += 1
        name = f"{self.prefix}w{'ab'[host.index]}{self.suffix}{self._ifcount}"
        assert len(name) <= 15
        return name

    def __enter__(self) -> Topology:
        _install_handlers()
        with _live_lock:
            _live.add(self)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ip(self, *args: str) -> None:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        if res.returncode != 0:
            raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip()}")

    def _setup(self) -> None:
        for h in self.hosts:
            self._ip("netns", "add", h.name)
            self._created.append(h.name)
        a, b = self.a, self.b
        self._ip("link", "add", a.veth, "netns", a.name, "type", "veth",
                 "peer", "name", b.veth, "netns", b.name)
        for h in self.hosts:
            h.run(["ip", "link", "set", "lo", "up"])
            if self.mtu:
                h.run(["ip", "link", "set", h.veth, "mtu", str(self.mtu)])
            h.run(["ip", "addr", "add", f"{h.addr4}/24", "dev", h.veth])
            h.run(["ip", "-6", "addr", "add", f"{h.addr6}/64", "dev", h.veth, "nodad"])
            h.run(["ip", "link", "set", h.veth, "up"])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Don't let a second Ctrl-C interrupt the cleanup half way.
        blocked = threading.current_thread() is threading.main_thread()
        if blocked:
            old = signal.pthread_sigmask(
                signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            for d in list(self.daemons):
                try:
                    d.stop(check=False)
                except Exception:  # noqa: BLE001 - cleanup must go on
                    pass
            for h in self.hosts:
                h.kill_started()
            for name in self._created:
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
            for d in self.daemons:
                d.socket_path.unlink(missing_ok=True)
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        finally:
            with _live_lock:
                _live.discard(self)
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --------------------------------------------------------------------------- wireguard daemons


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


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces; fields after the closing parenthesis are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


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


def iperf3_available() -> bool:
    return shutil.which("iperf3") is not None


IPERF_PORT = 5201


def run_iperf3(
    server: Host, client: Host, dest: str, args: Sequence[str] = (), duration: float = 2.0,
    port: int = IPERF_PORT, on_start: Any = None,
) -> dict[str, Any]:
    """One iperf3 run (server in `server`, client in `client` towards `dest`); the parsed -J
    output.  `on_start()` is called once the server listens, just before the client starts."""
    import json

    srv = server.popen(["iperf3", "-s", "-1", "-p", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            ss = server.run(["ss", "-Hltn", f"sport = :{port}"], check=False)
            if ss.stdout.strip():
                break
            if srv.poll() is not None or time.monotonic() > deadline:
                raise NetnsError("iperf3 server did not start")
            time.sleep(0.02)
        if on_start is not None:
            on_start()
        res = client.run(
            ["iperf3", "-c", dest, "-p", str(port), "-J", "-t", str(duration), *args],
            check=False, timeout=duration + 30)
        try:
            data: dict[str, Any] = json.loads(res.stdout)
        except ValueError as e:
            raise NetnsError(f"iperf3 gave no JSON: {res.stderr.strip()}") from e
        if "error" in data:
            raise NetnsError(f"iperf3: {data['error']}")
        return data
    finally:
        terminate(srv, grace=2)
        if srv in server._procs:
            server._procs.remove(srv)


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


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the calling thread in network namespace `name`, then return it to where it was.
    setns is per thread: sockets and TUN devices opened meanwhile, and threads started
    meanwhile, stay in `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
