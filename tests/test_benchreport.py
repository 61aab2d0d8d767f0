"""`wgfast bench --quick` with the raw link and wireguard-go: files exist, numbers are positive.
Never asserts a speed."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

import pytest
from support import NETNS_PREFIX, netns_unavailable, require_impl

from wgfast.lab import benchreport, measure, report
from wgfast.lab.netns import iperf3_available


def _namespaces() -> str:
    # Only ours: other test runs on the machine may come and go meanwhile.
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return "\n".join(sorted(ln for ln in out.splitlines() if ln.startswith(NETNS_PREFIX)))


def test_quick_report(tmp_path: Path) -> None:
    if netns_unavailable():
        pytest.skip(netns_unavailable() or "")
    if not iperf3_available():
        pytest.skip("iperf3 is not installed")
    require_impl("wireguard-go")
    before = _namespaces()
    p = argparse.ArgumentParser()
    benchreport.add_arguments(p)
    args = p.parse_args(["--quick", "--out", str(tmp_path / "r"), "--no-wgfast",
                         "--against", "wireguard-go", "--prefix", NETNS_PREFIX])
    log = io.StringIO()
    assert benchreport.run(args, log) == 0, log.getvalue()
    out = tmp_path / "r"
    data = json.loads((out / "results.json").read_text())
    assert data["targets"] == [benchreport.RAW, "wireguard-go"]
    for target in data["targets"]:
        vals = data["values"][target]
        for key in ("tcp1", "tcp4", "udp64", "ping_min", "ping_avg"):
            assert len(vals[key]) == 1 and vals[key][0] > 0, (target, key)
        assert vals["ping_avg"][0] >= vals["ping_min"][0]
    assert data["values"]["wireguard-go"]["cpu_per_gb"][0] > 0
    assert "cpu_per_gb" not in data["values"][benchreport.RAW]
    report = (out / "report.md").read_text()
    assert "| raw veth |" in report and "| wireguard-go |" in report
    assert "wireguard-go v" in report  # version recorded
    for key in ("tcp1", "tcp4", "udp64", "cpu_per_gb"):
        png = out / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({key}.png)" in report
    assert "[  1/8" in log.getvalue()  # progress was shown
    assert _namespaces() == before


def test_stats_and_format() -> None:
    assert report._stats([3.0, 1.0, 2.0]) == (1.0, 2.0, 3.0)
    assert report._fmt([1.0, 2.0, 3.0], "Gbit/s") == "2.00 (1.00–3.00)"
    assert report._fmt(None, "ms") == "–"


def test_udp_ladder_bisects_between_pass_and_fail() -> None:
    """The search climbs the ladder, then narrows the step where loss began; a fake link that
    loses from 123 Mbit/s up stands in for iperf3."""
    tried: list[float] = []

    def trial(rate: float) -> tuple[float, bool]:
        tried.append(rate)
        return rate * 1.953, rate < 123     # "kpps received", "< 1 % lost"

    ladder = (50, 100, 140, 200)
    best = measure.highest_passing(ladder, 3, trial)
    assert tried[:3] == [50, 100, 140] and 200 not in tried
    mids = tried[3:]
    assert len(mids) == 3 and all(100 < m < 140 for m in mids)
    assert mids[0] == pytest.approx((100 * 140) ** 0.5)
    passed = [m for m in mids if m < 123]
    assert best == pytest.approx(max([100, *passed]) * 1.953)
    assert 100 * 1.953 < best < 123 * 1.953
    # nothing passes: 0; everything passes: the top of the ladder, no bisection
    assert measure.highest_passing(ladder, 3, lambda r: (r, False)) == 0
    tried.clear()
    assert measure.highest_passing((1, 2), 3, lambda r: (tried.append(r) or r, True)) == 2
    assert tried == [1, 2]


def test_ratios_to_other_daemons() -> None:
    """The report divides wgfast's medians by each other daemon's; its own variants and the
    raw link are not 'others'."""
    r = measure.Results(measure.Settings())
    r.targets = [benchreport.RAW, "wgfast", "wgfast-nooff", "wireguard-go"]
    r.values = {
        benchreport.RAW: {"tcp1": [10.0]},
        "wgfast": {"tcp1": [4.0, 5.0, 6.0], "udp64": [300.0], "cpu_per_gb": [2.0]},
        "wgfast-nooff": {"tcp1": [2.0]},
        "wireguard-go": {"tcp1": [1.0, 0.5, 0.9], "udp64": [100.0], "cpu_per_gb": [16.0]},
    }
    lines = report._ratios_to_others(r)
    got = [ln for ln in lines if ln.startswith("- ")]
    assert got == ["- wgfast ÷ wireguard-go: tcp1 5.56×, udp64 3.00×, cpu_per_gb 0.12×"]
    r.values.pop("wireguard-go")
    r.targets.remove("wireguard-go")
    assert report._ratios_to_others(r) == []
