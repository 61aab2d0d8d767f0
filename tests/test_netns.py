"""The namespace harness itself: parsing (no root needed) and real topologies (root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import NETNS_PREFIX, netns_unavailable, require_impl

from wgfast.lab.netns import (
    INNER4,
    SOCKET_DIR,
    UNDERLAY4,
    UNDERLAY6,
    DeviceDump,
    Implementation,
    NetnsError,
    PingResult,
    Topology,
    genkey,
    hex_to_key,
    key_to_hex,
    make_tunnel,
    proc_cpu_seconds,
    pubkey,
    render_config,
    start_wireguard,
    wrapper_script,
)

root_only = pytest.mark.skipif(netns_unavailable() is not None,
                               reason=netns_unavailable() or "")


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# --------------------------------------------------------------------------- pure parsing

DUMP = (
    "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n"
    "cGVlcjE=\t(none)\t10.0.0.2:51821\t10.1.0.0/24,fd00::/64\t1700000000\t1234\t5678\t25\n"
    "cGVlcjI=\tcHNr\t(none)\t(none)\t0\t0\t0\toff\n"
)


def test_dump_parse() -> None:
    d = DeviceDump.parse(DUMP)
    assert d.listen_port == 51820 and d.fwmark is None and d.public_key == "cHVibGlj"
    p1, p2 = d.peers["cGVlcjE="], d.peers["cGVlcjI="]
    assert p1.endpoint == "10.0.0.2:51821" and p1.preshared_key is None
    assert p1.allowed_ips == ["10.1.0.0/24", "fd00::/64"]
    assert (p1.latest_handshake, p1.rx_bytes, p1.tx_bytes) == (1700000000, 1234, 5678)
    assert p1.persistent_keepalive == 25
    assert p2.endpoint is None and p2.allowed_ips == [] and p2.persistent_keepalive is None
    assert p2.preshared_key == "cHNr"
    with pytest.raises(NetnsError):
        DeviceDump.parse("")


def test_render_config() -> None:
    text = render_config({"private_key": "K", "listen_port": 1, "peers": [
        {"public_key": "P", "allowed_ips": ["10.0.0.1/32", "fd00::1/128"], "endpoint": None}]})
    assert text.splitlines() == [
        "[Interface]", "PrivateKey = K", "ListenPort = 1", "", "[Peer]", "PublicKey = P",
        "AllowedIPs = 10.0.0.1/32, fd00::1/128"]
    with pytest.raises(ValueError):
        render_config({"bogus": 1})
    with pytest.raises(ValueError):
        render_config({"peers": [{"bogus": 1}]})


def test_ping_parse() -> None:
    out = ("3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\n"
           "rtt min/avg/max/mdev = 0.045/0.061/0.077/0.016 ms\n")
    r = PingResult.parse(out, 1)
    assert (r.transmitted, r.received, r.rtt_min_ms, r.rtt_avg_ms) == (3, 2, 0.045, 0.061)
    assert r.ok
    lost = PingResult.parse("2 packets transmitted, 0 received, 100% packet loss\n", 1)
    assert not lost.ok and lost.rtt_avg_ms is None


def test_keys_and_hex() -> None:
    k = genkey()
    assert len(key_to_hex(k)) == 64 and hex_to_key(key_to_hex(k)) == k
    assert pubkey(k) != k and len(pubkey(k)) == 44


def test_cpu_seconds_of_self_grows() -> None:
    before = proc_cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.1:
        pass
    assert proc_cpu_seconds(os.getpid()) > before


def test_implementation_availability(tmp_path: Path) -> None:
    assert Implementation("x", ["/nonexistent/daemon", "-f"]).unavailable_reason()
    assert Implementation("y", [sys.executable, "-m", "wgfast.no_such_module"]).unavailable_reason()
    impl = Implementation("z", [sys.executable, "-m", "wgfast.lab.netns", "-f"], env={"A": "b c"})
    assert impl.unavailable_reason() is None
    assert impl.command("wg0")[-1] == "wg0" and "-f" not in impl.detaching_argv()
    script = wrapper_script(impl, tmp_path)
    text = script.read_text()
    assert os.access(script, os.X_OK) and "export A='b c'" in text and "-f" not in text


# --------------------------------------------------------------------------- real namespaces


@root_only
def test_topology_underlay_and_cleanup() -> None:
    with Topology(NETNS_PREFIX) as t:
        names = {t.a.name, t.b.name}
        assert names <= _namespaces()
        assert t.a.ping(UNDERLAY4[1], count=1).ok
        assert t.b.ping(UNDERLAY6[0], count=1).ok
        sleeper = t.a.popen(["sleep", "60"])
        tmp = t.tmpdir
        assert tmp.is_dir()
    assert not names & _namespaces()
    assert sleeper.poll() is not None and not tmp.exists()


@root_only
def test_topology_cleanup_on_exception_and_ctrl_c() -> None:
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with Topology(NETNS_PREFIX) as t:
                names = {t.a.name, t.b.name}
                raise exc()
        assert not names & _namespaces()


@root_only
def test_topology_cleanup_on_sigterm(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from wgfast.lab.netns import Topology, WIREGUARD_GO, make_tunnel\n"
        f"with Topology({NETNS_PREFIX!r}) as t:\n"
        "    ifaces = []\n"
        "    if WIREGUARD_GO.unavailable_reason() is None:\n"
        "        tun = make_tunnel(t, WIREGUARD_GO, WIREGUARD_GO)\n"
        "        ifaces = [tun.a.iface, tun.b.iface]\n"
        "    print(t.a.name, t.b.name, *ifaces, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert len(words) >= 2
        assert set(words[:2]) <= _namespaces()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not set(words[:2]) & _namespaces()
    for iface in words[2:]:
        assert not (SOCKET_DIR / f"{iface}.sock").exists()


@root_only
def test_run_errors_are_typed(topo: Topology) -> None:
    with pytest.raises(NetnsError):
        topo.a.run(["ip", "link", "set", "does-not-exist", "up"])
    assert topo.a.run(["false"], check=False).returncode == 1


def test_daemon_start_failure_is_reported(topo: Topology, tmp_path: Path) -> None:
    broken = tmp_path / "broken-daemon"
    broken.write_text("#!/bin/sh\necho cannot start >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(NetnsError, match="cannot start"):
        start_wireguard(topo.a, Implementation("broken", [str(broken)]))
    assert topo.daemons == []


def test_daemon_stop_removes_socket_and_link(topo: Topology) -> None:
    impl = require_impl("wireguard-go")
    tun = make_tunnel(topo, impl, impl)
    assert topo.a.wait_ping(INNER4[1])
    d = tun.a
    assert d.socket_path.exists() and d.cpu_seconds() >= 0
    d.stop()
    assert not d.alive() and not d.socket_path.exists()
    assert topo.a.run(["ip", "link", "show", d.iface], check=False).returncode != 0
    assert topo.daemons == [tun.b]
