"""mac1/mac2, cookie replies and the under-load decision (whitepaper §5.4.4, §5.4.7).

Responder side: `CookieChecker` (one per interface) checks mac1 always and mac2 under load,
and makes cookie replies.  The device does these per-packet decisions in C (csrc/cookie.c,
called by csrc/handshake_in.c); the checker is its Python twin, which computes the keys the
device installs into C, serves the tests' cross-checks, and takes over only when libcrypto has
no BLAKE2SMAC.  Initiator side: `CookieState` (one per peer) adds mac1/mac2 to the messages we
send and takes in cookie replies.  No I/O, no clock.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Callable

from .messages import (
    COOKIE_LEN,
    COOKIE_NONCE_LEN,
    COOKIE_SECRET_MAX_AGE,
    COOKIE_VALID_FOR,
    MAC_LEN,
    CookieReply,
    MessageError,
    mac1_offset,
)
from .noise import (
    LABEL_COOKIE,
    LABEL_MAC1,
    HandshakeError,
    hash_,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)

Rand = Callable[[int], bytes]
_ZERO_MAC = bytes(MAC_LEN)


def source_bytes(ip: bytes, port: int) -> bytes:
    """What the cookie is computed over: source IP (4 or 16 bytes) || UDP port, big-endian,
    as the kernel hashes the packet's saddr and udp source fields."""
    if len(ip) not in (4, 16):
        raise ValueError("ip must be 4 or 16 bytes")
    return bytes(ip) + (port & 0xFFFF).to_bytes(2, "big")


class Verdict(enum.Enum):
    DROP = 0            # mac1 wrong: not even worth a cookie reply
    ACCEPT = 1          # process the handshake message
    SEND_COOKIE = 2     # under load and mac2 missing/wrong: answer with a cookie reply


def _macs(data: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """(mac1 offset, message bytes), checking type and exact length."""
    off = mac1_offset(data)
    return off, bytes(data)


class CookieChecker:
    """The responder's half: one per local static key."""

    def __init__(self, local_public: bytes, rand: Rand = os.urandom) -> None:
        self._rand = rand
        self.mac1_key = hash_(LABEL_MAC1, local_public)
        self.cookie_key = hash_(LABEL_COOKIE, local_public)
        self._secret = b""
        self._secret_birth = float("-inf")

    def _current_secret(self, now: float) -> bytes:
        if now - self._secret_birth >= COOKIE_SECRET_MAX_AGE or not self._secret:
            self._secret = self._rand(32)
            self._secret_birth = now
        return self._secret

    def cookie_for(self, src: bytes, now: float) -> bytes:
        """BLAKE2s-128 keyed with the rotating secret over source IP || port."""
        return mac(self._current_secret(now), src)

    def check_mac1(self, data: bytes | bytearray | memoryview) -> bool:
        try:
            off, b = _macs(data)
        except MessageError:
            return False
        return hmac.compare_digest(mac(self.mac1_key, b[:off]), b[off:off + MAC_LEN])

    def check_mac2(self, data: bytes | bytearray | memoryview, src: bytes, now: float) -> bool:
        try:
            off, b = _macs(data)
        except MessageError:
            return False
        got = b[off + MAC_LEN:off + 2 * MAC_LEN]
        want = mac(self.cookie_for(src, now), b[:off + MAC_LEN])
        return hmac.compare_digest(want, got)

    def validate(self, data: bytes | bytearray | memoryview, src: bytes, now: float,
                 under_load: bool) -> Verdict:
        """mac1 always; a valid mac2 only when under load (otherwise: send a cookie)."""
        if not self.check_mac1(data):
            return Verdict.DROP
        if not under_load or self.check_mac2(data, src, now):
            return Verdict.ACCEPT
        return Verdict.SEND_COOKIE

    def create_reply(self, data: bytes | bytearray | memoryview, src: bytes,
                     now: float) -> bytes:
        """Cookie reply (type 3) to the sender of `data` (an initiation or a response):
        XChaCha20-Poly1305(HASH("cookie--" || our public), random nonce, cookie, AAD = mac1)."""
        off, b = _macs(data)
        sender = int.from_bytes(b[4:8], "little")
        nonce = self._rand(COOKIE_NONCE_LEN)
        enc = xaead_encrypt(self.cookie_key, nonce, self.cookie_for(src, now),
                            b[off:off + MAC_LEN])
        return CookieReply(sender, nonce, enc).pack()


class CookieState:
    """The initiator's half for one remote peer."""

    def __init__(self, remote_public: bytes) -> None:
        self.mac1_key = hash_(LABEL_MAC1, remote_public)
        self._decrypt_key = hash_(LABEL_COOKIE, remote_public)
        self.cookie: bytes | None = None
        self.cookie_time = 0.0
        self.last_mac1: bytes | None = None

    def has_fresh_cookie(self, now: float) -> bool:
        # The kernel's margin: a cookie is trusted for 120 s minus 5 s of latency.
        return self.cookie is not None and now - self.cookie_time < COOKIE_VALID_FOR

    def add_macs(self, data: bytes | bytearray, now: float) -> bytes:
        """Fill mac1 and mac2 of an initiation or response (whatever they held before)."""
        off, b = _macs(data)
        m1 = mac(self.mac1_key, b[:off])
        self.last_mac1 = m1
        if self.has_fresh_cookie(now):
            assert self.cookie is not None
            m2 = mac(self.cookie, b[:off] + m1)
        else:
            m2 = _ZERO_MAC
        return b[:off] + m1 + m2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie if the reply answers the last message we MACed.  Nothing is
        retransmitted here: the cookie is used by the next scheduled (re)transmission."""
        if self.last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._decrypt_key, reply.nonce, reply.encrypted_cookie,
                                   self.last_mac1)
        except HandshakeError:
            return False
        if len(cookie) != COOKIE_LEN:
            return False
        self.cookie = cookie
        self.cookie_time = now
        self.last_mac1 = None       # one reply per message we sent
        return True
