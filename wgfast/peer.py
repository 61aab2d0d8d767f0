"""One peer's control-plane state: keys, handshake, keypair slots, staged packets.

I/O-free: every method takes the time and returns what the device must do (bytes to send,
key material to install into C, local indices to remove from C).  Index bookkeeping goes
through an `IndexAllocator` the device owns (local index -> peer); the peer keeps it in step
with its own handshake and keypair slots.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .cookie import CookieState
from .messages import (
    INITIATIONS_PER_SECOND,
    KEY_LEN,
    MAX_STAGED_PACKETS,
    TIMESTAMP_LEN,
    CookieReply,
    Initiation,
    MessageError,
    Response,
    parse_initiation,
    parse_response,
)
from .noise import (
    InitiatorHandshake,
    ResponderHandshake,
    StaticIdentity,
)
from .noise import consume_initiation as _noise_consume_initiation
from .noise import consume_response as _noise_consume_response
from .noise import create_initiation as _noise_create_initiation
from .noise import create_response as _noise_create_response

Rand = Callable[[int], bytes]
FLOOD_INTERVAL = 1.0 / INITIATIONS_PER_SECOND


@dataclass(frozen=True)
class KeypairMaterial:
    """Everything wg_keypair_install needs, in its argument order."""
    peer_id: int
    local_index: int
    remote_index: int
    send_key: bytes
    recv_key: bytes
    created: float
    initiator: bool

    @property
    def make_current(self) -> int:
        # The initiator may send at once; the responder waits for the first data message.
        return 1 if self.initiator else 0

    def install_args(self) -> tuple[int, int, int, bytes, bytes, float, int, int]:
        """(peer, local_index, remote_index, send_key, recv_key, created, initiator,
        make_current) for lib.wg_keypair_install(dp, *args)."""
        return (self.peer_id, self.local_index, self.remote_index, self.send_key,
                self.recv_key, self.created, int(self.initiator), self.make_current)


@dataclass
class _Slot:
    local_index: int
    remote_index: int
    created: float
    initiator: bool


class IndexAllocator(Protocol):
    def alloc(self, peer: Peer) -> int: ...
    def free(self, index: int) -> None: ...


class IndexTable:
    """A simple device-side index map: random unique 32-bit local indices -> peer."""

    def __init__(self, rand: Rand = os.urandom) -> None:
        self._rand = rand
        self.by_index: dict[int, Peer] = {}

    def alloc(self, peer: Peer) -> int:
        while True:
            i = int.from_bytes(self._rand(4), "little")
            if i not in self.by_index:
                self.by_index[i] = peer
                return i

    def free(self, index: int) -> None:
        self.by_index.pop(index, None)

    def get(self, index: int) -> Peer | None:
        return self.by_index.get(index)


class Peer:
    def __init__(self, public_key: bytes, peer_id: int, psk: bytes | None = None) -> None:
        if len(public_key) != KEY_LEN:
            raise ValueError("public key must be 32 bytes")
        if psk is not None and len(psk) != KEY_LEN:
            raise ValueError("preshared key must be 32 bytes")
        self.public_key = bytes(public_key)
        self.peer_id = peer_id
        self.psk = bytes(psk) if psk is not None else bytes(KEY_LEN)
        self.cookie = CookieState(self.public_key)
        self.handshake: InitiatorHandshake | None = None
        self.last_timestamp = bytes(TIMESTAMP_LEN)
        self.last_initiation_consumed = float("-inf")
        self.current: _Slot | None = None
        self.previous: _Slot | None = None
        self.next: _Slot | None = None
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.staged_dropped = 0
        self._ss_for: bytes = b""
        self._ss: bytes | None = None

    # -- helpers ------------------------------------------------------------------------------
    def static_static(self, local: StaticIdentity) -> bytes:
        """DH(local static, peer static), precomputed once per local key.  Raises
        HandshakeError for a low-order peer key: such a peer can never handshake."""
        if self._ss is None or self._ss_for != local.public:
            self._ss = local.static_static(self.public_key)
            self._ss_for = local.public
        return self._ss

    def keypair_indices(self) -> list[int]:
        return [s.local_index for s in (self.current, self.previous, self.next) if s]

    def _drop_handshake(self, indices: IndexAllocator, keep_index: bool = False) -> None:
        if self.handshake is not None:
            if not keep_index:
                indices.free(self.handshake.local_index)
            self.handshake.wipe()
            self.handshake = None

    def abandon_handshake(self, indices: IndexAllocator) -> None:
        """Give up on the initiation in flight (REKEY_ATTEMPT_TIME passed)."""
        self._drop_handshake(indices)

    def _add_keypair(self, slot: _Slot, indices: IndexAllocator) -> list[int]:
        """Install a new keypair in the slots (kernel semantics); return evicted indices."""
        evicted: list[_Slot | None] = []
        if slot.initiator:
            if self.next is not None:
                # An unconfirmed responder keypair is newer than current: keep it as previous.
                evicted += [self.previous, self.current]
                self.previous, self.next = self.next, None
            else:
                evicted.append(self.previous)
                self.previous = self.current
            self.current = slot
        else:
            evicted += [self.next, self.previous]
            self.next, self.previous = slot, None
        out = [s.local_index for s in evicted if s is not None]
        for i in out:
            indices.free(i)
        return out

    # -- staged packets (the device keeps them in C, staging.c; this is the Python twin) -------
    def stage(self, packet: bytes) -> None:
        if len(self.staged) == self.staged.maxlen:
            self.staged_dropped += 1     # deque drops the oldest
        self.staged.append(bytes(packet))

    def take_staged(self) -> list[bytes]:
        out = list(self.staged)
        self.staged.clear()
        return out

    def drop_staged(self) -> int:
        n = len(self.staged)
        self.staged.clear()
        return n

    # -- initiator ----------------------------------------------------------------------------
    def create_initiation(self, local: StaticIdentity, now: float, now_wall: float,
                          indices: IndexAllocator, rand: Rand = os.urandom) -> bytes:
        """A complete 148-byte initiation (mac1, and mac2 if we hold a fresh cookie).
        Replaces any initiation in flight (its index is freed).  Raises HandshakeError if
        the peer's public key is a low-order point."""
        ss = self.static_static(local)
        self._drop_handshake(indices)
        index = indices.alloc(self)
        msg, hs = _noise_create_initiation(local, self.public_key, index, now_wall, ss, rand)
        self.handshake = hs
        return self.cookie.add_macs(msg.pack(), now)

    def consume_response(self, local: StaticIdentity, msg: Response | bytes, now: float,
                         indices: IndexAllocator) -> tuple[KeypairMaterial, list[int]] | None:
        """Complete our handshake.  Returns the new (current) keypair and the local indices
        evicted from the slots (remove them from C), or None if the response is not valid
        for the initiation in flight.  mac1 is the caller's (cookie.CookieChecker)."""
        try:
            r = parse_response(msg) if not isinstance(msg, Response) else msg
        except MessageError:
            return None
        hs = self.handshake
        if hs is None or r.receiver != hs.local_index:
            return None
        try:
            keys = _noise_consume_response(local, hs, r, self.psk)
        except MessageError:
            return None
        self.handshake = None           # its index lives on as the keypair's
        slot = _Slot(hs.local_index, r.sender, now, True)
        evicted = self._add_keypair(slot, indices)
        km = KeypairMaterial(self.peer_id, hs.local_index, r.sender, keys.send, keys.recv,
                             now, True)
        return km, evicted

    def consume_cookie_reply(self, reply: CookieReply, now: float) -> bool:
        return self.cookie.consume_reply(reply, now)

    # -- responder ----------------------------------------------------------------------------
    def create_response(self, local: StaticIdentity, state: ResponderHandshake, now: float,
                        indices: IndexAllocator, rand: Rand = os.urandom,
                        ) -> tuple[bytes, KeypairMaterial, list[int]]:
        """Answer a consumed initiation: the 92-byte response (with MACs), the new keypair
        (install with make_current=0: it becomes current when C sees data under it) and the
        evicted local indices.  An initiation of ours in flight is abandoned, as in the
        kernel (one handshake state per peer)."""
        self._drop_handshake(indices)
        index = indices.alloc(self)
        resp, keys = _noise_create_response(state, self.psk, index, rand)
        data = self.cookie.add_macs(resp.pack(), now)
        slot = _Slot(index, state.remote_index, now, False)
        evicted = self._add_keypair(slot, indices)
        km = KeypairMaterial(self.peer_id, index, state.remote_index, keys.send, keys.recv,
                             now, False)
        return data, km, evicted

    def confirm(self, local_index: int) -> list[int]:
        """C promoted our `next` keypair (WG_EV_CONFIRMED): rotate the slots the same way.
        Returns evicted local indices (remove them from C)."""
        if self.next is None or self.next.local_index != local_index:
            return []
        old = self.previous
        self.previous, self.current, self.next = self.current, self.next, None
        return [old.local_index] if old is not None else []

    # -- expiry -------------------------------------------------------------------------------
    def zero_keys(self, indices: IndexAllocator) -> list[int]:
        """Forget every keypair and the handshake in flight; return the keypair indices."""
        out = self.keypair_indices()
        for i in out:
            indices.free(i)
        self.current = self.previous = self.next = None
        self._drop_handshake(indices)
        return out


def consume_initiation(local: StaticIdentity, msg: Initiation | bytes,
                       peers_by_pubkey: Mapping[bytes, Peer], now: float,
                       now_wall: float | None = None,
                       ) -> tuple[Peer, ResponderHandshake] | None:
    """Device-level: decrypt an initiation, find the peer by its static key, and apply the
    replay (TAI64N strictly increasing) and flood (<= INITIATIONS_PER_SECOND) checks.
    Returns None for anything not acceptable.  mac1/mac2 are the caller's (CookieChecker).
    `now_wall` is accepted for symmetry with create_initiation; the checks need only `now`."""
    try:
        m = parse_initiation(msg) if not isinstance(msg, Initiation) else msg

        def ss_for(rs: bytes) -> bytes | None:
            p = peers_by_pubkey.get(rs)
            return p.static_static(local) if p is not None else None

        state = _noise_consume_initiation(local, m, ss_for)
    except MessageError:
        return None
    peer = peers_by_pubkey.get(state.remote_pub)
    if peer is None:
        return None
    # Both checks compare against the last *accepted* initiation only.
    if state.timestamp <= peer.last_timestamp:
        return None
    if now - peer.last_initiation_consumed < FLOOD_INTERVAL:
        return None
    peer.last_timestamp = state.timestamp
    peer.last_initiation_consumed = now
    return peer, state
