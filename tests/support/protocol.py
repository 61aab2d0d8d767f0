"""The protocol core without I/O, for test_noise, test_peer and test_transport: the X25519 keys
of small order, and in-memory sides (what a device keeps) that handshake through peer.py with
injected clocks.  Split from support/__init__.py, which holds the data-plane bench."""

from __future__ import annotations

from wgfast import noise as N
from wgfast.cookie import CookieChecker, Verdict, source_bytes
from wgfast.messages import parse
from wgfast.peer import IndexTable, Peer, consume_initiation

# The seven X25519 public keys of small order (they give an all-zero shared secret with every
# private key).  Source: the blacklist in libsodium's crypto_scalarmult/curve25519/ref10
# (has_small_order), also listed at https://cr.yp.to/ecdh.html#validate.
LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",  # 0
    "0100000000000000000000000000000000000000000000000000000000000000",  # 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1
]

WALL = 1_700_000_000.0
SRC = source_bytes(bytes([10, 0, 0, 1]), 40000)


class Side:
    """What a device keeps: identity, index table, peers by key, cookie checker."""

    def __init__(self) -> None:
        self.local = N.StaticIdentity.generate()
        self.indices = IndexTable()
        self.peers: dict[bytes, Peer] = {}
        self.checker = CookieChecker(self.local.public)

    def add(self, other: Side, psk: bytes | None = None) -> Peer:
        p = Peer(other.local.public, peer_id=len(self.peers), psk=psk)
        self.peers[p.public_key] = p
        return p


def handshake(a: Side, b: Side, now: float = 100.0, wall: float = WALL):
    """a initiates to b; returns (a's keypair, b's keypair, a's evicted, b's evicted)."""
    pa, pb = a.peers[b.local.public], b.peers[a.local.public]
    init = pa.create_initiation(a.local, now, wall, a.indices)
    assert b.checker.validate(init, SRC, now, False) is Verdict.ACCEPT
    got = consume_initiation(b.local, init, b.peers, now, wall)
    assert got is not None and got[0] is pb
    resp, kb, ev_b = pb.create_response(b.local, got[1], now, b.indices)
    assert a.checker.validate(resp, SRC, now, False) is Verdict.ACCEPT
    peer = a.indices.get(parse(resp).receiver)
    assert peer is pa
    out = pa.consume_response(a.local, resp, now, a.indices)
    assert out is not None
    ka, ev_a = out
    return ka, kb, ev_a, ev_b
