"""Prometheus metrics for a Device, read from its state at scrape time.

Nothing here runs per packet: the data plane keeps its counters in C (bytes, drops, batch
sizes, roaming), the control plane bumps a few Python counters once per handshake event, and a
scrape copies them all in one call into the control loop (Device._call), so it is safe from
the HTTP server's thread.  Per-peer metrics use the names and labels of the widely used
prometheus_wireguard_exporter (interface, public_key, allowed_ips), so dashboards built for it
work unchanged.  Only public keys ever appear.
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from wgfast.device import Device
    from wgfast.endpoint import Endpoint

DEFAULT_PORT = 9586     # prometheus_wireguard_exporter's

# Handshake messages by outcome, each over a counter the device keeps now.  One place to wire
# other counters in (e.g. once mac1/cookie checks move into C): outcome -> reader.
HANDSHAKE_OUTCOMES: dict[str, Callable[[Device], int]] = {
    # C's intake decides mac1, cookies and the rate limit (its drop counters); Python's twin
    # counts the same outcomes when C could not load BLAKE2s.
    "accepted": lambda d: d.handshake_outcomes["accepted"],
    "bad_mac1": lambda d: _drop(d, "WG_DROP_MAC1") + d.handshake_outcomes["bad_mac1"],
    "cookie_sent": lambda d: _drop(d, "WG_DROP_COOKIE") + d.handshake_outcomes["cookie_sent"],
    "rate_limited": lambda d: (_drop(d, "WG_DROP_RATELIMIT")
                               + d.handshake_outcomes["rate_limited"]),
    "queue_full": lambda d: _drop(d, "WG_DROP_EVENTS_FULL"),
    # Replayed timestamps, failed decryption, unknown receiver, malformed: not told apart yet.
    "rejected": lambda d: d.handshake_drops - d.handshake_outcomes["bad_mac1"],
}


def _drop(dev: Device, name: str) -> int:
    from wgfast.dataplane import lib

    assert dev.dp is not None
    return int(dev.dp.drops[getattr(lib, name)])


RTT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """Fixed-bucket histogram for handshake round trips (observed once per handshake)."""

    def __init__(self, bounds: tuple[float, ...] = RTT_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, dtype=np.uint64)    # last: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        if not 0.0 <= seconds < 3600.0:
            return          # no initiation of ours on record: not a round trip
        self.counts[int(np.searchsorted(self.bounds, seconds))] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        acc = np.cumsum(self.counts)
        return [(repr(b), float(c)) for b, c in zip(self.bounds, acc[:-1], strict=True)] + \
               [("+Inf", float(acc[-1]))]


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@dataclass
class PeerSample:
    public_key: str
    allowed_ips: str
    endpoint: str
    rx_bytes: int
    tx_bytes: int
    last_handshake: float       # unix seconds, 0 = never
    handshakes: int
    timeouts: int
    roams: int


@dataclass
class Sample:
    """One consistent copy of everything a scrape reports."""

    interface: str
    peers: list[PeerSample]
    drops: dict[str, int]
    outcomes: dict[str, int]
    rtt: list[tuple[str, float]]
    rtt_sum: float
    batches: np.ndarray
    events_pending: int
    staged: int
    under_load: bool
    aead: str
    offloads: dict[str, bool] = field(default_factory=dict)
    listen_port: int = 0


def sample(dev: Device) -> Sample:
    """Copy the device's counters; runs in the control loop (or under its lock)."""
    from wgfast.dataplane import DROP_REASONS, lib
    from wgfast.peers import format_key

    def take() -> Sample:
        dp = dev.dp
        assert dp is not None
        peers = []
        table = dev.table
        for pk, pid in table.ids.items():     # no protocol state is made for idle peers
            ep = dp.get_endpoint(pid)
            peers.append(PeerSample(
                public_key=b64(pk),
                allowed_ips=",".join(format_key(k) for k in table.allowed(pid)),
                endpoint=_endpoint_text(ep),
                rx_bytes=int(dp.rx_bytes[pid]), tx_bytes=int(dp.tx_bytes[pid]),
                last_handshake=float(dev.last_handshake_wall[pid]),
                handshakes=int(dev.handshakes_completed[pid]),
                timeouts=int(dev.handshake_timeouts[pid]),
                roams=int(dp.roams[pid])))
        return Sample(
            interface=dev.name, peers=peers,
            drops={name: int(dp.drops[i]) for i, name in sorted(DROP_REASONS.items())},
            outcomes={k: int(f(dev)) for k, f in HANDSHAKE_OUTCOMES.items()},
            rtt=dev.handshake_rtt.cumulative(), rtt_sum=dev.handshake_rtt.sum,
            batches=dp.batches.copy(), events_pending=dp.events_pending(),
            staged=int(lib.wg_stage_total(dp.handle)),
            under_load=dp.under_load(time.monotonic()),
            aead=dev.aead_in_use, offloads=dp.offloads(), listen_port=dev.listen_port)

    return dev._call(take)


def _endpoint_text(ep: Endpoint | None) -> str:
    """host:port or [host]:port, the host as the data plane reports it."""
    if ep is None:
        return ""
    return f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"


def _batch_buckets(row: np.ndarray) -> tuple[list[tuple[str, float]], float]:
    from wgfast.dataplane import lib

    nb = lib.WG_BATCH_BUCKETS
    acc = np.cumsum(row[:nb])
    buckets = [(str(1 << b), float(acc[b])) for b in range(nb - 1)]
    buckets.append(("+Inf", float(acc[nb - 1])))
    return buckets, float(row[nb])


class DeviceCollector:
    """A prometheus_client collector over one Device."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev

    def describe(self) -> list[Any]:
        return []       # metrics are only known at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        from wgfast.dataplane import lib

        s = sample(self.dev)
        labels = ["interface", "public_key", "allowed_ips"]
        per_peer = [
            ("wireguard_sent_bytes_total", "Bytes sent to the peer", "tx_bytes", True),
            ("wireguard_received_bytes_total", "Bytes received from the peer", "rx_bytes", True),
            ("wireguard_latest_handshake_seconds",
             "UNIX timestamp of the latest handshake (0 = never)", "last_handshake", False),
            ("wgfast_peer_handshakes_total", "Handshakes completed with the peer",
             "handshakes", True),
            ("wgfast_peer_handshake_timeouts_total",
             "Handshake initiations to the peer that got no response in time", "timeouts", True),
            ("wgfast_peer_endpoint_changes_total",
             "Times authenticated data moved the peer's endpoint (roaming)", "roams", True),
        ]
        for name, doc, attr, counter in per_peer:
            fam = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc,
                                                                           labels=labels)
            for p in s.peers:
                fam.add_metric([s.interface, p.public_key, p.allowed_ips], getattr(p, attr))
            yield fam
        ep = InfoMetricFamily("wgfast_peer", "The peer's current endpoint",
                              labels=["interface", "public_key"])
        for p in s.peers:
            ep.add_metric([s.interface, p.public_key], {"endpoint": p.endpoint})
        yield ep
        ifl = ["interface"]
        yield _gauge(GaugeMetricFamily, "wgfast_peers", "Configured peers", s.interface,
                     len(s.peers))
        drops = CounterMetricFamily("wgfast_drops", "Packets the data plane dropped, by reason",
                                    labels=["interface", "reason"])
        for reason, v in s.drops.items():
            drops.add_metric([s.interface, reason], v)
        yield drops
        hs = CounterMetricFamily("wgfast_handshake_messages",
                                 "Handshake messages received, by outcome",
                                 labels=["interface", "outcome"])
        for outcome, v in s.outcomes.items():
            hs.add_metric([s.interface, outcome], v)
        yield hs
        rtt = HistogramMetricFamily("wgfast_handshake_rtt_seconds",
                                    "Time from our initiation to its response", labels=ifl)
        rtt.add_metric([s.interface], s.rtt, s.rtt_sum)
        yield rtt
        for row, name, doc in ((lib.WG_BATCH_TUN, "wgfast_tun_batch_packets",
                                "Packets per batch read from the TUN (after segmentation)"),
                               (lib.WG_BATCH_UDP, "wgfast_udp_batch_datagrams",
                                "Datagrams per batch read from the UDP sockets")):
            h = HistogramMetricFamily(name, doc, labels=ifl)
            buckets, total = _batch_buckets(s.batches[row])
            h.add_metric([s.interface], buckets, total)
            yield h
        yield _gauge(GaugeMetricFamily, "wgfast_events_pending",
                     "Events from the data plane waiting for the control loop", s.interface,
                     s.events_pending)
        yield _gauge(GaugeMetricFamily, "wgfast_staged_packets",
                     "Packets waiting for a handshake", s.interface, s.staged)
        yield _gauge(GaugeMetricFamily, "wgfast_under_load",
                     "1 while handshakes are answered with cookies", s.interface,
                     int(s.under_load))
        info = InfoMetricFamily("wgfast_device", "AEAD backend and offloads in use",
                                labels=ifl)
        info.add_metric([s.interface], {"aead": s.aead, "listen_port": str(s.listen_port),
                                        **{k: str(v).lower() for k, v in s.offloads.items()}})
        yield info


def _gauge(cls: Any, name: str, doc: str, iface: str, value: float) -> Any:
    g = cls(name, doc, labels=["interface"])
    g.add_metric([iface], value)
    return g


def registry_for(dev: Device) -> Any:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(DeviceCollector(dev))  # type: ignore[arg-type]
    return reg


def exposition(dev: Device) -> str:
    """The Prometheus text format, as a scrape would get it."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(dev)).decode()


def parse_address(text: str) -> tuple[str, int]:
    """ADDR:PORT, [V6]:PORT, or ADDR alone (port 9586).  An address is required: metrics are
    bound only where asked (0.0.0.0 or [::] for every address)."""
    text = text.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [ADDR]:PORT")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not host:
        raise ValueError(f"{text!r}: give an address (0.0.0.0 listens on all)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise ValueError(f"{text!r}: bad port {p!r}")
    return int(p)


class MetricsServer:
    """The HTTP endpoint (GET /metrics, or any path) in a thread of its own."""

    def __init__(self, dev: Device, address: str) -> None:
        from prometheus_client import start_http_server

        host, port = parse_address(address)
        self.server, self.thread = start_http_server(port, host, registry_for(dev))
        self.address = host
        self.port = int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
