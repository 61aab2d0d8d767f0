"""csrc/keypairs.c: receiver index -> keypair, current keypair, responder confirmation."""

from __future__ import annotations

import errno
import os
import random

import nacl.bindings as nb
import pytest

from wgfast.dataplane import Ring, ffi, init_aead, lib


@pytest.fixture
def dp():
    d = lib.wg_dp_new(8, 64, 1420)
    assert d != ffi.NULL
    for p in range(8):
        assert lib.wg_peer_add(d, p) == 0
    yield d
    lib.wg_dp_free(d)


def install(dp, peer: int, local: int, remote: int = 0, *, current: int = 1,
            created: float | None = None, key: bytes | None = None) -> int:
    k = key or os.urandom(32)
    return lib.wg_keypair_install(dp, peer, local, remote, k, k,
                                  lib.wg_now() if created is None else created, 1, current)


def current_of(dp, peer: int) -> int | None:
    out = ffi.new("uint32_t *")
    return int(out[0]) if lib.wg_keypair_current(dp, peer, out) == 0 else None


def test_install_current_remove(dp) -> None:
    assert current_of(dp, 1) is None
    assert install(dp, 1, 1000) == 0
    assert current_of(dp, 1) == 1000
    assert install(dp, 2, 2000, current=0) == 0
    assert current_of(dp, 2) is None        # "next" only
    assert lib.wg_keypair_remove(dp, 1000) == 0
    assert current_of(dp, 1) is None        # removing the current clears it
    assert lib.wg_keypair_remove(dp, 1000) == -errno.ENOENT


def test_duplicate_index_and_full(dp) -> None:
    assert install(dp, 0, 7) == 0
    assert install(dp, 1, 7) == -errno.EEXIST
    for i in range(63):
        assert install(dp, i % 8, 100 + i) == 0
    assert install(dp, 0, 99999) == -errno.ENOSPC
    assert lib.wg_keypair_remove(dp, 130) == 0
    assert install(dp, 0, 99999) == 0       # the freed slot is reused


def test_bad_arguments(dp) -> None:
    assert install(dp, 8, 1) < 0
    assert lib.wg_keypair_set_counter(dp, 424242, 5) == -errno.ENOENT
    assert lib.wg_keypair_current(dp, 8, ffi.NULL) < 0


@pytest.mark.parametrize("seed", range(5))
def test_many_random_indices(dp, seed: int) -> None:
    """Insert and delete at random; every index stays findable exactly while installed
    (this exercises backward-shift deletion in colliding probe runs)."""
    rng = random.Random(seed)
    live: dict[int, int] = {}
    pool = [rng.getrandbits(32) for _ in range(40)] + list(range(24))  # sequential collide
    for _ in range(3000):
        idx = rng.choice(pool)
        if idx in live:
            assert lib.wg_keypair_remove(dp, idx) == 0
            del live[idx]
        elif len(live) < 64:
            peer = rng.randrange(8)
            assert install(dp, peer, idx) == 0
            live[idx] = peer
        else:
            assert install(dp, 0, idx) == -errno.ENOSPC
        probe = rng.choice(pool)
        assert (lib.wg_keypair_set_counter(dp, probe, 0) == 0) is (probe in live)
    for idx in pool:
        assert (lib.wg_keypair_set_counter(dp, idx, 0) == 0) is (idx in live)


def _sealed_by_peer(key: bytes, receiver: int, counter: int, payload: bytes) -> bytes:
    nonce = bytes(4) + counter.to_bytes(8, "little")
    body = nb.crypto_aead_chacha20poly1305_ietf_encrypt(payload, None, nonce, key)
    header = bytes([4, 0, 0, 0]) + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little")
    return header + body


def pop_events(dp) -> list[tuple[int, int, int]]:
    evs = ffi.new("wg_event[]", 16)
    n = lib.wg_events_pop(dp, evs, ffi.NULL, 0, 16)
    return [(evs[i].type, evs[i].peer, evs[i].receiver) for i in range(n)]


def test_responder_promotion_raises_confirmed(dp) -> None:
    init_aead()
    old, new = os.urandom(32), os.urandom(32)
    assert install(dp, 3, 10, current=1, key=old) == 0
    assert install(dp, 3, 11, current=0, key=new) == 0
    assert current_of(dp, 3) == 10
    with Ring(4, 1500) as ring:
        # traffic under the old keypair confirms nothing
        ring.put_message(0, _sealed_by_peer(old, 10, 0, bytes(16)))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 1
        assert current_of(dp, 3) == 10 and pop_events(dp) == []
        # a forgery under the new index must not promote it
        bad = bytearray(_sealed_by_peer(new, 11, 0, bytes(16)))
        bad[-1] ^= 1
        ring.put_message(0, bytes(bad))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 0
        assert current_of(dp, 3) == 10 and pop_events(dp) == []
        # the first authentic message under the next keypair promotes it, once
        ring.put_message(0, _sealed_by_peer(new, 11, 0, bytes(16)))
        ring.put_message(1, _sealed_by_peer(new, 11, 1, bytes(16)))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 2, lib.wg_now()) == 2
        assert current_of(dp, 3) == 11
        assert pop_events(dp) == [(lib.WG_EV_CONFIRMED, 3, 11)]


def test_demoted_next_keypair_is_never_promoted(dp) -> None:
    """Issue 10, 4a: responder keypair N1 is "next" when our own initiation completes and K2
    is installed as current (Python moves N1 to previous).  The peer's first data under N1
    must not make C promote N1 over the newer K2 -- only the keypair that is still "next" may
    be promoted (kernel, wireguard-go)."""
    init_aead()
    n1, k2 = os.urandom(32), os.urandom(32)
    assert install(dp, 3, 21, current=0, key=n1) == 0          # N1: next (responder)
    assert install(dp, 3, 22, current=1, key=k2) == 0          # K2: current (initiator)
    assert current_of(dp, 3) == 22
    with Ring(4, 1500) as ring:
        ring.put_message(0, _sealed_by_peer(n1, 21, 0, bytes(16)))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 1   # still opens
        assert current_of(dp, 3) == 22 and pop_events(dp) == []
        # and a later next keypair is promoted as usual
        n3 = os.urandom(32)
        assert install(dp, 3, 23, current=0, key=n3) == 0
        ring.put_message(0, _sealed_by_peer(n3, 23, 0, bytes(16)))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 1
        assert current_of(dp, 3) == 23
        assert pop_events(dp) == [(lib.WG_EV_CONFIRMED, 3, 23)]


def test_removal_wipes_keys_behaviourally(dp) -> None:
    """After removal the index is unknown and a fresh install under it starts clean
    (new key, counter 0, empty replay window)."""
    init_aead()
    k1, k2 = os.urandom(32), os.urandom(32)
    assert install(dp, 0, 5, key=k1) == 0
    assert lib.wg_keypair_set_counter(dp, 5, 77) == 0
    with Ring(2, 1500) as ring:
        ring.put_message(0, _sealed_by_peer(k1, 5, 9, b"x" * 16))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 1
        assert lib.wg_keypair_remove(dp, 5) == 0
        ring.put_message(0, _sealed_by_peer(k1, 5, 10, b"x" * 16))
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 0
        assert ring.status[0] == lib.WG_DROP_NO_KEYPAIR
        assert install(dp, 0, 5, key=k2) == 0
        ring.put_message(0, _sealed_by_peer(k2, 5, 9, b"y" * 16))   # counter 9 again: fresh
        assert lib.wg_open_batch(dp, ring.ptr, 0, 1, lib.wg_now()) == 1
        ring.put_plaintext(1, b"z", peer=0)
        assert lib.wg_seal_batch(dp, ring.ptr, 1, 1, lib.wg_now()) == 1
        assert ring.counter[1] == 0
