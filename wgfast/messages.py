"""WireGuard wire formats and every protocol constant (whitepaper §5.4 and §6).

The only place that knows byte offsets.  Parsers return typed dataclasses or raise
`MessageError(reason)`; no other exception ever leaves a parser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# ---- protocol constants (whitepaper §6.1, plus the kernel's values where the paper is silent)
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
REKEY_TIMEOUT_JITTER_MAX = 1.0 / 3.0          # retries add uniform jitter in [0, 333 ms)
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)   # 18
COOKIE_SECRET_MAX_AGE = 120.0                 # responder rotates its cookie secret
COOKIE_VALID_FOR = 120.0 - 5.0                # initiator: cookie lifetime minus latency margin
INITIATIONS_PER_SECOND = 50                   # kernel: per-peer initiation flood limit
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME       # wipe all key material without a new handshake
MAX_STAGED_PACKETS = 128                      # per-peer queue while no key (oldest dropped;
                                              # the kernel's; C's WG_MAX_STAGED)
HANDSHAKES_PER_SECOND = 20                    # kernel ratelimiter: packets/s per source
HANDSHAKES_BURSTABLE = 5

# ---- address families as wg_addr and the allowed-IP records carry them (Linux's AF_* values)
AF_INET = 2
AF_INET6 = 10

# ---- message types and sizes
MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE_REPLY = 3
MSG_DATA = 4

KEY_LEN = 32
TAG_LEN = 16
MAC_LEN = 16
TIMESTAMP_LEN = 12
# TAI64N seconds label: 2^62 + TAI seconds, and TAI ran 10 s ahead of UTC in 1972.  The kernel
# and wireguard-go add both; a peer that added only 2^62 would look 10 s in the past to them.
TAI64N_BASE = 0x400000000000000A
COOKIE_NONCE_LEN = 24
COOKIE_LEN = 16

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
DATA_HEADER_LEN = 16
DATA_MIN_LEN = DATA_HEADER_LEN + TAG_LEN        # a keepalive

# offsets of mac1 / mac2 inside the messages that carry them
INITIATION_MAC1_OFF = INITIATION_LEN - 2 * MAC_LEN   # 116
INITIATION_MAC2_OFF = INITIATION_LEN - MAC_LEN       # 132
RESPONSE_MAC1_OFF = RESPONSE_LEN - 2 * MAC_LEN       # 60
RESPONSE_MAC2_OFF = RESPONSE_LEN - MAC_LEN           # 76

_HDR = struct.Struct("<B3x")
_INIT = struct.Struct("<B3xI32s48s28s16s16s")
_RESP = struct.Struct("<B3xII32s16s16s16s")
_COOKIE = struct.Struct("<B3xI24s32s")
_DATA = struct.Struct("<B3xIQ")
assert _INIT.size == INITIATION_LEN and _RESP.size == RESPONSE_LEN
assert _COOKIE.size == COOKIE_REPLY_LEN and _DATA.size == DATA_HEADER_LEN


class MessageError(ValueError):
    """A malformed or unacceptable message; `reason` is a short machine-friendly word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes        # 32
    encrypted_static: bytes  # 32 + 16
    encrypted_timestamp: bytes  # 12 + 16
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def pack(self) -> bytes:
        return _INIT.pack(MSG_INITIATION, self.sender, self.ephemeral, self.encrypted_static,
                          self.encrypted_timestamp, self.mac1, self.mac2)


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes        # 32
    encrypted_nothing: bytes  # 0 + 16
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def pack(self) -> bytes:
        return _RESP.pack(MSG_RESPONSE, self.sender, self.receiver, self.ephemeral,
                          self.encrypted_nothing, self.mac1, self.mac2)


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes            # 24
    encrypted_cookie: bytes  # 16 + 16

    def pack(self) -> bytes:
        return _COOKIE.pack(MSG_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie)


@dataclass(frozen=True, slots=True)
class TransportHeader:
    receiver: int
    counter: int
    length: int             # whole message length (header + ciphertext + tag)

    def pack(self) -> bytes:
        return _DATA.pack(MSG_DATA, self.receiver, self.counter)


Message = Initiation | Response | CookieReply | TransportHeader

_EXPECTED_LEN = {MSG_INITIATION: INITIATION_LEN, MSG_RESPONSE: RESPONSE_LEN,
                 MSG_COOKIE_REPLY: COOKIE_REPLY_LEN}


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The type of a message after checking the 4-byte header (type + three zero bytes)."""
    if len(data) < 4:
        raise MessageError("short")
    t = data[0]
    if data[1] or data[2] or data[3]:
        raise MessageError("reserved-nonzero")
    if t not in (MSG_INITIATION, MSG_RESPONSE, MSG_COOKIE_REPLY, MSG_DATA):
        raise MessageError("unknown-type")
    want = _EXPECTED_LEN.get(t)
    if want is not None and len(data) != want:
        raise MessageError("bad-length")
    if t == MSG_DATA and len(data) < DATA_MIN_LEN:
        raise MessageError("short")
    return t


def parse(data: bytes | bytearray | memoryview) -> Message:
    """Parse any WireGuard message; raises MessageError only."""
    t = message_type(data)
    b = bytes(data) if t != MSG_DATA else data
    if t == MSG_INITIATION:
        _, s, e, st, ts, m1, m2 = _INIT.unpack(b)
        return Initiation(s, e, st, ts, m1, m2)
    if t == MSG_RESPONSE:
        _, s, r, e, en, m1, m2 = _RESP.unpack(b)
        return Response(s, r, e, en, m1, m2)
    if t == MSG_COOKIE_REPLY:
        _, r, n, c = _COOKIE.unpack(b)
        return CookieReply(r, n, c)
    _, r, c = _DATA.unpack_from(b, 0)
    return TransportHeader(r, c, len(data))


def _expect(data: bytes | bytearray | memoryview, kind: type, t: int) -> Message:
    m = parse(data)
    if not isinstance(m, kind):
        raise MessageError(f"not-type-{t}")
    return m


def parse_initiation(data: bytes | bytearray | memoryview) -> Initiation:
    return _expect(data, Initiation, MSG_INITIATION)  # type: ignore[return-value]


def parse_response(data: bytes | bytearray | memoryview) -> Response:
    return _expect(data, Response, MSG_RESPONSE)  # type: ignore[return-value]


def parse_cookie_reply(data: bytes | bytearray | memoryview) -> CookieReply:
    return _expect(data, CookieReply, MSG_COOKIE_REPLY)  # type: ignore[return-value]


def mac1_offset(data: bytes | bytearray | memoryview) -> int:
    """Offset of mac1 in an initiation or response (mac2 follows it)."""
    t = message_type(data)
    if t == MSG_INITIATION:
        return INITIATION_MAC1_OFF
    if t == MSG_RESPONSE:
        return RESPONSE_MAC1_OFF
    raise MessageError("no-macs")
