"""Two network namespaces joined by a veth pair: hosts, the topology, and running a thread
inside a namespace.

Everything created here is named with a caller-given prefix plus a random suffix and is always
removed again: on normal exit, on exceptions, on Ctrl-C, on SIGTERM and (as a last resort) at
interpreter exit.  Only processes started here are ever signalled, by PID.  The daemons that
run inside are in daemons.py.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wgfast.lab.daemons import WireGuard

# Underlay (veth) and inner (tunnel) address plans.  They only exist inside our namespaces.
UNDERLAY4 = ("10.200.0.1", "10.200.0.2")
UNDERLAY6 = ("fd00:200::1", "fd00:200::2")
INNER4 = ("10.201.0.1", "10.201.0.2")
INNER6 = ("fd00:201::1", "fd00:201::2")


class NetnsError(RuntimeError):
    """A namespace, link or daemon could not be set up as asked."""


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
