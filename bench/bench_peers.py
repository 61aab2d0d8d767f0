"""The configuration path in pieces, in process (no TUN, no socket): parsing a `set` of N
peers (each with a /32, a /128 and an endpoint), applying it, and producing the `get` reply.
The whole path through `wg setconf` in a namespace is bench/bench_scale.py.

    python3 -m pytest bench/bench_peers.py
"""

from __future__ import annotations

import os

import pytest

from wgfast.dataplane import DataPlane
from wgfast.device import Device
from wgfast.uapi import parse_set

N = 10_000


def request(n: int = N) -> str:
    out = ["replace_peers=true"]
    for i in range(n):
        out += [f"public_key={os.urandom(32).hex()}",
                f"endpoint=192.0.2.{i % 250 + 1}:{1024 + i % 60000}",
                "replace_allowed_ips=true",
                f"allowed_ip=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32",
                f"allowed_ip=fd00::{i >> 16 & 0xffff:x}:{i & 0xffff:x}/128"]
    return "\n".join(out)


def device() -> Device:
    dev = Device("unused")
    dev.dp = DataPlane()
    dev.dp.on_grow.append(dev._tables_grew)
    dev._tables_grew()
    return dev


@pytest.fixture(scope="module")
def text() -> str:
    return request()


def test_parse_set_10k(benchmark, text: str) -> None:
    req = benchmark(parse_set, text)
    assert len(req.peers) == N


def test_apply_10k(benchmark, text: str) -> None:
    def setup():
        return (device(), parse_set(text)), {}

    def run(dev: Device, req) -> Device:
        dev._apply(req)
        return dev

    benchmark.pedantic(run, setup=setup, rounds=5)


def test_get_10k(benchmark, text: str) -> None:
    dev = device()
    dev._apply(parse_set(text))
    n = benchmark(lambda: sum(len(c) for c in dev.uapi_get_chunks()))
    assert n > N * 300


def test_syncconf_one_change_in_10k(benchmark, text: str) -> None:
    """What the daemon does for `wg syncconf` that changes one peer: one small set."""
    dev = device()
    dev._apply(parse_set(text))
    key = next(iter(dev.table.ids))
    req = f"public_key={key.hex()}\nreplace_allowed_ips=true\nallowed_ip=10.200.0.1/32"
    benchmark(lambda: dev._apply(parse_set(req)))
