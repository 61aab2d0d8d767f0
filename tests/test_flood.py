"""End to end, in namespaces: a legitimate handshake completes while the victim's listen port
is flooded -- with garbage initiations (mac1 invalid: dropped in C), and with initiations that
carry a valid mac1 (they pass the intake and put the victim under load: the cookie path).
The waits are generous bounds, not latency assertions; the figures are in bench/bench_flood.py.
"""

from __future__ import annotations

import pytest
from support import require_impl

from wgfast.lab.flood import run_flood
from wgfast.lab.netns import Topology
from wgfast.messages import REKEY_TIMEOUT

MB = 1024


@pytest.mark.parametrize("mode,rate", [("garbage", 200_000), ("mac1", 50_000)])
def test_handshake_completes_under_flood(topo: Topology, mode: str, rate: int) -> None:
    impl = require_impl("wgfast")
    r = run_flood(topo, impl, mode, rate, wait=4 * REKEY_TIMEOUT, hold=3.0)
    assert r.sent > 0, "the flooder sent nothing"
    assert r.first_handshake is not None, f"no handshake under a {mode} flood: {r}"
    # It completed through the flood, not after it.
    assert r.flood_alive, r
    # The responder saw its keypair confirmed by data: no control flag was lost.
    assert r.confirmed, r
    assert r.rss_growth_kb < 50 * MB, r
