"""`wgfast bench`'s output: report.md (a table of medians with min-max, ratios to the raw link
and to the other daemons, the machine and the versions) and one PNG chart per metric."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
from pathlib import Path

import wgfast
from wgfast.lab.measure import METRICS, RAW, Results
from wgfast.lab.netns import Implementation


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
