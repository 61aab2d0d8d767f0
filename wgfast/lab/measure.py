"""What `wgfast bench` measures, between two namespaces of a Topology: iperf3 TCP with 1 and 4
streams, the highest 64-byte UDP rate with < 1 % loss (an offered-rate ladder, then bisection),
ping latency, the daemons' CPU time per GB moved and the UDP socket-buffer drops; the results
are collected in `Results` for report.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from wgfast.lab.netns import (
    INNER4,
    UNDERLAY4,
    Implementation,
    Topology,
    Tunnel,
    make_tunnel,
    run_iperf3,
)

# key, title, unit, higher-is-better
METRICS: list[tuple[str, str, str, bool]] = [
    ("tcp1", "TCP, 1 stream", "Gbit/s", True),
    ("tcp4", "TCP, 4 streams", "Gbit/s", True),
    ("udp64", "UDP 64 B, highest rate with < 1 % loss", "kpps", True),
    ("ping_min", "ping, min", "ms", False),
    ("ping_avg", "ping, avg", "ms", False),
    ("cpu_per_gb", "daemon CPU per GB (both ends, TCP 1 stream)", "CPU s/GB", False),
    ("rcvbuf_drops", "UDP socket-buffer drops per GB (TCP 1 stream)", "drops/GB", False),
]

RAW = "raw veth"


@dataclass
class Settings:
    reps: int = 3
    tcp_seconds: float = 3.0
    udp_seconds: float = 1.5
    # Offered 64-byte UDP payload rates, Mbit/s (64 B = 512 bit: 100 Mbit/s ~ 195 kpps).
    udp_ladder: tuple[float, ...] = (5, 10, 20, 30, 50, 70, 100, 140, 200, 280, 400)
    # Bisection steps between the last rate that passed and the first that failed (each
    # narrows the ~1.4x ladder step by its square root: 3 steps leave ~4 %).
    udp_refine: int = 3
    ping_count: int = 20

    @classmethod
    def quick(cls) -> Settings:
        return cls(reps=1, tcp_seconds=2.0, udp_seconds=1.0, udp_ladder=(5, 20, 80),
                   udp_refine=1, ping_count=5)


@dataclass
class Results:
    settings: Settings
    targets: list[str] = field(default_factory=list)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def add(self, target: str, metric: str, value: float) -> None:
        self.values.setdefault(target, {}).setdefault(metric, []).append(value)


class Progress:
    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.done, self.out = total, 0, out
        self.t0 = time.monotonic()

    def step(self, msg: str) -> None:
        self.done += 1
        print(f"[{self.done:3d}/{self.total}  {time.monotonic() - self.t0:6.1f} s] {msg}",
              file=self.out, flush=True)

    def note(self, msg: str) -> None:
        print(f"    {msg}", file=self.out, flush=True)


# --------------------------------------------------------------------------- measurements


def _tcp(topo: Topology, dest: str, tun: Tunnel | None, streams: int, seconds: float
         ) -> tuple[float, float | None, float]:
    """(Gbit/s, daemon CPU seconds per GB or None for the raw link, UDP socket-buffer drops
    per GB)."""
    cpu0: list[float] = []

    def snapshot() -> None:
        if tun is not None:
            cpu0.append(sum(d.cpu_seconds() for d in tun.pair))

    args = ["-P", str(streams)] if streams > 1 else []
    drops0 = udp_rcvbuf_errors(topo)
    data = run_iperf3(topo.b, topo.a, dest, args, duration=seconds, on_start=snapshot)
    end = data["end"]["sum_received"]
    cpu = None
    if tun is not None and end["bytes"] > 0:
        used = sum(d.cpu_seconds() for d in tun.pair) - cpu0[0]
        cpu = used / (end["bytes"] / 1e9)
    drops = (udp_rcvbuf_errors(topo) - drops0) / max(end["bytes"] / 1e9, 1e-9)
    return end["bits_per_second"] / 1e9, cpu, drops


def udp_rcvbuf_errors(topo: Topology) -> int:
    """UDP datagrams the kernel dropped because a socket's receive buffer was full (both
    namespaces, IPv4+IPv6), from /proc/net/snmp{,6} as seen inside each namespace."""
    total = 0
    for h in topo.hosts:
        out = h.run(["cat", "/proc/net/snmp", "/proc/net/snmp6"]).stdout.splitlines()
        udp = [ln.split() for ln in out if ln.startswith("Udp:")]
        if len(udp) == 2 and "RcvbufErrors" in udp[0]:
            total += int(udp[1][udp[0].index("RcvbufErrors")])
        for ln in out:
            if ln.startswith("Udp6RcvbufErrors"):
                total += int(ln.split()[1])
    return total


def _udp_ladder(topo: Topology, dest: str, settings: Settings, progress: Progress | None
                ) -> float:
    """The highest received rate (kpps) among offered rates that lost < 1 %: up the ladder
    until a rate fails, then bisect between it and the last one that passed."""

    def trial(rate: float) -> tuple[float, bool]:
        data = run_iperf3(topo.b, topo.a, dest,
                          ["-u", "-l", "64", "-w", "2M", "-b", f"{rate:.4g}M"],
                          duration=settings.udp_seconds)
        s = data["end"]["sum"]
        packets, lost, secs = s.get("packets", 0), s.get("lost_packets", 0), s["seconds"]
        loss = 100.0 * lost / packets if packets else 100.0
        kpps = (packets - lost) / secs / 1e3 if secs > 0 else 0.0
        if progress:
            progress.note(f"UDP 64 B offered {rate:.4g} Mbit/s: {kpps:.0f} kpps received, "
                          f"{loss:.2f} % lost")
        return kpps, loss < 1.0

    return highest_passing(settings.udp_ladder, settings.udp_refine, trial)


def highest_passing(ladder: Sequence[float], refine: int,
                    trial: Callable[[float], tuple[float, bool]]) -> float:
    """Climb `ladder` until trial(rate) fails, then bisect (geometric mean) `refine` times
    between the last rate that passed and the first that failed; the best measured value
    among passing trials (0 when none passed)."""
    best, passed, failed = 0.0, 0.0, 0.0
    for rate in ladder:
        value, ok = trial(rate)
        if not ok:
            failed = rate
            break
        best, passed = max(best, value), rate
    for _ in range(refine if passed and failed else 0):
        mid = (passed * failed) ** 0.5
        value, ok = trial(mid)
        if ok:
            best, passed = max(best, value), mid
        else:
            failed = mid
    return best


def measure_target(topo: Topology, target: str, impl: Implementation | None,
                   settings: Settings, results: Results, progress: Progress) -> None:
    tun: Tunnel | None = None
    if impl is not None:
        tun = make_tunnel(topo, impl, impl)
        if not topo.a.wait_ping(INNER4[1], deadline=10):
            raise RuntimeError(f"{target}: the tunnel carries no traffic")
        dest = INNER4[1]
    else:
        dest = UNDERLAY4[1]
    try:
        for rep in range(1, settings.reps + 1):
            tag = f"{target} rep {rep}/{settings.reps}"
            gbps, cpu, drops = _tcp(topo, dest, tun, 1, settings.tcp_seconds)
            results.add(target, "tcp1", gbps)
            results.add(target, "rcvbuf_drops", drops)
            if cpu is not None:
                results.add(target, "cpu_per_gb", cpu)
            progress.step(f"{tag}: TCP 1 stream {gbps:.2f} Gbit/s"
                          + (f", {cpu:.2f} CPU s/GB" if cpu is not None else "")
                          + f", {drops:.0f} UDP socket drops/GB")
            gbps4, _, _ = _tcp(topo, dest, tun, 4, settings.tcp_seconds)
            results.add(target, "tcp4", gbps4)
            progress.step(f"{tag}: TCP 4 streams {gbps4:.2f} Gbit/s")
            kpps = _udp_ladder(topo, dest, settings, progress)
            results.add(target, "udp64", kpps)
            progress.step(f"{tag}: UDP 64 B {kpps:.0f} kpps with < 1 % loss")
            ping = topo.a.ping(dest, count=settings.ping_count, interval=0.02)
            if ping.rtt_min_ms is not None and ping.rtt_avg_ms is not None:
                results.add(target, "ping_min", ping.rtt_min_ms)
                results.add(target, "ping_avg", ping.rtt_avg_ms)
            progress.step(f"{tag}: ping min/avg {ping.rtt_min_ms}/{ping.rtt_avg_ms} ms")
        if tun is not None:
            for d in tun.pair:
                if not d.alive():
                    raise RuntimeError(f"{target} died during the benchmark:\n{d.log()}")
    finally:
        if tun is not None:
            tun.stop()
