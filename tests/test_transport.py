"""End to end without I/O: two in-memory peers handshake with the protocol core (peer.py),
install their keypairs into two C data planes, and transport data sealed by one opens in the
other -- then a rekey, data under the new keypair, and the responder's promotion on its first
data (WG_EV_CONFIRMED)."""

from __future__ import annotations

import os

import nacl.bindings as aead
from support.protocol import Side, handshake

from wgfast.dataplane import DataPlane, Ring, lib
from wgfast.peer import KeypairMaterial

PEER = 0            # each side's id for the other


def install(dp: DataPlane, km: KeypairMaterial, evicted: list[int]) -> None:
    """What the device does with a handshake's result."""
    for idx in evicted:
        dp.keypair_remove(idx)
    assert km.install_args()[0] == PEER
    dp.keypair_install(*km.install_args()[:6], initiator=km.initiator,
                       current=bool(km.make_current))


def transfer(src: DataPlane, dst: DataPlane, payloads: list[bytes], now: float,
             ) -> tuple[Ring, Ring]:
    """Seal payloads on src, carry the messages over, open them on dst."""
    tx = Ring(len(payloads), 1500)
    rx = Ring(len(payloads), 1500)
    for i, p in enumerate(payloads):
        tx.put_plaintext(i, p, PEER)
    assert lib.wg_seal_batch(src.handle, tx.ptr, 0, len(payloads), now) == len(payloads)
    for i in range(len(payloads)):
        msg = tx.message(i)
        assert len(msg) % 16 == 0 and msg[:4] == bytes([4, 0, 0, 0])
        rx.put_message(i, msg)
    lib.wg_open_batch(dst.handle, rx.ptr, 0, len(payloads), now)
    return tx, rx


def events(dp: DataPlane, etype: int) -> list[tuple[int, int, int, object, bytes]]:
    return [e for e in dp.pop_events() if e[0] == etype]


def ip_packet(n: int) -> bytes:
    # Any plaintext works for seal/open; a recognisable IPv4-looking header helps debugging.
    return bytes([0x45, 0]) + (20 + n).to_bytes(2, "big") + os.urandom(16 + n)


def test_handshake_transport_rekey_and_confirm() -> None:
    a, b = Side(), Side()
    a.add(b)
    b.add(a)
    dpa, dpb = DataPlane(max_peers=2), DataPlane(max_peers=2)
    for dp in (dpa, dpb):
        dp.peer_add(PEER)
    pb = b.peers[a.local.public]

    # Handshake 1: a initiates.  a can send at once; b's keypair waits as "next".
    ka, kb, ev_a, ev_b = handshake(a, b, now=100.0)
    install(dpa, ka, ev_a)
    install(dpb, kb, ev_b)
    assert dpa.keypair_current(PEER) == ka.local_index
    assert dpb.keypair_current(PEER) is None

    # b cannot send before its keypair is confirmed.
    ring = Ring(1, 1500)
    ring.put_plaintext(0, b"x" * 40, PEER)
    assert lib.wg_seal_batch(dpb.handle, ring.ptr, 0, 1, 100.0) == 0
    assert ring.status[0] == lib.WG_DROP_NO_KEY

    payloads = [ip_packet(n) for n in (0, 1, 15, 16, 100, 1380)]
    tx, rx = transfer(dpa, dpb, payloads, 100.5)
    for i, p in enumerate(payloads):
        assert rx.status[i] == lib.WG_OK
        assert rx.plaintext(i)[: len(p)] == p
        assert rx.peer[i] == PEER and rx.receiver[i] == kb.local_index
        assert rx.counter[i] == tx.counter[i] == i
    # b's first data promoted its keypair, exactly once.
    conf = events(dpb, lib.WG_EV_CONFIRMED)
    assert [(e[1], e[2]) for e in conf] == [(PEER, kb.local_index)]
    assert dpb.keypair_current(PEER) == kb.local_index
    assert pb.confirm(kb.local_index) == []     # the control plane follows C

    # Now b answers under the same session.
    back = [ip_packet(64)]
    _, rx2 = transfer(dpb, dpa, back, 101.0)
    assert rx2.status[0] == lib.WG_OK and rx2.plaintext(0)[:84] == back[0]
    assert events(dpa, lib.WG_EV_CONFIRMED) == []   # the initiator's keypair was never pending

    # A replayed message is refused.
    rx.put_message(0, tx.message(0))
    assert lib.wg_open_batch(dpb.handle, rx.ptr, 0, 1, 101.0) == 0
    assert rx.status[0] == lib.WG_DROP_REPLAY

    # Rekey, this time b initiates: b's new keypair is current at once, a's waits.
    kb2, ka2, ev_b2, ev_a2 = handshake(b, a, now=230.0, wall=1_700_000_130.0)
    install(dpb, kb2, ev_b2)
    install(dpa, ka2, ev_a2)
    assert dpb.keypair_current(PEER) == kb2.local_index
    assert dpa.keypair_current(PEER) == ka.local_index     # still the old one until data

    new = [ip_packet(200), ip_packet(3)]
    tx3, rx3 = transfer(dpb, dpa, new, 230.5)
    assert list(rx3.status) == [lib.WG_OK, lib.WG_OK]
    assert [int(x) for x in rx3.receiver] == [ka2.local_index] * 2
    assert [int(c) for c in tx3.counter] == [0, 1]      # a new keypair counts from 0
    assert rx3.plaintext(1)[:23] == new[1]
    conf = events(dpa, lib.WG_EV_CONFIRMED)
    assert [(e[1], e[2]) for e in conf] == [(PEER, ka2.local_index)]
    assert dpa.keypair_current(PEER) == ka2.local_index

    # a now seals under the new keypair and b opens it.
    _, rx4 = transfer(dpa, dpb, [ip_packet(10)], 231.0)
    assert rx4.status[0] == lib.WG_OK and rx4.receiver[0] == kb2.local_index

    # A message under the old session (the previous keypair) still opens until it is removed.
    stale = seal_raw(kb.send_key, ka.local_index, 5, ip_packet(5))
    old = Ring(1, 1500)
    old.put_message(0, stale)
    assert lib.wg_open_batch(dpa.handle, old.ptr, 0, 1, 231.0) == 1
    assert old.receiver[0] == ka.local_index
    dpa.keypair_remove(ka.local_index)
    old.put_message(0, seal_raw(kb.send_key, ka.local_index, 6, ip_packet(5)))
    assert lib.wg_open_batch(dpa.handle, old.ptr, 0, 1, 231.0) == 0
    assert old.status[0] == lib.WG_DROP_NO_KEYPAIR


def seal_raw(key: bytes, receiver: int, counter: int, plaintext: bytes) -> bytes:
    """A transport message built by PyNaCl (whitepaper 5.4.6), independent of the C code."""
    padded = plaintext + bytes(-len(plaintext) % 16)
    nonce = bytes(4) + counter.to_bytes(8, "little")
    ct = aead.crypto_aead_chacha20poly1305_ietf_encrypt(padded, None, nonce, key)
    return bytes([4, 0, 0, 0]) + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little") + ct


def test_psk_session_and_tampering() -> None:
    psk = os.urandom(32)
    a, b = Side(), Side()
    a.add(b, psk)
    b.add(a, psk)
    dpa, dpb = DataPlane(max_peers=1), DataPlane(max_peers=1)
    for dp in (dpa, dpb):
        dp.peer_add(PEER)
    ka, kb, ev_a, ev_b = handshake(a, b)
    install(dpa, ka, ev_a)
    install(dpb, kb, ev_b)
    tx = Ring(1, 1500)
    tx.put_plaintext(0, ip_packet(50), PEER)
    assert lib.wg_seal_batch(dpa.handle, tx.ptr, 0, 1, 100.0) == 1
    msg = bytearray(tx.message(0))
    msg[-1] ^= 1                                    # a flipped tag bit
    rx = Ring(1, 1500)
    rx.put_message(0, bytes(msg))
    before = int(dpb.drops[lib.WG_DROP_TAG])
    assert lib.wg_open_batch(dpb.handle, rx.ptr, 0, 1, 100.0) == 0
    assert rx.status[0] == lib.WG_DROP_TAG and dpb.drops[lib.WG_DROP_TAG] == before + 1
    # A forgery neither confirms the keypair nor burns its counter.
    assert events(dpb, lib.WG_EV_CONFIRMED) == [] and dpb.keypair_current(PEER) is None
    rx.put_message(0, tx.message(0))
    assert lib.wg_open_batch(dpb.handle, rx.ptr, 0, 1, 100.0) == 1
    assert dpb.keypair_current(PEER) == kb.local_index
