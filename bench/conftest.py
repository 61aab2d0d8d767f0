"""Collect bench_*.py and print GB/s, Mpps and the target ratios after a benchmark run."""

from __future__ import annotations

import pytest


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _rates(bench) -> tuple[float, float]:
    t = bench.stats.median
    return bench.extra_info["bytes"] / t / 1e9, bench.extra_info["msgs"] / t / 1e6


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if not session or not session.benchmarks:
        return
    rows: dict[str, tuple[float, float]] = {}
    for b in session.benchmarks:
        if "bytes" in b.extra_info:
            rows[b.extra_info["label"]] = _rates(b)
    w = terminalreporter.write_line
    w("")
    w(f"{'benchmark':40s} {'GB/s':>8s} {'Mpps':>8s}")
    for label in sorted(rows):
        gbs, mpps = rows[label]
        w(f"{label:40s} {gbs:8.3f} {mpps:8.3f}")

    def ratio(a: str, b: str, i: int = 0) -> str:
        if a in rows and b in rows and rows[b][i]:
            return f"{rows[a][i] / rows[b][i]:.2f}x"
        return "n/a"

    w("")
    backends = sorted({lbl.split()[1] for lbl in rows if lbl.startswith("seal ")})
    for be in backends:
        w(f"batch seal/plain loop at 1420 B, b=128 [{be}]: "
          f"{ratio(f'seal {be} 1420 b128', f'loop {be} 1420')}")
        w(f"batch seal vs PyNaCl loop at 64 B, b=128 [{be}]: "
          f"{ratio(f'seal {be} 64 b128', 'pynacl 64', 1)}")
    for size in (64, 1420):
        for lbl in sorted(rows):
            if lbl.startswith("dataplane ") and lbl.endswith(f" {size}"):
                be = lbl.split()[1]
                w(f"data plane seal+open vs crypto alone at {size} B [{be}]: "
                  f"{ratio(lbl, f'crypto-only x2 {be} {size}')}")
    cache = getattr(config, "cache", None)
    chosen = cache.get("wgfast/chosen_backend", None) if cache else None
    if chosen:
        w(f"chosen backend ({chosen}) vs libsodium, batch seal 1420 B b=128: "
          f"{ratio(f'seal {chosen} 1420 b128', 'seal libsodium 1420 b128')}")
