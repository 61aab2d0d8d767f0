"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s exactly as WireGuard uses it (whitepaper §5.4).

Three layers:
  * primitives: HASH, HMAC, KDF1/2/3, DH (X25519), AEAD, XAEAD, TAI64N;
  * `SymmetricState` (Noise §5.2) and the four IKpsk2 half-messages written token by token, so the
    same code runs the generic cacophony vector (other name/prologue) and WireGuard;
  * WireGuard's handshake messages: create/consume initiation and response, derive keys.

No I/O and no clock: every time comes in as an argument.  Failures raise HandshakeError (a
MessageError), nothing else.

Longer than the ~400 lines a file gets here, on purpose: it is one protocol concept, the Noise
handshake, told once in the whitepaper's order -- the primitives and initial chaining key
(§5.4), the first message (§5.4.2), the second (§5.4.3), the transport keys (§5.4.5) -- so each
step can be read against the spec top to bottom.  Splitting the primitives or the messages off
would spread one derivation across files.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from nacl import bindings as _nb
from nacl import exceptions as _nexc
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from .messages import (
    INITIATIONS_PER_SECOND,
    KEY_LEN,
    TAG_LEN,
    TAI64N_BASE,
    TIMESTAMP_LEN,
    Initiation,
    MessageError,
    Response,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
ZERO_KEY = bytes(KEY_LEN)

Rand = Callable[[int], bytes]


class HandshakeError(MessageError):
    """A handshake message that fails a cryptographic or protocol check."""


# ---- primitives ---------------------------------------------------------------------------

def hash_(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, *parts: bytes) -> bytes:
    """Keyed BLAKE2s-128 (MAC in the whitepaper): mac1, mac2 and the cookie."""
    h = hashlib.blake2s(key=key, digest_size=16)
    for p in parts:
        h.update(p)
    return h.digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    return _hmac.new(key, data, hashlib.blake2s).digest()


def kdf1(key: bytes, ikm: bytes) -> bytes:
    t0 = hmac_(key, ikm)
    return hmac_(t0, b"\x01")


def kdf2(key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    t0 = hmac_(key, ikm)
    t1 = hmac_(t0, b"\x01")
    return t1, hmac_(t0, t1 + b"\x02")


def kdf3(key: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = hmac_(key, ikm)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    return t1, t2, hmac_(t0, t2 + b"\x03")


def wipe(buf: bytearray | None) -> None:
    if buf is not None:
        buf[:] = bytes(len(buf))


def generate_private(rand: Rand = os.urandom) -> bytearray:
    """A fresh X25519 private key in a wipeable buffer (X25519 clamps it when used)."""
    k = bytearray(rand(KEY_LEN))
    if len(k) != KEY_LEN:
        raise ValueError("rand returned the wrong length")
    return k


def public_key(private: bytes | bytearray) -> bytes:
    out = bytearray(KEY_LEN)
    _lib.crypto_scalarmult_base(_ffi.from_buffer(out), _ffi.from_buffer(bytes(private)))
    return bytes(out)


def dh(private: bytes | bytearray, public: bytes) -> bytearray:
    """X25519; a low-order public key (all-zero shared secret) is rejected, as WireGuard does."""
    if len(public) != KEY_LEN or len(private) != KEY_LEN:
        raise HandshakeError("bad-key-length")
    out = bytearray(KEY_LEN)
    # libsodium returns -1 exactly when the result is all zeros.
    rc = _lib.crypto_scalarmult(_ffi.from_buffer(out), _ffi.from_buffer(private),
                                _ffi.from_buffer(public))
    if rc != 0 or not any(out):
        wipe(out)
        raise HandshakeError("zero-dh")
    return out


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    return _nb.crypto_aead_chacha20poly1305_ietf_encrypt(bytes(plaintext), bytes(aad),
                                                         _nonce(counter), bytes(key))


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return _nb.crypto_aead_chacha20poly1305_ietf_decrypt(bytes(ciphertext), bytes(aad),
                                                              _nonce(counter), bytes(key))
    except (_nexc.CryptoError, _nexc.ValueError, _nexc.TypeError):
        raise HandshakeError("bad-tag") from None


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return _nb.crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), bytes(aad),
                                                          bytes(nonce), bytes(key))


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return _nb.crypto_aead_xchacha20poly1305_ietf_decrypt(bytes(ciphertext), bytes(aad),
                                                               bytes(nonce), bytes(key))
    except (_nexc.CryptoError, _nexc.ValueError, _nexc.TypeError):
        raise HandshakeError("bad-tag") from None


# The kernel rounds the nanoseconds down to a power of two near 1/INITIATIONS_PER_SECOND so the
# timestamp does not leak precise timing; two initiations in one such slot look like a replay.
_TAI64N_NS_GRAIN = 1 << ((10**9 // INITIATIONS_PER_SECOND).bit_length() - 1)   # 2^24 ns


def tai64n(now_wall: float) -> bytes:
    """TAI64N label: big-endian (TAI64N_BASE + seconds) || big-endian nanoseconds, the bytes
    the kernel and wireguard-go write for the same instant."""
    secs = int(now_wall // 1)
    nanos = int((now_wall - secs) * 1e9)
    nanos -= nanos % _TAI64N_NS_GRAIN
    return struct.pack(">QI", TAI64N_BASE + secs, min(nanos, 999_999_999))


# ---- Noise symmetric state (Noise spec §5.2) ----------------------------------------------

@dataclass
class SymmetricState:
    ck: bytes
    h: bytes
    k: bytes | None = None
    n: int = 0

    @classmethod
    def initialize(cls, protocol_name: bytes, prologue: bytes) -> SymmetricState:
        h = protocol_name.ljust(32, b"\x00") if len(protocol_name) <= 32 else hash_(protocol_name)
        s = cls(ck=h, h=h)
        s.mix_hash(prologue)
        return s

    def copy(self) -> SymmetricState:
        return SymmetricState(self.ck, self.h, self.k, self.n)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h, bytes(data))

    def mix_key(self, ikm: bytes | bytearray) -> None:
        self.ck, self.k = kdf2(self.ck, bytes(ikm))
        self.n = 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, tau, self.k = kdf3(self.ck, ikm)
        self.mix_hash(tau)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            out = plaintext
        else:
            out = aead_encrypt(self.k, self.n, plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            out = ciphertext
        else:
            out = aead_decrypt(self.k, self.n, ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key) = KDF2(ck, "")."""
        return kdf2(self.ck, b"")

    def wipe(self) -> None:
        self.ck = self.h = ZERO_KEY
        self.k = None


# ---- IKpsk2 half-messages, token by token --------------------------------------------------
# Pre-message: <- s (the responder's static key is mixed into h by the caller's initialize).

def write_message1(sym: SymmetricState, e_priv: bytearray, s_priv: bytes | bytearray,
                   s_pub: bytes, rs_pub: bytes, payload: bytes,
                   ss: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """-> e, es, s, ss, {payload}.  Returns (e_pub, encrypted s, encrypted payload)."""
    e_pub = public_key(e_priv)
    # e
    sym.mix_hash(e_pub)
    sym.mix_key(e_pub)          # psk modifier: e also mixes the key
    # es
    d = dh(e_priv, rs_pub)
    sym.mix_key(d)
    wipe(d)
    # s
    enc_s = sym.encrypt_and_hash(s_pub)
    # ss
    if ss is None:
        d = dh(s_priv, rs_pub)
        sym.mix_key(d)
        wipe(d)
    else:
        sym.mix_key(ss)
    # {payload}
    return e_pub, enc_s, sym.encrypt_and_hash(payload)


def read_message1(sym: SymmetricState, s_priv: bytes | bytearray, re_pub: bytes,
                  enc_s: bytes, enc_payload: bytes,
                  ss_for: Callable[[bytes], bytes | None] | None = None) -> tuple[bytes, bytes]:
    """Responder side of message 1.  `ss_for(rs)` returns the precomputed static-static DH
    for a known peer or None for an unknown one (then the message is rejected)."""
    # e
    sym.mix_hash(re_pub)
    sym.mix_key(re_pub)
    # es
    d = dh(s_priv, re_pub)
    sym.mix_key(d)
    wipe(d)
    # s
    rs_pub = sym.decrypt_and_hash(enc_s)
    # ss
    if ss_for is None:
        d = dh(s_priv, rs_pub)
        sym.mix_key(d)
        wipe(d)
    else:
        ss = ss_for(rs_pub)
        if ss is None:
            raise HandshakeError("unknown-peer")
        sym.mix_key(ss)
    # {payload}
    return rs_pub, sym.decrypt_and_hash(enc_payload)


def write_message2(sym: SymmetricState, e_priv: bytearray, re_pub: bytes, rs_pub: bytes,
                   psk: bytes, payload: bytes) -> tuple[bytes, bytes]:
    """<- e, ee, se, psk, {payload}.  Returns (e_pub, encrypted payload)."""
    e_pub = public_key(e_priv)
    # e
    sym.mix_hash(e_pub)
    sym.mix_key(e_pub)
    # ee
    d = dh(e_priv, re_pub)
    sym.mix_key(d)
    wipe(d)
    # se
    d = dh(e_priv, rs_pub)
    sym.mix_key(d)
    wipe(d)
    # psk
    sym.mix_key_and_hash(psk)
    # {payload}
    return e_pub, sym.encrypt_and_hash(payload)


def read_message2(sym: SymmetricState, e_priv: bytearray, s_priv: bytes | bytearray,
                  re_pub: bytes, psk: bytes, enc_payload: bytes) -> bytes:
    # e
    sym.mix_hash(re_pub)
    sym.mix_key(re_pub)
    # ee
    d = dh(e_priv, re_pub)
    sym.mix_key(d)
    wipe(d)
    # se
    d = dh(s_priv, re_pub)
    sym.mix_key(d)
    wipe(d)
    # psk
    sym.mix_key_and_hash(psk)
    # {payload}
    return sym.decrypt_and_hash(enc_payload)


# ---- WireGuard's handshake ---------------------------------------------------------------

@lru_cache(maxsize=4096)
def _initial_chain(responder_pub: bytes) -> tuple[bytes, bytes]:
    s = SymmetricState.initialize(CONSTRUCTION, IDENTIFIER)
    s.mix_hash(responder_pub)
    return s.ck, s.h


def initial_state(responder_pub: bytes) -> SymmetricState:
    """C = HASH(CONSTRUCTION); H = HASH(HASH(C || IDENTIFIER) || S_pub_responder)."""
    ck, h = _initial_chain(bytes(responder_pub))
    return SymmetricState(ck, h)


@dataclass
class StaticIdentity:
    """The local interface's static key pair and the keys derived from its public key."""
    private: bytes | bytearray   # taken as either, kept as a bytearray (so it can be wiped)
    public: bytes = b""
    mac1_key: bytes = b""      # HASH("mac1----" || public): peers MAC their messages to us
    cookie_key: bytes = b""    # HASH("cookie--" || public): we encrypt cookie replies with it

    def __post_init__(self) -> None:
        self.private = bytearray(self.private)
        if len(self.private) != KEY_LEN:
            raise ValueError("private key must be 32 bytes")
        self.public = public_key(self.private)
        self.mac1_key = hash_(LABEL_MAC1, self.public)
        self.cookie_key = hash_(LABEL_COOKIE, self.public)

    @classmethod
    def generate(cls, rand: Rand = os.urandom) -> StaticIdentity:
        return cls(generate_private(rand))

    def static_static(self, peer_pub: bytes) -> bytes:
        """DH(S_priv, S_pub_peer): fixed per peer, so callers precompute it."""
        d = dh(self.private, peer_pub)
        out = bytes(d)
        wipe(d)
        return out


@dataclass
class InitiatorHandshake:
    """What the initiator keeps between sending an initiation and receiving the response."""
    sym: SymmetricState
    e_priv: bytearray
    e_pub: bytes
    local_index: int
    remote_pub: bytes

    def wipe(self) -> None:
        wipe(self.e_priv)
        self.sym.wipe()


@dataclass
class ResponderHandshake:
    """A consumed initiation: what the responder needs to answer it."""
    sym: SymmetricState
    remote_pub: bytes          # the initiator's static key (identifies the peer)
    remote_ephemeral: bytes
    remote_index: int
    timestamp: bytes = field(repr=False, default=b"")

    def wipe(self) -> None:
        self.sym.wipe()


@dataclass(frozen=True)
class SessionKeys:
    send: bytes
    recv: bytes


def create_initiation(local: StaticIdentity, remote_pub: bytes, local_index: int,
                      now_wall: float, ss: bytes | None = None,
                      rand: Rand = os.urandom) -> tuple[Initiation, InitiatorHandshake]:
    """Message 1 without MACs (cookie.py adds them)."""
    sym = initial_state(remote_pub)
    e_priv = generate_private(rand)
    e_pub, enc_s, enc_t = write_message1(sym, e_priv, local.private, local.public, remote_pub,
                                         tai64n(now_wall), ss)
    msg = Initiation(local_index, e_pub, enc_s, enc_t)
    return msg, InitiatorHandshake(sym, e_priv, e_pub, local_index, bytes(remote_pub))


def consume_initiation(local: StaticIdentity, msg: Initiation,
                       ss_for: Callable[[bytes], bytes | None] | None = None) -> ResponderHandshake:
    """Decrypt message 1.  Replay/flood checks are the caller's (they need the peer)."""
    sym = initial_state(local.public)
    rs_pub, ts = read_message1(sym, local.private, msg.ephemeral, msg.encrypted_static,
                               msg.encrypted_timestamp, ss_for)
    if len(ts) != TIMESTAMP_LEN:
        raise HandshakeError("bad-timestamp")
    return ResponderHandshake(sym, rs_pub, msg.ephemeral, msg.sender, ts)


def create_response(state: ResponderHandshake, psk: bytes, local_index: int,
                    rand: Rand = os.urandom) -> tuple[Response, SessionKeys]:
    """Message 2 without MACs, and the responder's transport keys (send, recv)."""
    sym = state.sym
    e_priv = generate_private(rand)
    try:
        e_pub, enc = write_message2(sym, e_priv, state.remote_ephemeral, state.remote_pub,
                                    psk, b"")
        t_i2r, t_r2i = sym.split()
    finally:
        wipe(e_priv)
        state.wipe()
    return Response(local_index, state.remote_index, e_pub, enc), SessionKeys(t_r2i, t_i2r)


def consume_response(local: StaticIdentity, state: InitiatorHandshake, msg: Response,
                     psk: bytes) -> SessionKeys:
    """Check message 2 against our pending initiation; return (send, recv) keys.

    The pending state is only consumed (wiped) on success, so a forged response cannot
    destroy a handshake in progress."""
    sym = state.sym.copy()
    payload = read_message2(sym, state.e_priv, local.private, msg.ephemeral, psk,
                            msg.encrypted_nothing)
    if payload:
        raise HandshakeError("bad-payload")
    t_i2r, t_r2i = sym.split()
    sym.wipe()
    state.wipe()
    return SessionKeys(t_i2r, t_r2i)


__all__ = [
    "CONSTRUCTION", "IDENTIFIER", "HandshakeError", "StaticIdentity", "SymmetricState",
    "InitiatorHandshake", "ResponderHandshake", "SessionKeys", "TAG_LEN",
    "create_initiation", "consume_initiation", "create_response", "consume_response",
    "hash_", "mac", "hmac_", "kdf1", "kdf2", "kdf3", "dh", "public_key", "generate_private",
    "aead_encrypt", "aead_decrypt", "xaead_encrypt", "xaead_decrypt", "tai64n", "wipe",
    "write_message1", "read_message1", "write_message2", "read_message2", "initial_state",
]
