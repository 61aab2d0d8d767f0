"""`wgfast top [IFACE]`: a live view of a running daemon's peers, as iftop or htop show theirs.

Two sources, both read once a second:
  - the UAPI socket (/var/run/wireguard/IFACE.sock, the `wg show` protocol; needs root): per
    peer endpoint, bytes and latest handshake; works with any wireguard-go compatible daemon;
  - the metrics endpoint (`--metrics URL` of `wgfast-daemon --metrics`; no root needed): the
    same, plus wgfast's drop counters by reason and handshake outcomes.
Rates are the difference between two reads.  The UAPI reply carries the private key: it is
dropped as the reply is parsed, never kept or shown.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wgfast.uapi_server import SOCKET_DIR, socket_path


@dataclass
class PeerRow:
    public_key: str             # base64
    endpoint: str = ""
    allowed_ips: str = ""
    rx: int = 0
    tx: int = 0
    last_handshake: float = 0.0   # unix seconds, 0 = never


@dataclass
class Frame:
    interface: str
    peers: list[PeerRow]
    drops: dict[str, int] | None = None         # only from metrics
    handshakes: dict[str, int] | None = None    # messages by outcome, only from metrics
    taken: float = field(default_factory=time.monotonic)


class SourceError(Exception):
    """The daemon cannot be read."""


# ---- UAPI ------------------------------------------------------------------------------------

def uapi_get(iface: str, path: str | None = None, timeout: float = 5.0) -> str:
    path = path or socket_path(iface)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"get=1\n\n")
            buf = b""
            while not (buf.endswith(b"\n\n") and b"errno=" in buf):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror or e}") from None
    return buf.decode(errors="replace")


def parse_get(iface: str, text: str) -> Frame:
    """A `get` reply as a Frame; private and preshared keys are skipped, never stored."""
    peers: list[PeerRow] = []
    sec = nsec = 0
    cur: PeerRow | None = None
    nets: list[str] = []

    def finish() -> None:
        if cur is not None:
            cur.allowed_ips = ",".join(nets)
            cur.last_handshake = sec + nsec * 1e-9 if sec else 0.0
            peers.append(cur)

    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "errno":
            if value != "0":
                raise SourceError(f"{iface}: the daemon answered errno={value}")
            break
        if key == "public_key":
            finish()
            cur, nets, sec, nsec = PeerRow(base64.b64encode(bytes.fromhex(value)).decode()), \
                [], 0, 0
        elif cur is None:
            continue            # device lines, the private key among them
        elif key == "endpoint":
            cur.endpoint = value
        elif key == "allowed_ip":
            nets.append(value)
        elif key == "rx_bytes":
            cur.rx = int(value)
        elif key == "tx_bytes":
            cur.tx = int(value)
        elif key == "last_handshake_time_sec":
            sec = int(value)
        elif key == "last_handshake_time_nsec":
            nsec = int(value)
    finish()
    return Frame(iface, peers)


def interfaces() -> list[str]:
    """Interfaces with a UAPI socket, as `wg show interfaces` finds userspace ones."""
    try:
        names = sorted(n[:-5] for n in os.listdir(SOCKET_DIR) if n.endswith(".sock"))
    except OSError:
        return []
    return names


# ---- metrics ---------------------------------------------------------------------------------

def metrics_frames(url: str, timeout: float = 5.0) -> dict[str, Frame]:
    """Every interface a metrics endpoint reports, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    if "://" not in url:
        url = f"http://{url}"
    if url.rstrip("/").count("/") == 2:
        url = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode()
    except OSError as e:
        raise SourceError(f"{url}: {getattr(e, 'reason', None) or e}") from None
    frames: dict[str, Frame] = {}
    rows: dict[tuple[str, str], PeerRow] = {}
    endpoints: dict[tuple[str, str], str] = {}
    per_peer = {"wireguard_sent_bytes_total": "tx", "wireguard_received_bytes_total": "rx",
                "wireguard_latest_handshake_seconds": "last_handshake"}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            iface = s.labels.get("interface")
            if iface is None:
                continue
            fr = frames.setdefault(iface, Frame(iface, [], {}, {}))
            if s.name in per_peer:
                k = (iface, s.labels["public_key"])
                row = rows.get(k)
                if row is None:
                    row = rows[k] = PeerRow(s.labels["public_key"],
                                            allowed_ips=s.labels.get("allowed_ips", ""))
                    fr.peers.append(row)
                attr = per_peer[s.name]
                setattr(row, attr, float(s.value) if attr == "last_handshake" else int(s.value))
            elif s.name == "wgfast_drops_total":
                assert fr.drops is not None
                fr.drops[s.labels["reason"]] = int(s.value)
            elif s.name == "wgfast_handshake_messages_total":
                assert fr.handshakes is not None
                fr.handshakes[s.labels["outcome"]] = int(s.value)
            elif s.name == "wgfast_peer_info":
                endpoints[(iface, s.labels["public_key"])] = s.labels.get("endpoint", "")
    for k, ep in endpoints.items():
        if k in rows:
            rows[k].endpoint = ep
    return frames


class Source:
    """Where frames come from: UAPI sockets (iface None = all of them) or a metrics URL."""

    def __init__(self, iface: str | None = None, metrics: str | None = None,
                 uapi_path: str | None = None) -> None:
        self.iface = iface
        self.metrics = metrics
        self.uapi_path = uapi_path

    def read(self) -> list[Frame]:
        if self.metrics:
            frames = metrics_frames(self.metrics)
            if self.iface is not None:
                if self.iface not in frames:
                    raise SourceError(f"{self.metrics} reports no interface {self.iface!r}")
                return [frames[self.iface]]
            return [frames[k] for k in sorted(frames)]
        names = [self.iface] if self.iface else interfaces()
        if not names:
            raise SourceError(f"no interfaces: nothing listens in {SOCKET_DIR}")
        return [parse_get(n, uapi_get(n, self.uapi_path)) for n in names]


# ---- rendering -------------------------------------------------------------------------------

def human_rate(bytes_per_s: float) -> str:
    """Bits per second, as iftop shows them."""
    bits = bytes_per_s * 8
    for unit in ("b", "Kb", "Mb", "Gb"):
        if bits < 1000 or unit == "Gb":
            return f"{bits:.0f} {unit}/s" if unit == "b" else f"{bits:.1f} {unit}/s"
        bits /= 1000
    return ""  # pragma: no cover


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


def human_age(last: float, now: float) -> str:
    if not last:
        return "never"
    s = max(int(now - last), 0)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m {s % 60}s ago"
    return f"{s // 3600}h {s % 3600 // 60}m ago"


def short_key(b64: str) -> str:
    return f"{b64[:8]}…{b64[-5:-1]}"


def render(cur: list[Frame], prev: list[Frame] | None = None, now: float | None = None) -> Any:
    """The renderables of one refresh: per interface a peer table and, from metrics, the
    non-zero drop reasons (with their rates) and handshake outcomes."""
    from rich.console import Group
    from rich.table import Table

    now = time.time() if now is None else now
    old = {f.interface: f for f in prev or []}
    parts: list[Any] = []
    for fr in cur:
        before = old.get(fr.interface)
        dt = fr.taken - before.taken if before is not None else 0.0
        was = {p.public_key: p for p in before.peers} if before is not None else {}
        t = Table(title=f"{fr.interface}: {len(fr.peers)} peer"
                        f"{'s' if len(fr.peers) != 1 else ''}",
                  title_justify="left", expand=False)
        for col, just in (("peer", "left"), ("endpoint", "left"), ("rx rate", "right"),
                          ("tx rate", "right"), ("rx", "right"), ("tx", "right"),
                          ("handshake", "right"), ("allowed ips", "left")):
            t.add_column(col, justify=just, no_wrap=col != "allowed ips")  # type: ignore[arg-type]
        for p in sorted(fr.peers, key=lambda p: -(p.rx + p.tx)):
            q = was.get(p.public_key)
            if q is not None and dt > 0:
                rx_rate = human_rate(max(p.rx - q.rx, 0) / dt)
                tx_rate = human_rate(max(p.tx - q.tx, 0) / dt)
            else:
                rx_rate = tx_rate = "-"
            t.add_row(short_key(p.public_key), p.endpoint or "(none)", rx_rate, tx_rate,
                      human_bytes(p.rx), human_bytes(p.tx), human_age(p.last_handshake, now),
                      p.allowed_ips.replace(",", ", ") or "(none)")
        parts.append(t)
        if fr.drops is None:
            parts.append("drops by reason: from the metrics endpoint only (--metrics URL)")
            continue
        d = Table(title=f"{fr.interface}: drops", title_justify="left")
        d.add_column("reason")
        d.add_column("total", justify="right")
        d.add_column("per second", justify="right")
        olddrops = (before.drops or {}) if before is not None else {}
        shown = 0
        for reason, n in sorted(fr.drops.items(), key=lambda kv: -kv[1]):
            if not n:
                continue
            rate = f"{max(n - olddrops.get(reason, n), 0) / dt:.1f}" if dt > 0 else "-"
            d.add_row(reason, str(n), rate)
            shown += 1
        if not shown:
            d.add_row("(none)", "0", "-")
        parts.append(d)
        if fr.handshakes:
            parts.append("handshake messages: " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in fr.handshakes.items()))
    return Group(*parts)


def frame_text(source: Source, interval: float = 0.5, width: int = 160) -> str:
    """One refresh rendered to plain text (two reads `interval` apart, for the rates)."""
    import io

    from rich.console import Console

    first = source.read()
    time.sleep(interval)
    cur = source.read()
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(render(cur, first))
    return console.export_text()


def frames(source: Source, interval: float) -> Iterator[tuple[list[Frame], list[Frame] | None]]:
    prev = None
    while True:
        cur = source.read()
        yield cur, prev
        prev = cur
        time.sleep(interval)


# ---- the command -----------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("iface", nargs="?", metavar="IFACE",
                   help="the interface (default: every one with a UAPI socket, or every one the "
                        "metrics endpoint reports)")
    p.add_argument("--metrics", metavar="URL",
                   help="read wgfast-daemon's metrics endpoint (e.g. 127.0.0.1:9586) instead "
                        "of the UAPI socket: no root needed, and drops by reason too")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="refresh period (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one frame (rates over one interval) and exit")


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.live import Live

    source = Source(args.iface, args.metrics)
    interval = max(args.interval, 0.1)
    try:
        if args.once:
            first = source.read()
            time.sleep(interval)
            Console().print(render(source.read(), first))
            return 0
        with Live(render(source.read()), refresh_per_second=4, screen=False) as live:
            for cur, prev in frames(source, interval):
                live.update(render(cur, prev))
    except SourceError as e:
        print(f"wgfast top: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
