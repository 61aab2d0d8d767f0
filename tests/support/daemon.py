"""wgfast-daemon as a process, for test_daemon, test_systemd, test_metrics and test_top: how to
run it (argv, environment), find the ones we started and their UAPI sockets, and read its
metrics endpoint from inside a namespace.  Apart from the data-plane bench (__init__); the
fixtures built from these (`ns`, `iface`, `metrics_tunnel`) live in conftest.py."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from support import needs_tun
from wgfast.lab.netns import WGFAST, Implementation, inside
from wgfast.uapi_server import SOCKET_DIR

# ---- running it and finding it ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]        # the checkout: tests/support/ is two down
DAEMON = [sys.executable, "-m", "wgfast.daemon"]

# A daemon in a namespace of our own, configured with `wg`: root, /dev/net/tun, iproute2, wg.
needs_wg = needs_tun("wg")


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("LOG_LEVEL", "WG_PROCESS_FOREGROUND")}
    e["PYTHONPATH"] = str(ROOT)
    e.update(extra)
    return e


def sock_path(iface: str) -> Path:
    return Path(SOCKET_DIR) / f"{iface}.sock"


def daemon_pids(iface: str) -> list[int]:
    """PIDs of wgfast daemons for this (unique, random) interface name: the ones we started."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wgfast.daemon" in argv and iface.encode() in argv:
            out.append(int(p.name))
    return out


def sock_live(iface: str) -> bool:
    """Something accepts connections on the interface's UAPI socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(sock_path(iface)))
        return True
    except OSError:
        return False
    finally:
        s.close()


@contextlib.contextmanager
def daemon_name() -> Iterator[str]:
    """A unique interface name; whatever daemon still serves it afterwards is stopped."""
    name = "h6d" + secrets.token_hex(3)
    try:
        yield name
    finally:
        for pid in daemon_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            sock_path(name).unlink()


# ---- its metrics endpoint -----------------------------------------------------------------------

METRICS_PORT = 9586
WGFAST_METRICS = Implementation("wgfast-metrics", WGFAST.argv,
                                env={"WGFAST_METRICS": f"127.0.0.1:{METRICS_PORT}"})


def scrape(ns: str, port: int = METRICS_PORT) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics from inside namespace ns; samples by name."""
    with inside(ns):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    out["__text__"] = [({"text": text}, 0.0)]
    return out


def value(m: dict, name: str, **labels: str) -> float:
    hits = [v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, m.get(name))
    return hits[0]


def send_udp(ns: str, dest: str, n: int, size: int) -> None:
    with inside(ns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(n):
                s.sendto(b"m" * size, (dest, 9))
