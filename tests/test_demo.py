"""`wgfast demo` end to end (with wireguard-go until wgfast-daemon exists)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from support import NETNS_PREFIX, netns_unavailable, require_impl

from wgfast.lab import cli, demo

ROOT = Path(__file__).resolve().parent.parent


def _namespaces() -> str:
    # Only ours: other test runs on the machine may come and go meanwhile.
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return "\n".join(sorted(ln for ln in out.splitlines() if ln.startswith(NETNS_PREFIX)))


@pytest.mark.parametrize("impl", ["wgfast", "wireguard-go"])
def test_demo_runs_and_cleans_up(impl: str) -> None:
    if netns_unavailable():
        pytest.skip(netns_unavailable() or "")
    require_impl(impl)
    before = _namespaces()
    out = io.StringIO()
    p = __import__("argparse").ArgumentParser()
    demo.add_arguments(p)
    rc = demo.run(p.parse_args(["--impl", impl, "--seconds", "1", "--prefix", NETNS_PREFIX]), out)
    text = out.getvalue()
    assert rc == 0, text
    assert "handshake completed" in text and "done: tunnel works" in text
    assert "5/5 replies" in text
    if "throughput:" in text:
        gbps = float(text.split("throughput:")[1].split()[0])
        assert gbps > 0
    assert "latest handshake" in text  # the `wg show` section
    assert _namespaces() == before


def test_demo_console_script_reports_unavailable_daemon() -> None:
    rc = cli.main(["demo", "--impl", "/nonexistent/daemon", "--prefix", NETNS_PREFIX])
    assert rc == 2


def test_cli_help_lists_subcommands() -> None:
    res = subprocess.run([sys.executable, "-m", "wgfast.lab.cli", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "demo" in res.stdout and "bench" in res.stdout
