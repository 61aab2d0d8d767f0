"""csrc/ring.c and dataplane.Ring: slot layout and zero-copy numpy views."""

from __future__ import annotations

import os

import numpy as np
import pytest

from wgfast.dataplane import ADDR_DTYPE, Ring, ffi, init_aead, lib


def test_layout() -> None:
    with Ring(8, 1420) as r:
        assert r.slot_size % 64 == 0
        assert r.slot_size >= lib.WG_HEADROOM + 1420 + lib.WG_TAILROOM
        assert r.slot_size - 64 < lib.WG_HEADROOM + 1420 + lib.WG_TAILROOM
        base = int(ffi.cast("uintptr_t", lib.wg_ring_slot(r.ptr, 0)))
        assert base % 64 == 0
        for i in range(8):
            assert int(ffi.cast("uintptr_t", lib.wg_ring_slot(r.ptr, i))) == base + i * r.slot_size
        assert lib.wg_ring_slot(r.ptr, 8) == ffi.NULL
        assert r.addr.dtype == ADDR_DTYPE and r.addr.shape == (8,)


def test_bad_sizes() -> None:
    assert lib.wg_ring_new(0, 1420) == ffi.NULL
    with pytest.raises(ValueError):
        Ring(0, 1420)


def test_views_are_zero_copy() -> None:
    with Ring(4, 256) as r:
        c = r.ptr
        # C writes, numpy sees
        lib.wg_ring_slot(c, 2)[r.HEADROOM + 5] = 0xAB
        c.len[1], c.peer[1], c.receiver[1], c.counter[1], c.status[1] = 7, 3, 99, 2**63, 5
        c.addr[3].port = 51820
        assert r.slab[2, r.HEADROOM + 5] == 0xAB
        assert (r.len[1], r.peer[1], r.receiver[1], r.counter[1], r.status[1]) == (
            7, 3, 99, 2**63, 5)
        assert r.addr[3]["port"] == 51820
        # numpy writes, C sees
        r.slab[3, 0] = 0x42
        r.counter[0] = 12345
        r.addr[0]["family"] = 10
        assert lib.wg_ring_slot(c, 3)[0] == 0x42
        assert c.counter[0] == 12345 and c.addr[0].family == 10
        assert np.shares_memory(r.slab[0], r.slab)


def test_numpy_plaintext_is_what_c_seals() -> None:
    """Bytes written through numpy are what the batch seals; what C writes numpy reads."""
    init_aead()
    import nacl.bindings as nb

    dp = lib.wg_dp_new(2, 4, 1420)
    try:
        key = os.urandom(32)
        lib.wg_peer_add(dp, 0)
        assert lib.wg_keypair_install(dp, 0, 1, 2, key, key, lib.wg_now(), 1, 1) == 0
        with Ring(2, 1420) as r:
            payload = os.urandom(100)
            r.slab[0, r.HEADROOM:r.HEADROOM + 100] = np.frombuffer(payload, np.uint8)
            r.len[0], r.peer[0] = 100, 0
            assert lib.wg_seal_batch(dp, r.ptr, 0, 1, lib.wg_now()) == 1
            msg = r.message(0)
            assert len(msg) == 16 + 112 + 16
            nonce = bytes(4) + msg[8:16]
            assert nb.crypto_aead_chacha20poly1305_ietf_decrypt(msg[16:], None, nonce, key) == (
                payload + bytes(12))
    finally:
        lib.wg_dp_free(dp)


def test_close_is_idempotent() -> None:
    r = Ring(2, 64)
    r.close()
    r.close()
    with pytest.raises(ValueError):
        r.ptr  # noqa: B018
