"""Shared fixtures: root-only network-namespace topologies and the daemon implementations."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import settings

from wgfast.lab.netns import (
    WGFAST,
    WGFAST_NO_OFFLOADS,
    WGFAST_PIPELINE,
    WIREGUARD_GO,
    Implementation,
    Topology,
)

# CI machines are shared and 2-core: a slow example is load, not a bug, so no per-example deadline.
settings.register_profile("wgfast", deadline=None)
settings.load_profile("wgfast")

# Every namespace/interface a test creates starts with this prefix (must be unique per runner).
NETNS_PREFIX = os.environ.get("WGFAST_NETNS_PREFIX", "wgt")

IMPLEMENTATIONS: dict[str, Implementation] = {
    "wireguard-go": WIREGUARD_GO,
    "wgfast": WGFAST,
    "wgfast-nooff": WGFAST_NO_OFFLOADS,
    "wgfast-pipeline": WGFAST_PIPELINE,
}


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    for tool in ("ip", "wg", "ping"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (see install.sh)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def require_impl(name: str) -> Implementation:
    """The implementation, or skip the test with the reason it cannot run here."""
    impl = IMPLEMENTATIONS[name]
    reason = impl.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return impl


@pytest.fixture
def topo() -> Iterator[Topology]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with Topology(NETNS_PREFIX) as t:
        yield t


def needs_tun(*tools: str) -> pytest.MarkDecorator:
    """Skip unless we are root with /dev/net/tun, iproute2 and the named tools."""
    missing = [t for t in ("ip", *tools) if shutil.which(t) is None]
    reason = ("needs root" if os.geteuid() != 0 else
              "needs /dev/net/tun" if not os.path.exists("/dev/net/tun") else
              f"needs {', '.join(missing)}" if missing else "")
    return pytest.mark.skipif(bool(reason), reason=reason or "ok")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=check)


def inet_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum, written independently of the C code it checks."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes) -> int:
    """The Internet checksum to store (0 when data already carries a valid one)."""
    return ~inet_sum(data) & 0xFFFF

