"""wgfast-daemon's command line, as wg-quick and users meet it: the same shape as wireguard-go's,
foreground and detached runs inside a namespace of our own, the ways it ends, and its log.
The fixtures `ns` and `iface` are in conftest.py, the helpers shared with test_systemd in
support/daemon.py.
Over ~400 lines: one command's tests, each starting real daemons in namespaces of our own."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs_netns, netns, sh, until
from support.daemon import (
    DAEMON,
    ROOT,
    daemon_name,
    daemon_pids,
    env,
    needs_wg,
    scrape,
    sock_live,
    sock_path,
    value,
)

from wgfast import daemon
from wgfast.lab.netns import (
    UNDERLAY4,
    WGFAST,
    Host,
    Implementation,
    Topology,
    genkey,
    pubkey,
    start_wireguard,
    wrapper_script,
)
from wgfast.uapi_server import SOCKET_DIR


def link_exists(ns: str, iface: str) -> bool:
    return subprocess.run(["ip", "-n", ns, "link", "show", "dev", iface],
                          capture_output=True).returncode == 0


@pytest.fixture
def iface2() -> Iterator[str]:
    with daemon_name() as name:
        yield name


@pytest.fixture
def ns2() -> Iterator[str]:
    with netns("h6dns" + secrets.token_hex(2)) as name:
        yield name


@pytest.fixture
def ns3() -> Iterator[str]:
    with netns("h6dns" + secrets.token_hex(2)) as name:
        yield name


def start_foreground(ns: str, iface: str, **extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *DAEMON, "-f", iface], cwd=ROOT,
                            env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not until(lambda: sock_live(iface) or proc.poll() is not None, 15):
        proc.kill()
    assert sock_live(iface), proc.communicate(timeout=10)
    return proc


def run_detached(ns: str, iface: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *DAEMON, iface], cwd=ROOT,
                          env=env(**extra), capture_output=True, text=True, timeout=30)


# ---- the command line -----------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go not installed")
@pytest.mark.parametrize("argv", [[], ["a", "b", "c"], ["-f"], ["-f", "a", "b"]])
def test_usage_like_wireguard_go(argv: list[str]) -> None:
    """Wrong argument counts: the usage line, on the same stream and with the same exit code
    as wireguard-go (measured here, not assumed).  No interface is created by either."""
    ref = subprocess.run(["wireguard-go", *argv], capture_output=True, text=True, timeout=10,
                         env=env(WG_PROCESS_FOREGROUND="1"))
    ours = subprocess.run([*DAEMON, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=env())
    assert ours.returncode == ref.returncode
    stream = "stdout" if "Usage:" in ref.stdout else "stderr"
    assert "Usage:" in getattr(ours, stream)
    assert "[-f/--foreground] INTERFACE-NAME" in getattr(ours, stream)


def test_version() -> None:
    r = subprocess.run([*DAEMON, "--version"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30, env=env())
    assert r.returncode == 0
    from wgfast import __version__
    assert r.stdout.startswith(f"wgfast-daemon v{__version__}\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_not_root_refused() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:            # the child: become nobody, run main, report its code and stderr
        try:
            os.close(r)
            sys.stderr = open(w, "w")      # noqa: SIM115  (pytest replaced sys.stderr)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = daemon.main(["-f", "h6never0"])
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert "root" in err and not sock_path("h6never0").exists()


# ---- running ---------------------------------------------------------------------------------

@needs_wg
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_signal_cleans_up(ns: str, iface: str, sig: int) -> None:
    proc = start_foreground(ns, iface)
    assert link_exists(ns, iface)
    assert subprocess.run(["ip", "link", "show", "dev", iface],
                          capture_output=True).returncode != 0      # only in its namespace
    show = subprocess.run(["wg", "show", iface], capture_output=True, text=True, timeout=10)
    assert show.returncode == 0 and "listening port" in show.stdout
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert not sock_path(iface).exists() and not link_exists(ns, iface)


@needs_wg
def test_detached_returns_with_socket_and_exits_when_socket_deleted(ns: str, iface: str) -> None:
    r = run_detached(ns, iface)
    assert r.returncode == 0, r.stderr
    # Ready the moment the command returns: wg-quick configures it straight away.
    assert sock_live(iface)
    show = subprocess.run(["wg", "show", iface, "listen-port"], capture_output=True, text=True,
                          timeout=10)
    assert show.returncode == 0 and int(show.stdout) > 0
    pids = daemon_pids(iface)
    assert len(pids) == 1
    sock_path(iface).unlink()                   # what `wg-quick down` does
    assert until(lambda: not daemon_pids(iface), 10)
    assert not link_exists(ns, iface)


@needs_wg
def test_detached_exits_when_interface_deleted(ns: str, iface: str) -> None:
    assert run_detached(ns, iface).returncode == 0
    assert daemon_pids(iface)
    subprocess.run(["ip", "-n", ns, "link", "del", iface], check=True, timeout=10)
    assert until(lambda: not daemon_pids(iface), 10)
    assert not sock_path(iface).exists()


@needs_wg
def test_stale_socket_replaced(ns: str, iface: str) -> None:
    os.makedirs(SOCKET_DIR, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path(iface)))
    s.close()                                   # the file stays, nobody listens: stale
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        probe.connect(str(sock_path(iface)))
    probe.close()
    proc = start_foreground(ns, iface)
    try:
        show = subprocess.run(["wg", "show", iface], capture_output=True, text=True, timeout=10)
        assert show.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


@needs_wg
@pytest.mark.parametrize("foreground", [True, False])
def test_live_socket_refused(ns: str, ns2: str, iface: str, foreground: bool) -> None:
    """Another daemon already serves this name (in another namespace): refused with a clear
    error and exit 1, leaving the first one working."""
    first = start_foreground(ns, iface)
    try:
        argv = [*DAEMON, "-f", iface] if foreground else [*DAEMON, iface]
        r = subprocess.run(["ip", "netns", "exec", ns2, *argv], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1
        assert "in use" in r.stderr and "Traceback" not in r.stderr
        assert not link_exists(ns2, iface)
        assert daemon_pids(iface) == [first.pid]      # the refused one is gone
        show = subprocess.run(["wg", "show", iface], capture_output=True, text=True, timeout=10)
        assert show.returncode == 0
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=15)
    assert first.returncode == 0


@needs_wg
def test_verbose_log_never_shows_keys(ns: str, iface: str) -> None:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                          check=True).stdout.strip()
    psk = subprocess.run(["wg", "genpsk"], capture_output=True, text=True,
                         check=True).stdout.strip()
    peer = subprocess.run(["wg", "pubkey"], input=subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True).stdout, capture_output=True,
        text=True).stdout.strip()
    proc = start_foreground(ns, iface, LOG_LEVEL="verbose")
    try:
        files = {"priv": priv, "psk": psk}
        paths = {}
        for k, v in files.items():
            p = Path(f"/tmp/{iface}.{k}")
            p.write_text(v + "\n")
            p.chmod(0o600)
            paths[k] = str(p)
        subprocess.run(["wg", "set", iface, "private-key", paths["priv"], "listen-port", "0",
                        "peer", peer, "preshared-key", paths["psk"], "endpoint", "127.0.0.1:9",
                        "allowed-ips", "10.77.0.2/32"], check=True, timeout=10)
        # A rejected request is logged too.
        subprocess.run(["wg", "set", iface, "peer", peer, "endpoint", "nowhere.invalid:1"],
                       capture_output=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "set", iface, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", iface], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1",
                        "10.77.0.2"], capture_output=True, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        for k in ("priv", "psk"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/{iface}.{k}")
    log = out + err
    assert proc.returncode == 0 and iface in log and len(log.splitlines()) >= 2
    # The ping needed a session: the attempt is logged, naming the peer by its public key.
    assert "sending handshake initiation" in log
    assert f"peer({peer[:4]}" in log
    for key in (priv, psk):
        raw = base64.b64decode(key)
        for form in (key, raw.hex(), raw.hex().upper(), key.rstrip("=")):
            assert form not in log


@needs_netns
def test_unknown_aead_backend_is_refused(ns: str, iface: str) -> None:
    res = subprocess.run(["ip", "netns", "exec", ns, *DAEMON, "-f", iface], cwd=ROOT,
                         env=env(WGFAST_AEAD="rot13"), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1
    assert "rot13" in res.stderr and "Traceback" not in res.stderr
    assert not sock_live(iface)


@needs_netns
def test_named_aead_backend_is_used(ns: str, iface: str) -> None:
    proc = start_foreground(ns, iface, WGFAST_AEAD="libsodium", LOG_LEVEL="verbose")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "libsodium" in err


# ---- live reload through wg-quick -------------------------------------------------------------

def _transfer(host: Host, iface: str) -> dict[str, tuple[int, int, int]]:
    """public key -> (latest handshake, rx, tx) as `wg show dump` gives them."""
    out = host.run(["wg", "show", iface, "dump"]).stdout.splitlines()[1:]
    return {f[0]: (int(f[4]), int(f[5]), int(f[6])) for f in (line.split("\t") for line in out)}


def _kept(before: tuple[int, int, int], after: tuple[int, int, int]) -> bool:
    """The same session and counters: the handshake time is the same and the counters only
    grew by keepalives (32 bytes each; a passive keepalive may fall in between)."""
    return (after[0] == before[0] and after[1] >= before[1] and after[2] >= before[2]
            and (after[1] - before[1]) % 32 == 0 and (after[2] - before[2]) % 32 == 0)


@needs_wg
def test_wg_quick_syncconf_keeps_unchanged_peers_and_save_round_trips(topo: Topology) -> None:
    """Two peers (b, c) behind wg-quick on a; change c's allowed IPs in the file and run what
    `systemctl reload wg-quick@` runs: b keeps its session and counters, c gets its new
    routes.  `wg-quick save` then writes a file that changes nothing when synced back."""
    ka, kb, kc = genkey(), genkey(), genkey()
    iface = topo.new_iface_name(topo.a)
    peers = {}
    for key, port, addr, route in ((kb, 51821, "10.201.0.2", "10.201.0.1/32"),
                                   (kc, 51822, "10.202.0.3", "10.202.0.1/32")):
        peers[key] = start_wireguard(topo.b, WGFAST, conf={
            "private_key": key, "listen_port": port,
            "peers": [{"public_key": pubkey(ka), "allowed_ips": [route]}],
        }, address4=f"{addr}/32", routes=[route])
    b, c = peers[kb], peers[kc]
    conf = topo.tmpdir / f"{iface}.conf"
    text = ("[Interface]\n"
            f"PrivateKey = {ka}\nListenPort = 51820\n"
            "Address = 10.201.0.1/24, 10.202.0.1/24\n\n"
            f"[Peer]\nPublicKey = {b.public_key}\nEndpoint = {UNDERLAY4[1]}:51821\n"
            "AllowedIPs = 10.201.0.2/32\n\n"
            f"[Peer]\nPublicKey = {c.public_key}\nEndpoint = {UNDERLAY4[1]}:51822\n"
            "AllowedIPs = 10.202.0.3/32\n")
    conf.write_text(text)
    conf.chmod(0o600)
    impl = Implementation("wgfast", WGFAST.argv, env={"WGFAST_METRICS": "127.0.0.1:9586"})
    env_q = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
             "WG_QUICK_USERSPACE_IMPLEMENTATION": str(wrapper_script(impl, topo.tmpdir))}
    up = topo.a.run(["wg-quick", "up", str(conf)], check=False, env=env_q, timeout=30)
    assert up.returncode == 0, up.stderr
    try:
        assert topo.a.wait_ping("10.201.0.2") and topo.a.wait_ping("10.202.0.3")
        topo.a.ping("10.201.0.2", count=5, interval=0.05)
        handshakes = _handshakes(topo.a.name, iface, b.public_key)
        before = _transfer(topo.a, iface)
        assert before[b.public_key][0] > 0 and before[b.public_key][2] > 0

        conf.write_text(text.replace("AllowedIPs = 10.202.0.3/32",
                                     "AllowedIPs = 10.202.0.3/32, 10.203.0.0/24"))
        sync = topo.a.run(["bash", "-c", f"wg syncconf {iface} <(wg-quick strip {conf})"],
                          check=False, env=env_q)
        assert sync.returncode == 0, sync.stderr
        after = _transfer(topo.a, iface)
        assert _kept(before[b.public_key], after[b.public_key]), (before, after)
        assert _handshakes(topo.a.name, iface, b.public_key) == handshakes
        allowed = topo.a.run(["wg", "show", iface, "allowed-ips"]).stdout
        assert "10.203.0.0/24" in allowed and "10.202.0.3/32" in allowed
        assert topo.a.wait_ping("10.201.0.2") and topo.a.wait_ping("10.202.0.3")
        assert _handshakes(topo.a.name, iface, b.public_key) == handshakes

        # wg-quick save: the running state back into the file, which syncs as a no-op.
        save = topo.a.run(["wg-quick", "save", str(conf)], check=False, env=env_q)
        assert save.returncode == 0, save.stderr
        saved = conf.read_text()
        assert f"PrivateKey = {ka}" in saved and "Address = 10.201.0.1/24" in saved
        assert "10.203.0.0/24" in saved and saved.count("[Peer]") == 2
        shown = topo.a.run(["wg", "showconf", iface]).stdout
        before = _transfer(topo.a, iface)
        sync = topo.a.run(["bash", "-c", f"wg syncconf {iface} <(wg-quick strip {conf})"],
                          check=False, env=env_q)
        assert sync.returncode == 0, sync.stderr
        assert topo.a.run(["wg", "showconf", iface]).stdout == shown
        after = _transfer(topo.a, iface)
        for key in (b.public_key, c.public_key):
            assert _kept(before[key], after[key]), (key, before, after)
    finally:
        down = topo.a.run(["wg-quick", "down", str(conf)], check=False, env=env_q, timeout=30)
    assert down.returncode == 0, down.stderr


def _handshakes(ns: str, iface: str, public_key: str) -> float:
    """Handshakes completed with one peer, from the daemon's metrics."""
    return value(scrape(ns), "wgfast_peer_handshakes_total", interface=iface,
                 public_key=public_key)


# ---- --metrics --------------------------------------------------------------------------------

@needs_wg
def test_metrics_flag_serves_in_the_daemons_namespace(ns: str, iface: str) -> None:
    import urllib.request

    from wgfast.lab.netns import inside

    proc = subprocess.Popen(["ip", "netns", "exec", ns, *DAEMON, "-f", "--metrics",
                             "127.0.0.1:9587", iface], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert until(lambda: sock_live(iface) or proc.poll() is not None, 15)
        with inside(ns):
            with urllib.request.urlopen("http://127.0.0.1:9587/metrics", timeout=10) as r:
                text = r.read().decode()
        assert f'wgfast_peers{{interface="{iface}"}} 0.0' in text
        # A second daemon cannot take the same port: a clear error, and nothing left behind.
        other = iface[:-1] + ("x" if iface[-1] != "x" else "y")
        r2 = subprocess.run(["ip", "netns", "exec", ns, *DAEMON, "-f", "--metrics=127.0.0.1:9587",
                             other], cwd=ROOT, env=env(), capture_output=True, text=True,
                            timeout=30)
        assert r2.returncode == 1 and "cannot serve metrics" in r2.stderr
        assert "Traceback" not in r2.stderr and not link_exists(ns, other)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


@pytest.mark.parametrize("value", ["nonsense", ":9586", "1.2.3.4:99999"])
def test_bad_metrics_address_is_refused(value: str) -> None:
    r = subprocess.run([*DAEMON, "-f", "--metrics", value, "h6never1"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "--metrics" in r.stderr and "Traceback" not in r.stderr


# ---- the interface in another namespace (wireguard-go's tests/netns.sh topology) -------------

def wg_key() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                          check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                         check=True).stdout.strip()
    return priv, pub


def wg_set(iface: str, *args: str, key: str | None = None) -> None:
    if key is None:
        subprocess.run(["wg", "set", iface, *args], check=True, timeout=10)
        return
    path = Path(f"/tmp/{iface}.key")
    path.write_text(key + "\n")
    path.chmod(0o600)
    try:
        subprocess.run(["wg", "set", iface, "private-key", str(path), *args], check=True,
                       timeout=10)
    finally:
        path.unlink()


def ns_ping(ns: str, addr: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "3",
                           *extra, addr], capture_output=True, text=True, timeout=30)


@needs_wg
def test_interface_moved_to_another_namespace(ns: str, ns2: str, ns3: str, iface: str,
                                              iface2: str) -> None:
    """As wireguard-go's netns.sh: both daemons start in ns (their UDP sockets stay there,
    on its loopback), their interfaces are moved to ns2 and ns3.  The tunnel works; an MTU
    raised in the new namespace is followed (a large unfragmented ping crosses); deleting
    the interface there stops its daemon and removes its socket, and a daemon started for
    the name right away succeeds."""
    for name in (iface, iface2):
        r = run_detached(ns, name)
        assert r.returncode == 0, r.stderr
    sh("ip", "-n", ns, "link", "set", iface, "netns", ns2)
    sh("ip", "-n", ns, "link", "set", iface2, "netns", ns3)
    (k1, p1), (k2, p2) = wg_key(), wg_key()
    wg_set(iface, "listen-port", "10000", "peer", p2, "endpoint", "127.0.0.1:20000",
           "allowed-ips", "192.168.241.2/32", key=k1)
    wg_set(iface2, "listen-port", "20000", "peer", p1, "endpoint", "127.0.0.1:10000",
           "allowed-ips", "192.168.241.1/32", key=k2)
    for n, name, addr in ((ns2, iface, "192.168.241.1/24"), (ns3, iface2, "192.168.241.2/24")):
        sh("ip", "-n", n, "addr", "add", addr, "dev", name)
        sh("ip", "-n", n, "link", "set", name, "up")
    r = ns_ping(ns2, "192.168.241.2")
    assert r.returncode == 0, r.stdout + r.stderr
    for n, name in ((ns2, iface), (ns3, iface2)):
        sh("ip", "-n", n, "link", "set", name, "mtu", "9000")
    # Without the new MTU the daemons' rings would drop the 8 KB packet; give them a moment
    # to take it (a bounded wait: each try is a 2-ping round).
    r = subprocess.CompletedProcess([], 1)
    for _ in range(10):
        r = ns_ping(ns2, "192.168.241.2", "-M", "do", "-s", "8000")
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stdout + r.stderr
    [pid] = daemon_pids(iface)
    sh("ip", "-n", ns2, "link", "del", iface)
    # Right after the delete, a new daemon takes the name (in the namespace the interface
    # was in, as netns.sh does) while the old one lets go of the socket.
    r = run_detached(ns2, iface)
    assert r.returncode == 0, r.stderr
    assert until(lambda: daemon_pids(iface) and pid not in daemon_pids(iface), 10)
    assert link_exists(ns2, iface) and sock_live(iface)
    sh("ip", "-n", ns2, "link", "del", iface)
    assert until(lambda: not daemon_pids(iface) and not sock_path(iface).exists(), 10)
    assert daemon_pids(iface2)              # the other one is untouched


@needs_wg
def test_restart_right_after_delete(ns: str, iface: str) -> None:
    """`ip link del wg0; wgfast-daemon wg0`: the old daemon notices the deletion at once and
    lets go of its UAPI socket, the new one waits for that instead of failing."""
    for _ in range(3):
        r = run_detached(ns, iface)
        assert r.returncode == 0, r.stderr
        sh("ip", "-n", ns, "link", "del", iface)
    r = run_detached(ns, iface)
    assert r.returncode == 0, r.stderr
    assert len(daemon_pids(iface)) == 1 or until(lambda: len(daemon_pids(iface)) == 1, 10)
    sh("ip", "-n", ns, "link", "del", iface)
    assert until(lambda: not daemon_pids(iface), 10)
