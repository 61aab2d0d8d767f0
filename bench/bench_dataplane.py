"""The whole in-memory data plane: seal on one side, open on the other, through one ring.

Two wg_dp handles hold the two ends of one session (A's sending key is B's receiving key).
A round seals a batch of 1,420-byte packets on A (pad, number, seal in place) and opens it on
B (index lookup, replay window, open in place) without moving a byte: the message B opens is
the one A sealed, in the same slot.  Baseline in the same run: the plain C loop of the same
AEAD backend sealing the same bytes twice (what the crypto alone costs for seal + open)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from wgfast.dataplane import BACKENDS, Ring, choose_backend, ffi, lib

SIZES = [64, 1420]
BATCH = 128


class Pair:
    def __init__(self) -> None:
        self.a = lib.wg_dp_new(1, 4, 1420)
        self.b = lib.wg_dp_new(1, 4, 1420)
        k1, k2 = os.urandom(32), os.urandom(32)
        now = lib.wg_now()
        for dp in (self.a, self.b):
            lib.wg_peer_add(dp, 0)
        # A sends with k1 to B's local index 2; B receives with k1 under index 2.
        assert lib.wg_keypair_install(self.a, 0, 1, 2, k1, k2, now, 1, 1) == 0
        assert lib.wg_keypair_install(self.b, 0, 2, 1, k2, k1, now, 0, 1) == 0
        self.ring = Ring(BATCH, 1420)

    def close(self) -> None:
        self.ring.close()
        lib.wg_dp_free(self.a)
        lib.wg_dp_free(self.b)


@pytest.fixture(scope="module")
def pair():
    p = Pair()
    yield p
    p.close()


@pytest.fixture(scope="module", autouse=True)
def backend():
    before = lib.wg_aead_selected()
    name = choose_backend()
    yield name
    lib.wg_aead_select(before)


@pytest.mark.parametrize("size", SIZES)
def test_seal_open_roundtrip(benchmark, pair: Pair, backend: str, size: int) -> None:
    r = pair.ring
    r.peer[:] = 0
    r.slab[:, 16:16 + size] = np.frombuffer(os.urandom(size), np.uint8)

    def round_trip() -> int:
        r.len[:] = size
        r.status[:] = 0
        lib.wg_seal_batch(pair.a, r.ptr, 0, BATCH, lib.wg_now())
        return lib.wg_open_batch(pair.b, r.ptr, 0, BATCH, lib.wg_now())

    assert round_trip() == BATCH              # every message sealed on A opens on B
    benchmark.extra_info.update(label=f"dataplane {backend} {size}", bytes=size * BATCH,
                                msgs=BATCH)
    ok = benchmark.pedantic(round_trip, rounds=200, iterations=1, warmup_rounds=5)
    assert ok == BATCH


@pytest.mark.parametrize("size", SIZES)
def test_crypto_only_baseline(benchmark, backend: str, size: int) -> None:
    key = os.urandom(32)
    buf = ffi.new("uint8_t[]", size + 16)
    b = BACKENDS[backend]

    def two_loops() -> None:
        lib.wg_aead_seal_loop(b, key, buf, size, BATCH)
        lib.wg_aead_seal_loop(b, key, buf, size, BATCH)

    benchmark.extra_info.update(label=f"crypto-only x2 {backend} {size}", bytes=size * BATCH,
                                msgs=BATCH)
    benchmark.pedantic(two_loops, rounds=200, iterations=1, warmup_rounds=5)
