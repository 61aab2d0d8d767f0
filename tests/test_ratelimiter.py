"""Per-source handshake token bucket (kernel ratelimiter: 20/s, burst 5, IPv6 by /64)."""

from __future__ import annotations

import pytest

from wgfast.ratelimiter import RateLimiter, source_key

A = bytes([192, 0, 2, 1])
B = bytes([192, 0, 2, 2])


def test_burst_then_rate():
    rl = RateLimiter()
    assert [rl.allow(A, 100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.allow(B, 100.0)                     # other sources unaffected
    assert not rl.allow(A, 100.04)                # 40 ms < one token (50 ms)
    assert rl.allow(A, 100.06) and not rl.allow(A, 100.06)
    # over 10 s at 100 packets/s only ~20/s pass
    ok = sum(rl.allow(A, 101.0 + k / 100) for k in range(1000))
    assert 195 <= ok <= 206


def test_ipv6_keyed_by_64_and_mapped_v4():
    a = bytes.fromhex("20010db8000000010000000000000001")
    b = bytes.fromhex("20010db800000001ffffffffffffffff")
    assert source_key(a) == source_key(b) == a[:8]
    assert source_key(bytes(10) + b"\xff\xff" + A) == A
    rl = RateLimiter()
    assert sum(rl.allow(a if k % 2 else b, 5.0) for k in range(10)) == 5
    with pytest.raises(ValueError):
        source_key(b"abc")


def test_bounded_and_collected():
    rl = RateLimiter(max_entries=10)
    for k in range(10):
        assert rl.allow(bytes([10, 0, 0, k]), 1.0)
    assert not rl.allow(bytes([10, 0, 1, 0]), 1.5)   # full of fresh entries
    assert len(rl) == 10
    assert rl.allow(bytes([10, 0, 1, 0]), 3.0)        # old ones collected
    assert len(rl) == 1
