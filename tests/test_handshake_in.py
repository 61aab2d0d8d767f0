"""handshake_in.c, cookie.c, ratelimiter.c: the intake of handshake messages in C, against its
Python twins (wgfast/cookie.py, wgfast/ratelimiter.py) -- no I/O: messages are fed as the
receive loop feeds them (wg_hs_receive) and popped as the device pops them."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random

import pytest

from wgfast.cookie import CookieChecker, CookieState
from wgfast.dataplane import DataPlane, addr_to_c, check_handshake_crypto, ffi, lib
from wgfast.messages import MAX_STAGED_PACKETS, parse_cookie_reply
from wgfast.noise import StaticIdentity
from wgfast.ratelimiter import RateLimiter

QUEUED = lib.WG_DROP_HANDSHAKE
T0 = 1000.0

pytestmark = pytest.mark.skipif(check_handshake_crypto() is not None,
                                reason=str(check_handshake_crypto()))


@pytest.fixture(name="dev")
def dev_fixture():
    """A data plane with our identity's keys installed, and the peer's CookieState for it."""
    me = StaticIdentity.generate()
    checker = CookieChecker(me.public)
    dp = DataPlane(max_peers=2)
    dp.set_handshake_keys(checker.mac1_key, checker.cookie_key)
    return dp, me, checker


def initiation(state: CookieState, now: float = T0, sender: int | None = None) -> bytes:
    """A 148-byte initiation (random body) with the MACs a real initiator would add."""
    idx = (sender if sender is not None else random.getrandbits(32)).to_bytes(4, "little")
    return state.add_macs(bytes([1, 0, 0, 0]) + idx + os.urandom(140), now)


def test_blake2s_mac_matches_hashlib() -> None:
    out = ffi.new("uint8_t[16]")
    for keylen in (1, 16, 32):
        for size in (0, 1, 64, 65, 116, 1000):
            key, data = os.urandom(keylen), os.urandom(size)
            assert lib.wg_blake2s_mac(key, keylen, data, size, out) == 0
            assert bytes(out) == hashlib.blake2s(data, key=key, digest_size=16).digest()
    assert lib.wg_blake2s_mac(bytes(33), 33, b"", 0, out) == -1       # BLAKE2s keys <= 32


def test_bad_mac1_is_a_counted_drop_never_queued(dev) -> None:
    dp, me, _ = dev
    peer = CookieState(me.public)
    src = ("192.0.2.1", 4000)
    for _ in range(20):
        assert dp.receive_handshake(bytes([1, 0, 0, 0]) + os.urandom(144), src, T0) == \
            lib.WG_DROP_MAC1
    other = CookieState(StaticIdentity.generate().public)     # mac1 for someone else
    assert dp.receive_handshake(initiation(other), src, T0) == lib.WG_DROP_MAC1
    assert int(dp.drops[lib.WG_DROP_MAC1]) == 21 and dp.pop_handshakes() == []
    good = initiation(peer)
    assert dp.receive_handshake(good, src, T0) == QUEUED
    assert dp.pop_handshakes() == [(good, src, True)]
    # a response too (92 bytes); without a private key nothing passes
    resp = peer.add_macs(bytes([2, 0, 0, 0]) + os.urandom(88), T0)
    assert dp.receive_handshake(resp, src, T0) == QUEUED
    dp.set_handshake_keys(None, None)
    assert dp.pop_handshakes() == []                          # void under the old key
    assert dp.receive_handshake(initiation(peer), src, T0) == lib.WG_DROP_MAC1


def test_under_load_cookie_round_trip(dev) -> None:
    """Under load, a valid mac1 without mac2 earns a cookie reply (made in C, with
    libsodium's XChaCha20-Poly1305); the initiator's Python CookieState takes it, and its
    next initiation (mac2 under that cookie) passes -- from the same source only."""
    dp, me, _ = dev
    lib.wg_hs_force_load(dp.handle, T0 + 100)
    assert dp.under_load(T0)
    peer = CookieState(me.public)
    src = ("198.51.100.7", 51820)
    first = initiation(peer, sender=0xABCD)
    assert dp.receive_handshake(first, src, T0) == lib.WG_DROP_COOKIE
    assert dp.pop_handshakes() == []
    reply = ffi.new("uint8_t[64]")
    addr = ffi.new("wg_addr *")
    addr_to_c(src, addr)
    assert lib.wg_hs_cookie_reply(dp.handle, first, 148, addr, T0 + 0.1, reply) == 0
    parsed = parse_cookie_reply(bytes(reply))
    assert parsed.receiver == 0xABCD
    assert peer.consume_reply(parsed, T0 + 0.1)
    second = initiation(peer, T0 + 0.2)
    assert dp.receive_handshake(second, ("198.51.100.7", 51821), T0 + 0.2) == \
        lib.WG_DROP_COOKIE                                    # cookie is per IP || port
    assert dp.receive_handshake(second, src, T0 + 0.3) == QUEUED
    assert [m for m, _, _ in dp.pop_handshakes()] == [second]


def test_under_load_rate_limit_per_source(dev) -> None:
    """Under load a source passes at most the token bucket's burst at once, and a /64 is one
    source; another source is unaffected."""
    dp, me, _ = dev
    lib.wg_hs_force_load(dp.handle, T0 + 100)
    peer = CookieState(me.public)
    verdicts = [dp.receive_handshake(initiation(peer), (f"2001:db8::{k}", 1), T0)
                for k in range(1, 9)]
    assert verdicts == [lib.WG_DROP_COOKIE] * 5 + [lib.WG_DROP_RATELIMIT] * 3
    assert dp.receive_handshake(initiation(peer), ("2001:db8:1::1", 1), T0) == \
        lib.WG_DROP_COOKIE


def test_rate_limiter_matches_python_twin(dev) -> None:
    dp = dev[0]
    py = RateLimiter()
    rnd = random.Random(7)
    sources = ["10.0.0.1", "10.0.0.2", "::ffff:10.0.0.1", "2001:db8::1", "2001:db8::2",
               "2001:db8:0:1::1"]
    addr = ffi.new("wg_addr *")
    now = T0
    for _ in range(3000):
        now += rnd.choice((0.0, 0.001, 0.01, 0.05, 0.3, 1.5))
        s = rnd.choice(sources)
        addr_to_c((s, 9), addr)
        want = py.allow(ipaddress.ip_address(s).packed, now)
        assert bool(lib.wg_hs_ratelimit(dp.handle, addr, now)) is want, (s, now)


def test_one_source_fills_only_its_share(dev) -> None:
    """A flood from one source (valid mac1) fills its own bucket of the queue; legitimate
    messages from other sources are still queued and come out before the flood's backlog.
    Sources share a bucket by a keyed hash (1 in 64), so a few of eight may collide with the
    flooder's."""
    dp, me, _ = dev
    peer = CookieState(me.public)
    flood = ("203.0.113.9", 7777)
    got = [dp.receive_handshake(initiation(peer), flood, T0) for _ in range(100)]
    assert got.count(QUEUED) == 16 and got.count(lib.WG_DROP_EVENTS_FULL) == 84
    assert not dp.under_load(T0)
    legit = [initiation(peer) for _ in range(8)]
    queued = [m for k, m in enumerate(legit)
              if dp.receive_handshake(m, (f"192.0.2.{50 + k}", 51820), T0) == QUEUED]
    assert len(queued) >= 6
    order = [m for m, _, _ in dp.pop_handshakes(200)]
    assert len(order) == 16 + len(queued) and set(queued) <= set(order)
    # Round robin: every legitimate message is out while most of the flood still waits.
    assert max(order.index(m) for m in queued) < len(order) - 8


def test_under_load_when_the_queue_is_over_an_eighth_full(dev) -> None:
    """The kernel's definition: more than 1/8 of the handshake queue in use; the verdict
    lasts a second after it was last true."""
    dp, me, _ = dev
    peer = CookieState(me.public)
    k = 0
    while not dp.under_load(T0):
        assert dp.receive_handshake(initiation(peer), (f"10.1.{k // 250}.{k % 250}", k + 1),
                                    T0) in (QUEUED, lib.WG_DROP_EVENTS_FULL)
        k += 1
        assert k < 2000
    assert int(lib.wg_hs_queued(dp.handle)) > 1024 // 8
    # now a message without mac2 gets a cookie instead of a place in the queue
    assert dp.receive_handshake(initiation(peer), ("192.0.2.99", 1), T0) == lib.WG_DROP_COOKIE
    while dp.pop_handshakes(64):
        pass
    assert dp.under_load(T0 + 0.5) and not dp.under_load(T0 + 1.5)


def test_control_flags_never_overflow() -> None:
    """Control flags are per peer: raised for many peers, many times over, they are collected
    once per peer in bounded slices and none is lost (the old single event ring dropped them
    once full).  NEED_HANDSHAKE comes from sealing on a keypair past REKEY_AFTER_MESSAGES,
    CONFIRMED from the first data under a responder's next keypair."""
    import nacl.bindings as nb

    from wgfast.dataplane import Ring
    n = 1500
    dp = DataPlane(max_peers=n, max_keypairs=2 * n + 4)
    key = os.urandom(32)
    for p in range(n):
        dp.peer_add(p)
        dp.set_endpoint(p, ("192.0.2.1", 1))
        dp.keypair_install(p, 10 * p + 1, 1, key, key, T0, initiator=True, current=True)
        lib.wg_keypair_set_counter(dp.handle, 10 * p + 1, 1 << 60)
        dp.keypair_install(p, 10 * p + 2, 2, key, key, T0, initiator=False, current=False)
    with Ring(128, 1500) as r:
        for _ in range(3):                                # raised three times over
            for start in range(0, n, 128):
                k = min(128, n - start)
                for i in range(k):
                    r.put_plaintext(i, b"p", start + i)
                lib.wg_seal_batch(dp.handle, r.ptr, 0, k, T0 + 5)
        for start in range(0, n, 128):
            k = min(128, n - start)
            for i in range(k):
                ct = nb.crypto_aead_chacha20poly1305_ietf_encrypt(bytes(16), None, bytes(12), key)
                idx = 10 * (start + i) + 2
                r.put_message(i, bytes([4, 0, 0, 0]) + idx.to_bytes(4, "little") + bytes(8) + ct)
            assert lib.wg_open_batch(dp.handle, r.ptr, 0, k, T0 + 5) == k
    got: dict[int, tuple[int, int]] = {}
    while batch := dp.collect_control(256):
        assert len(batch) <= 256
        for peer, flags, conf in batch:
            assert peer not in got
            got[peer] = (flags, conf)
    both = lib.WG_CTL_NEED_HANDSHAKE | lib.WG_CTL_CONFIRMED
    assert got == {p: (both, 10 * p + 2) for p in range(n)}
    assert all(dp.keypair_current(p) == 10 * p + 2 for p in range(n))


def test_staged_packets_capped_per_peer_and_dropped_on_removal() -> None:
    assert lib.WG_MAX_STAGED == MAX_STAGED_PACKETS          # C and messages.py agree
    dp = DataPlane(max_peers=600)
    for p in (0, 599):
        dp.peer_add(p)
        for k in range(lib.WG_MAX_STAGED + 3):
            dp.stage(p, k.to_bytes(2, "big") * (k + 1))       # each at its own length
    assert dp.staged_count(0) == dp.staged_count(599) == lib.WG_MAX_STAGED
    assert int(dp.drops[lib.WG_DROP_STAGED]) == 6
    assert int(lib.wg_stage_total(dp.handle)) == 2 * lib.WG_MAX_STAGED
    dp.peer_remove(599)
    assert dp.staged_count(599) == 0
    assert dp.drop_staged(0) == lib.WG_MAX_STAGED and int(lib.wg_stage_total(dp.handle)) == 0


def test_python_fallback_checks_the_macs_as_c_does(dev, monkeypatch) -> None:
    """When libcrypto has no BLAKE2SMAC, C queues messages unverified and the device checks
    them with its Python twins (Device._check_macs): the same verdicts as C's intake."""
    from wgfast.device import Device

    dp, me, checker = dev
    d = Device("h6unused")             # never opened: only the checking half is used
    d.dp, d.checker = dp, checker
    sent: list[bytes] = []
    monkeypatch.setattr(d, "_sendto", lambda data, ep: sent.append(data) or True)
    peer = CookieState(me.public)
    src = ("192.0.2.8", 5000)
    assert d._check_macs(initiation(peer), src, T0)
    assert not d._check_macs(bytes([1, 0, 0, 0]) + os.urandom(144), src, T0)
    assert d.handshake_drops == 1 and sent == []
    lib.wg_hs_force_load(dp.handle, T0 + 100)
    first = initiation(peer)
    assert not d._check_macs(first, src, T0)           # no mac2 under load: a cookie
    [reply] = sent
    assert peer.consume_reply(parse_cookie_reply(reply), T0)
    assert d._check_macs(initiation(peer, T0 + 0.1), src, T0 + 0.1)
