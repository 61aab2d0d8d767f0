"""`wgfast bench`: raw veth vs wgfast vs other userspace WireGuards, as a Markdown report + PNGs.

Everything runs between two fresh network namespaces joined by veth; each implementation gets
a fresh tunnel (both ends the same implementation).  Per repetition it measures iperf3 TCP with
1 and 4 streams, the highest 64-byte UDP rate with < 1 % loss (an offered-rate ladder), ping
latency, and the daemons' CPU time per GB moved (utime+stime of both daemons, from
/proc/PID/stat, over the single-stream TCP run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import wgfast
from wgfast.lab.netns import (
    INNER4,
    UNDERLAY4,
    WGFAST,
    WGFAST_NO_OFFLOADS,
    WGFAST_PIPELINE,
    WIREGUARD_GO,
    Implementation,
    Topology,
    Tunnel,
    implementation_for_binary,
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
         ) -> tuple[float, float | None]:
    """(Gbit/s, daemon CPU seconds per GB or None for the raw link)."""
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


# --------------------------------------------------------------------------- report


def _first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (res.stdout or res.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def impl_version(impl: Implementation) -> str:
    if impl.name.startswith("wgfast"):
        env = " ".join(f"{k}={v}" for k, v in impl.env)
        return f"wgfast {wgfast.__version__}" + (f" ({env})" if env else "")
    if "wireguard-go" in os.path.basename(impl.argv[0]):
        return _first_line([impl.argv[0], "--version"])
    return impl.argv[0]


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal"))
        mem_gb = f"{int(mem.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        mem_gb = "unknown"
    return {
        "CPU": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "memory": mem_gb,
        "kernel": f"{platform.system()} {platform.release()}",
        "OS": _os_name(),
        "Python": platform.python_version(),
        "iperf3": _first_line(["iperf3", "--version"]),
        "wg": _first_line(["wg", "--version"]),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "unknown"


def _stats(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)


def _fmt(xs: list[float] | None, unit: str) -> str:
    if not xs:
        return "–"
    lo, med, hi = _stats(xs)
    digits = 3 if unit == "ms" else 0 if unit in ("kpps", "drops/GB") else 2
    if len(xs) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def write_report(results: Results, out_dir: Path, started: _dt.datetime,
                 elapsed: float) -> Path:
    s = results.settings
    lines = [
        "# wgfast benchmark: userspace WireGuard over veth",
        "",
        f"Date: {started.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} "
        f"(took {elapsed:.0f} s). Repetitions: {s.reps}; each cell is the median "
        "(min–max) of the repetitions.",
        "",
        "Two network namespaces joined by a veth pair; for each implementation a tunnel "
        "between two instances of it (MTU 1420) and iperf3/ping through the tunnel; the raw "
        "link is the same veth without a tunnel. "
        f"TCP runs {s.tcp_seconds:g} s; UDP offered rates "
        f"{', '.join(f'{r:g}' for r in s.udp_ladder)} Mbit/s of 64-byte payloads "
        "(iperf3 socket buffers 2 MB), "
        f"{s.udp_seconds:g} s each, up to the first with ≥ 1 % loss, then {s.udp_refine} "
        "bisection steps (geometric mean) between it and the last that passed; "
        f"{s.ping_count} pings at 20 ms intervals. CPU per GB: user+system CPU seconds of "
        "both daemons during the 1-stream TCP run divided by the GB (10⁹ bytes) received. "
        "Socket-buffer drops: the kernel's UDP RcvbufErrors (both namespaces) during that run "
        "— datagrams lost because a receiving socket was full; TCP backs off on each loss.",
        "",
        "| | " + " | ".join(f"{title} ({unit})" for _, title, unit, _ in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for t in results.targets:
        vals = results.values.get(t, {})
        lines.append(f"| {t} | " + " | ".join(_fmt(vals.get(k), unit)
                                             for k, _, unit, _ in METRICS) + " |")
    lines += ["", "## Ratios to the raw link (median)", ""]
    raw = results.values.get(RAW, {})
    for t in results.targets:
        if t == RAW or not raw:
            continue
        parts = []
        for k in ("tcp1", "tcp4", "udp64"):
            if raw.get(k) and results.values.get(t, {}).get(k):
                r = statistics.median(results.values[t][k]) / statistics.median(raw[k])
                parts.append(f"{k} {r:.2f}×")
        lines.append(f"- {t}: " + ", ".join(parts))
    lines += _ratios_to_others(results)
    lines += ["", "## Charts", ""]
    for k, title, _, _ in METRICS:
        if (out_dir / f"{k}.png").exists():
            lines.append(f"![{title}]({k}.png)")
    lines += ["", "## Machine", ""]
    for k, v in machine_info().items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Implementations", ""]
    for k, v in results.versions.items():
        lines.append(f"- {k}: {v}")
    if results.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results.notes]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ratios_to_others(results: Results) -> list[str]:
    """wgfast's medians divided by each other daemon's (CPU per GB: lower is better)."""
    ours = results.values.get("wgfast", {})
    others = [t for t in results.targets if t not in (RAW, "wgfast")
              and not t.startswith("wgfast-")]
    if not ours or not others:
        return []
    lines = ["", "## wgfast against the others (median ÷ median)", ""]
    for t in others:
        theirs = results.values.get(t, {})
        parts = []
        for k in ("tcp1", "tcp4", "udp64", "cpu_per_gb"):
            if ours.get(k) and theirs.get(k) and statistics.median(theirs[k]) > 0:
                r = statistics.median(ours[k]) / statistics.median(theirs[k])
                parts.append(f"{k} {r:.2f}×")
        if parts:
            lines.append(f"- wgfast ÷ {t}: " + ", ".join(parts))
    return lines


def write_charts(results: Results, out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        results.notes.append("matplotlib is not installed: no charts")
        return []
    paths = []
    for key, title, unit, higher in METRICS:
        names = [t for t in results.targets if results.values.get(t, {}).get(key)]
        if not names:
            continue
        meds, lo, hi = [], [], []
        for t in names:
            mn, med, mx = _stats(results.values[t][key])
            meds.append(med)
            lo.append(med - mn)
            hi.append(mx - med)
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.bar(names, meds, yerr=[lo, hi], capsize=6,
               color=["#888888" if n == RAW else "#3b7dd8" for n in names])
        ax.set_ylabel(unit)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)")
        for i, m in enumerate(meds):
            # above the whisker, so the number never sits on the error bar
            ax.annotate(f"{m:,.0f}" if m >= 1000 else f"{m:.3g}", (i, m + hi[i]), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9)
        ax.margins(y=0.12)
        if len(names) > 4:      # long names side by side would run into each other
            ax.tick_params(axis="x", labelsize=8, labelrotation=15)
        fig.tight_layout()
        p = out_dir / f"{key}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default: ./wgfast-bench-DATE)")
    p.add_argument("--against", metavar="BIN", action="extend", nargs="+", default=None,
                   help="other wireguard-go compatible daemons to compare (default: "
                        "wireguard-go if installed)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="1 repetition, 2 s tests")
    p.add_argument("--no-wgfast", action="store_true", help="leave wgfast out")
    p.add_argument("--offloads-off-too", action="store_true",
                   help="also measure wgfast with TUN/UDP offloads forced off (wgfast-nooff)")
    p.add_argument("--pipeline-too", action="store_true",
                   help="also measure wgfast with two-stage pipelines instead of "
                        "run-to-completion threads (wgfast-pipeline)")
    p.add_argument("--prefix", default="wgb", help="name prefix for namespaces and interfaces")


def run(args: argparse.Namespace, out: TextIO = sys.stderr) -> int:
    if os.geteuid() != 0:
        print("wgfast bench needs root (it creates network namespaces).", file=out)
        return 2
    if shutil.which("iperf3") is None:
        print("wgfast bench needs iperf3.", file=out)
        return 2
    settings = Settings.quick() if args.quick else Settings()
    if args.reps is not None:
        settings.reps = max(1, args.reps)
    started = _dt.datetime.now().astimezone()
    out_dir: Path = args.out or Path(f"wgfast-bench-{started.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Results(settings)

    impls: list[Implementation] = []
    if not args.no_wgfast:
        impls.append(WGFAST)
        if getattr(args, "offloads_off_too", False):
            impls.append(WGFAST_NO_OFFLOADS)
        if getattr(args, "pipeline_too", False):
            impls.append(WGFAST_PIPELINE)
    if args.against is None:
        if WIREGUARD_GO.unavailable_reason() is None:
            impls.append(WIREGUARD_GO)
    else:
        impls += [WIREGUARD_GO if b == "wireguard-go" else implementation_for_binary(b)
                  for b in args.against]
    targets: list[tuple[str, Implementation | None]] = [(RAW, None)]
    for impl in impls:
        reason = impl.unavailable_reason()
        if reason:
            results.notes.append(f"skipped {reason}")
            print(f"skipping {reason}", file=out)
            continue
        targets.append((impl.name, impl))
        results.versions[impl.name] = impl_version(impl)

    progress = Progress(4 * settings.reps * len(targets), out)
    t0 = time.monotonic()
    try:
        with Topology(args.prefix) as topo:
            for name, impl in targets:
                try:
                    measure_target(topo, name, impl, settings, results, progress)
                    results.targets.append(name)
                except Exception as e:  # noqa: BLE001 - one broken daemon must not sink the rest
                    results.notes.append(f"{name} failed: {e}")
                    print(f"{name} failed: {e}", file=out)
                    if results.values.get(name):
                        results.targets.append(name)
    except KeyboardInterrupt:
        print("interrupted: namespaces removed, partial report written", file=out)
        results.notes.append("interrupted before the end")
    elapsed = time.monotonic() - t0
    write_charts(results, out_dir)
    report = write_report(results, out_dir, started, elapsed)
    (out_dir / "results.json").write_text(json.dumps({
        "date": started.isoformat(),
        "settings": settings.__dict__,
        "targets": results.targets,
        "values": results.values,
        "versions": results.versions,
        "notes": results.notes,
    }, indent=2, default=list))
    print(f"report: {report}", file=out)
    print(report.read_text(), file=out)
    return 0 if results.targets else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wgfast bench", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
