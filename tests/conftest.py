"""Shared fixtures: root-only network-namespace topologies and the daemon implementations."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from wgfast.netns import WGFAST, WGFAST_NO_OFFLOADS, WIREGUARD_GO, Implementation, Topology

# Every namespace/interface a test creates starts with this prefix (must be unique per runner).
NETNS_PREFIX = os.environ.get("WGFAST_NETNS_PREFIX", "wgt")

IMPLEMENTATIONS: dict[str, Implementation] = {
    "wireguard-go": WIREGUARD_GO,
    "wgfast": WGFAST,
    "wgfast-nooff": WGFAST_NO_OFFLOADS,
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
