"""Batch seal/open per AEAD backend against the plain C loop and a PyNaCl loop.

Rates come from pytest-benchmark medians and extra_info (bytes and messages per round);
bench/conftest.py prints GB/s, Mpps and the ratios."""

from __future__ import annotations

import os

import nacl.bindings as nb
import numpy as np
import pytest

from wgfast.dataplane import BACKENDS, Ring, available_backends, choose_backend, ffi, lib

SIZES = [64, 512, 1420, 8192]
BATCHES = [1, 16, 64, 128]
LOOP_N = 128
AVAILABLE = available_backends()
ROUNDS = 60


class Bench:
    def __init__(self) -> None:
        self.dp = lib.wg_dp_new(1, 4, 9000)
        self.ring = Ring(128, 8192)
        self.key = os.urandom(32)
        lib.wg_peer_add(self.dp, 0)
        self.install()

    def install(self) -> None:
        lib.wg_keypair_remove(self.dp, 1)
        lib.wg_keypair_install(self.dp, 0, 1, 1, self.key, self.key, lib.wg_now(), 0, 1)


@pytest.fixture(scope="module")
def world():
    w = Bench()
    yield w
    w.ring.close()
    lib.wg_dp_free(w.dp)


@pytest.fixture(scope="module", autouse=True)
def chosen(request):
    before = lib.wg_aead_selected()
    name = choose_backend()
    if getattr(request.config, "cache", None) is not None:
        request.config.cache.set("wgfast/chosen_backend", name)
    yield name
    lib.wg_aead_select(before)


def _info(benchmark, label: str, size: int, n: int) -> None:
    benchmark.extra_info.update(label=label, bytes=size * n, msgs=n)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", AVAILABLE)
def test_seal_batch(benchmark, world, name: str, size: int, batch: int) -> None:
    lib.wg_aead_select(BACKENDS[name])
    r, dp = world.ring, world.dp
    r.peer[:] = 0

    def setup():
        r.len[:batch] = size

    def run():
        return lib.wg_seal_batch(dp, r.ptr, 0, batch, 0.0)

    world.install()
    _info(benchmark, f"seal {name} {size} b{batch}", size, batch)
    assert benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2) == batch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", AVAILABLE)
def test_open_batch(benchmark, world, name: str, size: int, batch: int) -> None:
    lib.wg_aead_select(BACKENDS[name])
    r, dp = world.ring, world.dp
    world.install()
    r.peer[:] = 0
    r.len[:batch] = size
    assert lib.wg_seal_batch(dp, r.ptr, 0, batch, 0.0) == batch
    pristine = r.slab[:batch].copy()
    lens = r.len[:batch].copy()

    def setup():
        r.slab[:batch] = pristine
        r.len[:batch] = lens
        world.install()     # a fresh replay window: the same counters open again

    def run():
        return lib.wg_open_batch(dp, r.ptr, 0, batch, 0.0)

    _info(benchmark, f"open {name} {size} b{batch}", size, batch)
    assert benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2) == batch
    assert np.all(r.status[:batch] == 0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", AVAILABLE)
def test_plain_c_loop(benchmark, name: str, size: int) -> None:
    key = os.urandom(32)
    buf = ffi.new("uint8_t[]", size + 16)
    _info(benchmark, f"loop {name} {size}", size, LOOP_N)
    benchmark.pedantic(lib.wg_aead_seal_loop, args=(BACKENDS[name], key, buf, size, LOOP_N),
                       rounds=ROUNDS, warmup_rounds=2)


@pytest.mark.parametrize("size", SIZES)
def test_pynacl_loop(benchmark, size: int) -> None:
    key = os.urandom(32)
    msg = os.urandom(size)
    nonces = [bytes(4) + i.to_bytes(8, "little") for i in range(LOOP_N)]
    enc = nb.crypto_aead_chacha20poly1305_ietf_encrypt

    def run():
        for n in nonces:
            enc(msg, None, n, key)

    _info(benchmark, f"pynacl {size}", size, LOOP_N)
    benchmark.pedantic(run, rounds=20, warmup_rounds=1)
