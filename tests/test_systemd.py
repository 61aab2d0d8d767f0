"""wgfast.systemd and the daemon under a supervisor: a real unix datagram socket as NOTIFY_SOCKET
(a path and an abstract name), READY=1 only once the UAPI socket answers and sent by the process
that serves (foreground and detached), STATUS= with the peers, STOPPING=1 on the way out; the
unit files shipped in systemd/."""

from __future__ import annotations

import configparser
import contextlib
import os
import secrets
import signal
import socket
import struct
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DAEMON, ROOT, daemon_pids, env, needs_wg, sock_live

from wgfast import systemd
from wgfast.lab.netns import inside
from wgfast.noise import StaticIdentity

SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)


class Supervisor:
    """The systemd side: a datagram socket that learns each sender's PID."""

    def __init__(self, abstract: bool = False, netns: str | None = None) -> None:
        # An abstract name lives in the network namespace the socket was made in (as systemd's
        # does in the host's): make it where the daemon runs.
        with inside(netns) if netns else contextlib.nullcontext():
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
        self._dir = None
        if abstract:
            name = "wgfast-test-" + secrets.token_hex(6)
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self._dir = tempfile.TemporaryDirectory()
            path = os.path.join(self._dir.name, "notify")
            self.sock.bind(path)
            self.env = path

    def recv(self, timeout: float = 20) -> tuple[dict[str, str], int]:
        """One datagram: its fields and the sender's PID."""
        self.sock.settimeout(timeout)
        msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS:
                pid = struct.unpack("iII", data[:12])[0]
        fields = dict(line.split("=", 1) for line in msg.decode().splitlines() if "=" in line)
        return fields, pid

    def wait_for(self, key: str, pred=lambda v: True, timeout: float = 20):
        while True:
            fields, pid = self.recv(timeout)
            if key in fields and pred(fields[key]):
                return fields, pid

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            self._dir.cleanup()


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def supervisor(request: pytest.FixtureRequest) -> Iterator[Supervisor]:
    """Next to this process."""
    s = Supervisor(abstract=request.param)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def ns_supervisor(request: pytest.FixtureRequest, ns: str) -> Iterator[Supervisor]:
    """In the daemon's namespace."""
    s = Supervisor(abstract=request.param, netns=ns)
    try:
        yield s
    finally:
        s.close()


def test_notify_sends_one_datagram(supervisor: Supervisor) -> None:
    assert systemd.notify("READY=1", "STATUS=hello world", address=systemd.notify_address(
        supervisor.env))
    fields, pid = supervisor.recv()
    assert fields == {"READY": "1", "STATUS": "hello world"} and pid == os.getpid()


def test_notify_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.notify_address("vsock:2:1234") is None
    # A supervisor that went away: no exception.
    assert systemd.notify("READY=1", address="/nonexistent/notify") is False


def _uapi_answers(iface: str) -> bool:
    r = subprocess.run(["wg", "show", iface, "listen-port"], capture_output=True, text=True,
                       timeout=10)
    return r.returncode == 0 and int(r.stdout) > 0


@needs_wg
def test_foreground_ready_status_stopping(ns: str, iface: str, ns_supervisor: Supervisor) -> None:
    supervisor = ns_supervisor
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *DAEMON, "-f", iface], cwd=ROOT,
                            env=env(NOTIFY_SOCKET=supervisor.env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        fields, pid = supervisor.wait_for("READY")
        # READY means wg can talk to it now, not "soon".
        assert _uapi_answers(iface)
        assert fields["READY"] == "1" and pid == proc.pid      # `ip netns exec` execs in place
        assert fields["MAINPID"] == str(proc.pid)
        assert fields["STATUS"].startswith("0 peers")
        peer = StaticIdentity.generate().public
        import base64

        subprocess.run(["wg", "set", iface, "peer", base64.b64encode(peer).decode(),
                        "allowed-ips", "10.9.0.2/32"], check=True, timeout=10)
        fields, pid = supervisor.wait_for("STATUS", lambda v: v.startswith("1 peer,"))
        assert "0 with a handshake" in fields["STATUS"] and pid == proc.pid
        proc.send_signal(signal.SIGTERM)
        fields, pid = supervisor.wait_for("STOPPING")
        assert fields["STOPPING"] == "1" and pid == proc.pid
        proc.communicate(timeout=15)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


@needs_wg
def test_detached_ready_comes_from_the_serving_process(ns: str, iface: str,
                                                       ns_supervisor: Supervisor) -> None:
    supervisor = ns_supervisor
    r = subprocess.run(["ip", "netns", "exec", ns, *DAEMON, iface], cwd=ROOT,
                       env=env(NOTIFY_SOCKET=supervisor.env), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    fields, pid = supervisor.wait_for("READY")
    pids = daemon_pids(iface)
    assert len(pids) == 1 and pid == pids[0]           # the child that serves, not the parent
    assert fields["MAINPID"] == str(pids[0])
    assert sock_live(iface) and _uapi_answers(iface)
    os.kill(pids[0], signal.SIGTERM)
    fields, pid = supervisor.wait_for("STOPPING")
    assert pid == pids[0]


@needs_wg
def test_no_ready_when_start_fails(ns: str, iface: str, ns_supervisor: Supervisor) -> None:
    supervisor = ns_supervisor
    r = subprocess.run(["ip", "netns", "exec", ns, *DAEMON, "-f", iface], cwd=ROOT,
                       env=env(NOTIFY_SOCKET=supervisor.env, WGFAST_AEAD="no-such-backend"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    with pytest.raises(TimeoutError):
        supervisor.recv(timeout=0.5)


# ---- the unit files --------------------------------------------------------------------------

def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str            # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_wgfast_service_is_type_notify_in_the_foreground() -> None:
    unit = _unit(ROOT / "systemd" / "wgfast@.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert "wgfast-daemon -f %i" in svc["ExecStart"] or \
        "wgfast-daemon --foreground %i" in svc["ExecStart"]
    assert "syncconf" in svc["ExecReload"]
    with contextlib.suppress(KeyError):
        assert unit["Install"]["WantedBy"]


def test_wg_quick_drop_in_names_wgfast() -> None:
    unit = _unit(ROOT / "systemd" / "wg-quick@.service.d" / "wgfast.conf")
    envs = unit["Service"]["Environment"]
    assert "WG_QUICK_USERSPACE_IMPLEMENTATION=wgfast-daemon" in envs


def test_daemon_unit_names_the_daemon_it_ships() -> None:
    # The entry point the unit runs exists under that name (pyproject.toml's [project.scripts]).
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["wgfast-daemon"] == "wgfast.daemon:main"
