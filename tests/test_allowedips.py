"""csrc/allowedips.c, allowedips_trie.c: the longest-prefix trie against a naive twin (a dict of
prefixes)."""

from __future__ import annotations

import errno
import ipaddress
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgfast.dataplane import ffi, lib

MAX_PEERS = 64
BITS = {2: 32, 10: 128}


class Naive:
    """The twin: longest match by scanning every prefix."""

    def __init__(self) -> None:
        self.prefixes: dict[tuple[int, int, int], int] = {}

    @staticmethod
    def mask(bits: int, cidr: int) -> int:
        return ((1 << cidr) - 1) << (bits - cidr)

    def insert(self, fam: int, addr: int, cidr: int, peer: int) -> None:
        bits = BITS[fam]
        self.prefixes[(fam, addr & self.mask(bits, cidr), cidr)] = peer

    def remove(self, fam: int, addr: int, cidr: int) -> bool:
        key = (fam, addr & self.mask(BITS[fam], cidr), cidr)
        return self.prefixes.pop(key, None) is not None

    def remove_peer(self, peer: int) -> None:
        self.prefixes = {k: v for k, v in self.prefixes.items() if v != peer}

    def lookup(self, fam: int, addr: int) -> int:
        bits, best, best_cidr = BITS[fam], -1, -1
        for (f, net, cidr), peer in self.prefixes.items():
            if f == fam and cidr > best_cidr and addr & self.mask(bits, cidr) == net:
                best, best_cidr = peer, cidr
        return best


def ab(fam: int, addr: int) -> bytes:
    return addr.to_bytes(BITS[fam] // 8, "big")


@pytest.fixture
def dp() -> Iterator[object]:
    d = lib.wg_dp_new(MAX_PEERS, 16, 1420)
    assert d != ffi.NULL
    yield d
    lib.wg_dp_free(d)


def ins(dp: object, fam: int, addr: int, cidr: int, peer: int) -> int:
    return lib.wg_aip_insert(dp, fam, ab(fam, addr), cidr, peer)


def look(dp: object, fam: int, addr: int) -> int:
    return lib.wg_aip_lookup(dp, fam, ab(fam, addr))


def listed(dp: object, fam: int, peer: int = 0xFFFFFFFF) -> set[tuple[int, int]]:
    size = BITS[fam] // 8
    n = lib.wg_aip_list(dp, fam, peer, ffi.NULL, ffi.NULL, 0)
    addrs = ffi.new("uint8_t[]", max(n, 1) * size)
    cidrs = ffi.new("uint8_t[]", max(n, 1))
    assert lib.wg_aip_list(dp, fam, peer, addrs, cidrs, n) == n
    raw = bytes(ffi.buffer(addrs, n * size))
    return {(int.from_bytes(raw[i * size:(i + 1) * size], "big"), cidrs[i]) for i in range(n)}


def v4(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def v6(s: str) -> int:
    return int(ipaddress.IPv6Address(s))


def test_basic_longest_match(dp: object) -> None:
    assert ins(dp, 2, v4("10.0.0.0"), 8, 1) == 0
    assert ins(dp, 2, v4("10.1.0.0"), 16, 2) == 0
    assert ins(dp, 2, v4("10.1.2.3"), 32, 3) == 0
    assert look(dp, 2, v4("10.9.9.9")) == 1
    assert look(dp, 2, v4("10.1.9.9")) == 2
    assert look(dp, 2, v4("10.1.2.3")) == 3
    assert look(dp, 2, v4("10.1.2.4")) == 2
    assert look(dp, 2, v4("11.0.0.0")) == -1
    # The other family is a separate trie.
    assert look(dp, 10, 0) == -1


def test_default_routes(dp: object) -> None:
    assert ins(dp, 2, v4("1.2.3.4"), 0, 5) == 0       # masked: 0.0.0.0/0
    assert ins(dp, 10, v6("2001:db8::1"), 0, 6) == 0
    assert look(dp, 2, v4("255.255.255.255")) == 5
    assert look(dp, 10, v6("::1")) == 6
    assert listed(dp, 2) == {(0, 0)}
    assert ins(dp, 10, v6("2001:db8::1"), 128, 7) == 0
    assert look(dp, 10, v6("2001:db8::1")) == 7
    assert look(dp, 10, v6("2001:db8::2")) == 6
    assert lib.wg_aip_remove(dp, 2, ab(2, 0), 0) == 0
    assert look(dp, 2, v4("8.8.8.8")) == -1


def test_insert_masks_address(dp: object) -> None:
    assert ins(dp, 2, v4("192.168.77.99"), 20, 1) == 0
    assert listed(dp, 2, 1) == {(v4("192.168.64.0"), 20)}
    assert ins(dp, 10, v6("2001:db8:ffff:ffff::1"), 33, 2) == 0
    assert listed(dp, 10, 2) == {(v6("2001:db8:8000::"), 33)}


def test_existing_prefix_moves_to_new_peer(dp: object) -> None:
    assert ins(dp, 2, v4("10.0.0.0"), 24, 1) == 0
    assert ins(dp, 2, v4("10.0.0.7"), 24, 2) == 0      # same prefix after masking
    assert look(dp, 2, v4("10.0.0.1")) == 2
    assert listed(dp, 2, 1) == set()
    assert listed(dp, 2, 2) == {(v4("10.0.0.0"), 24)}
    assert lib.wg_aip_nodes(dp, 2) == 1


def test_bad_arguments(dp: object) -> None:
    assert ins(dp, 2, 0, 33, 1) == -errno.EINVAL
    assert ins(dp, 10, 0, 129, 1) == -errno.EINVAL
    assert lib.wg_aip_insert(dp, 7, b"\0" * 16, 8, 1) == -errno.EINVAL
    assert ins(dp, 2, 0, 8, MAX_PEERS) == -errno.EINVAL
    assert lib.wg_aip_remove(dp, 2, b"\0" * 4, 33) == -errno.EINVAL
    assert lib.wg_aip_remove(dp, 3, b"\0" * 4, 8) == -errno.EINVAL
    assert lib.wg_aip_lookup(dp, 3, b"\0" * 16) == -1
    assert lib.wg_aip_list(dp, 3, 0, ffi.NULL, ffi.NULL, 0) == -errno.EINVAL
    assert lib.wg_aip_nodes(dp, 2) == 0


def test_remove_exact_prefix_only(dp: object) -> None:
    assert ins(dp, 2, v4("10.0.0.0"), 8, 1) == 0
    assert ins(dp, 2, v4("10.0.0.0"), 16, 2) == 0
    assert lib.wg_aip_remove(dp, 2, ab(2, v4("10.0.0.0")), 12) == -errno.ENOENT
    assert lib.wg_aip_remove(dp, 2, ab(2, v4("11.0.0.0")), 8) == -errno.ENOENT
    assert lib.wg_aip_remove(dp, 2, ab(2, v4("10.0.0.0")), 16) == 0
    assert look(dp, 2, v4("10.0.1.1")) == 1
    assert lib.wg_aip_remove(dp, 2, ab(2, v4("10.0.0.0")), 16) == -errno.ENOENT
    assert lib.wg_aip_nodes(dp, 2) == 1


def test_branch_point_is_not_a_prefix(dp: object) -> None:
    # 10.0.0.0/24 and 10.0.1.0/24 share a /23 branch point that holds no peer.
    assert ins(dp, 2, v4("10.0.0.0"), 24, 1) == 0
    assert ins(dp, 2, v4("10.0.1.0"), 24, 2) == 0
    assert lib.wg_aip_nodes(dp, 2) == 3
    assert lib.wg_aip_remove(dp, 2, ab(2, v4("10.0.0.0")), 23) == -errno.ENOENT
    assert look(dp, 2, v4("10.0.2.0")) == -1
    assert lib.wg_aip_remove(dp, 2, ab(2, v4("10.0.0.0")), 24) == 0
    assert lib.wg_aip_nodes(dp, 2) == 1       # the branch point was pruned
    assert look(dp, 2, v4("10.0.1.9")) == 2


def test_remove_peer_and_peer_remove(dp: object) -> None:
    assert ins(dp, 2, v4("10.0.0.0"), 8, 1) == 0
    assert ins(dp, 2, v4("10.1.0.0"), 16, 2) == 0
    assert ins(dp, 10, v6("fd00::"), 8, 1) == 0
    assert ins(dp, 10, v6("fd00::1"), 128, 2) == 0
    lib.wg_aip_remove_peer(dp, 1)
    assert look(dp, 2, v4("10.2.0.0")) == -1
    assert look(dp, 2, v4("10.1.0.0")) == 2
    assert look(dp, 10, v6("fd00::2")) == -1
    assert look(dp, 10, v6("fd00::1")) == 2
    # wg_peer_remove (dataplane.c) drops the peer's allowed IPs too.
    assert lib.wg_peer_add(dp, 2) == 0
    assert lib.wg_peer_remove(dp, 2) == 0
    assert lib.wg_aip_nodes(dp, 2) == lib.wg_aip_nodes(dp, 10) == 0


def test_batch_lookup_matches_single(dp: object) -> None:
    rng = random.Random(7)
    for _ in range(200):
        ins(dp, 2, rng.getrandbits(32), rng.randint(0, 32), rng.randrange(MAX_PEERS))
    addrs = [rng.getrandbits(32) for _ in range(500)]
    buf = ffi.new("uint8_t[]", b"".join(ab(2, a) for a in addrs))
    out = ffi.new("int32_t[]", len(addrs))
    lib.wg_aip_lookup_batch(dp, 2, buf, 4, len(addrs), out)
    assert list(out) == [look(dp, 2, a) for a in addrs]


def random_prefix(rng: random.Random, fam: int, pool: list[int]) -> tuple[int, int]:
    """Addresses drawn near a small pool so prefixes overlap and nest often."""
    bits = BITS[fam]
    base = rng.choice(pool)
    flip = rng.getrandbits(bits) & ((1 << rng.randint(0, bits)) - 1) if rng.random() < 0.7 else 0
    cidr = rng.choice([0, bits, rng.randint(0, bits), rng.randint(bits - 8, bits)])
    return base ^ flip, cidr


def check_against_naive(dp: object, naive: Naive, rng: random.Random, pools: dict,
                        probes: int) -> None:
    for fam in (2, 10):
        bits = BITS[fam]
        for _ in range(probes):
            if rng.random() < 0.5:
                low = (1 << rng.randint(0, bits)) - 1
                a = rng.choice(pools[fam]) ^ (rng.getrandbits(bits) & low)
            else:
                a = rng.getrandbits(bits)
            assert look(dp, fam, a) == naive.lookup(fam, a), (fam, hex(a))
        want = {(net, c) for (f, net, c) in naive.prefixes if f == fam}
        assert listed(dp, fam) == want
        # Path compression bound: at most 2n - 1 nodes for n prefixes.
        assert lib.wg_aip_nodes(dp, fam) <= max(0, 2 * len(want) - 1)


def run_random(dp: object, seed: int, steps: int, probes_every: int) -> None:
    rng = random.Random(seed)
    naive = Naive()
    pools = {2: [rng.getrandbits(32) for _ in range(6)],
             10: [rng.getrandbits(128) for _ in range(6)]}
    for step in range(steps):
        fam = rng.choice((2, 10))
        r = rng.random()
        if r < 0.6:
            a, c = random_prefix(rng, fam, pools[fam])
            p = rng.randrange(8)
            assert ins(dp, fam, a, c, p) == 0
            naive.insert(fam, a, c, p)
        elif r < 0.9:
            if naive.prefixes and rng.random() < 0.8:
                f, a, c = rng.choice(list(naive.prefixes))
                fam = f
            else:
                a, c = random_prefix(rng, fam, pools[fam])
            expect = 0 if naive.remove(fam, a, c) else -errno.ENOENT
            assert lib.wg_aip_remove(dp, fam, ab(fam, a), c) == expect
        else:
            p = rng.randrange(8)
            lib.wg_aip_remove_peer(dp, p)
            naive.remove_peer(p)
        if step % probes_every == 0:
            check_against_naive(dp, naive, rng, pools, 20)
    check_against_naive(dp, naive, rng, pools, 300)
    # Empty everything: every node must be freed.
    for p in range(8):
        lib.wg_aip_remove_peer(dp, p)
    assert lib.wg_aip_nodes(dp, 2) == lib.wg_aip_nodes(dp, 10) == 0


@pytest.mark.fuzz
@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 150))
def test_hypothesis_against_naive(seed: int, steps: int) -> None:
    d = lib.wg_dp_new(MAX_PEERS, 16, 1420)
    try:
        run_random(d, seed, steps, 10)
    finally:
        lib.wg_dp_free(d)


def test_large_random_run(dp: object) -> None:
    run_random(dp, 12345, 5000, 250)


@pytest.mark.fuzz
@settings(max_examples=100)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 255), st.integers(0, 8),
                              st.integers(0, 3)), max_size=40),
       probe=st.integers(0, 255))
def test_hypothesis_small_space(ops: list[tuple[bool, int, int, int]], probe: int) -> None:
    """An 8-bit corner of IPv4 (the first octet) where collisions are the rule."""
    d = lib.wg_dp_new(MAX_PEERS, 16, 1420)
    try:
        naive = Naive()
        for is_insert, octet, cidr, peer in ops:
            a = octet << 24
            if is_insert:
                assert ins(d, 2, a, cidr, peer) == 0
                naive.insert(2, a, cidr, peer)
            else:
                expect = 0 if naive.remove(2, a, cidr) else -errno.ENOENT
                assert lib.wg_aip_remove(d, 2, ab(2, a), cidr) == expect
        for octet in range(256):
            assert look(d, 2, octet << 24 | probe) == naive.lookup(2, octet << 24 | probe)
    finally:
        lib.wg_dp_free(d)
