"""wgfast.top, headless: frames rendered to text against real daemons in namespaces, read both
through the UAPI socket and through the metrics endpoint, with traffic flowing between two reads;
the `wgfast top --once` command; the get-reply parser and the number formats."""

from __future__ import annotations

import io
import socket
import subprocess
import sys

import pytest
from rich.console import Console
from support.daemon import METRICS_PORT, ROOT, send_udp

from wgfast import top
from wgfast.lab.netns import INNER4, Topology, inside, key_to_hex


def text_of(cur: list[top.Frame], prev: list[top.Frame] | None) -> str:
    console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    console.print(top.render(cur, prev))
    return console.export_text()


def row_of(text: str, key: str) -> list[str]:
    """The cells of the table row that starts with a peer's short key."""
    lines = [ln for ln in text.splitlines() if top.short_key(key) in ln]
    assert len(lines) == 1, text
    return [c.strip() for c in lines[0].strip("│┃| ").split("│")]


def test_frame_from_the_uapi_socket(metrics_tunnel, topo: Topology) -> None:
    a, b = metrics_tunnel.pair
    src = top.Source(a.iface)
    first = src.read()
    send_udp(topo.a.name, INNER4[1], 200, 1000)
    assert topo.a.wait_ping(INNER4[1])
    cur = src.read()
    text = text_of(cur, first)
    cells = row_of(text, b.public_key)
    assert cells[1] == "10.200.0.2:51821"                      # endpoint
    assert cells[2] != "-" and cells[3].endswith("/s") and not cells[3].startswith("0 ")
    assert cells[6].endswith("s ago")                           # handshake age
    assert "10.201.0.2/32" in cells[7]
    assert f"{a.iface}: 1 peer" in text
    assert "from the metrics endpoint only" in text             # UAPI has no drop counters
    # The UAPI reply carries our private key; the frame never does.
    assert a.private_key and a.private_key not in text and key_to_hex(a.private_key) not in text
    assert cur[0].peers[0].tx - first[0].peers[0].tx >= 200 * 1000


def test_frame_from_the_metrics_endpoint(metrics_tunnel, topo: Topology) -> None:
    a, b = metrics_tunnel.pair
    url = f"127.0.0.1:{METRICS_PORT}"
    src = top.Source(None, metrics=url)
    with inside(topo.b.name):
        first = src.read()
    send_udp(topo.a.name, INNER4[1], 100, 500)
    with inside(topo.a.name):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(7):
                s.sendto(b"\x07" + bytes(40), (topo.b.addr4, 51821))    # not a WG type
    assert topo.a.wait_ping(INNER4[1])
    with inside(topo.b.name):
        cur = src.read()
    assert [f.interface for f in cur] == [b.iface]
    text = text_of(cur, first)
    cells = row_of(text, a.public_key)
    assert cells[1] == "10.200.0.1:51820"
    assert cells[2].endswith("/s") and not cells[2].startswith("0 ")    # rx rate on b
    drop = [ln for ln in text.splitlines() if ln.strip("│ ").startswith("type")]
    assert len(drop) == 1 and " 7 " in drop[0], text
    assert "handshake messages: accepted" in text


def test_top_once_command(metrics_tunnel, topo: Topology) -> None:
    a, b = metrics_tunnel.pair
    out = subprocess.run([sys.executable, "-m", "wgfast.lab.cli", "top", a.iface, "--once",
                          "--interval", "0.2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30, env={"PYTHONPATH": str(ROOT), "COLUMNS": "200",
                                          "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert top.short_key(b.public_key) in out.stdout and "10.200.0.2:51821" in out.stdout
    # frame_text: the same through the library call.
    assert top.short_key(b.public_key) in top.frame_text(top.Source(a.iface), interval=0.1)


def test_unknown_interface_is_a_clear_error() -> None:
    out = subprocess.run([sys.executable, "-m", "wgfast.lab.cli", "top", "nosuchwg0", "--once"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1 and "nosuchwg0" in out.stderr and "Traceback" not in out.stderr


def test_parse_get_skips_keys() -> None:
    priv, pub, psk = "11" * 32, "22" * 32, "33" * 32
    text = (f"private_key={priv}\nlisten_port=51820\npublic_key={pub}\npreshared_key={psk}\n"
            "endpoint=[fd00::1]:51820\nlast_handshake_time_sec=1700000000\n"
            "last_handshake_time_nsec=500000000\ntx_bytes=10\nrx_bytes=20\n"
            "persistent_keepalive_interval=0\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\n"
            "protocol_version=1\nerrno=0\n\n")
    fr = top.parse_get("wg0", text)
    (p,) = fr.peers
    assert (p.endpoint, p.rx, p.tx, p.allowed_ips) == ("[fd00::1]:51820", 20, 10,
                                                      "10.0.0.0/24,fd00::/64")
    assert p.last_handshake == pytest.approx(1700000000.5)
    assert priv not in repr(fr) and psk not in repr(fr)
    with pytest.raises(top.SourceError):
        top.parse_get("wg0", "errno=22\n\n")


@pytest.mark.parametrize("rate,want", [(0, "0 b/s"), (100, "800 b/s"), (125_000, "1.0 Mb/s"),
                                       (1.25e9, "10.0 Gb/s")])
def test_human_rate(rate: float, want: str) -> None:
    assert top.human_rate(rate) == want


def test_human_age() -> None:
    assert top.human_age(0, 100) == "never"
    assert top.human_age(95, 100) == "5s ago"
    assert top.human_age(100 - 125, 100) == "2m 5s ago"
    assert top.human_age(100 - 7300, 100) == "2h 1m ago"
