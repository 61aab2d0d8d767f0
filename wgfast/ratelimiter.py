"""Per-source token bucket for handshake messages, shaped like the kernel's ratelimiter.

The device applies it in C (csrc/ratelimiter.c, the same rules in integer nanoseconds); this
is the Python twin that C is tested against, and the limiter when C has no BLAKE2SMAC.

20 packets per second per source with a burst of 5; a source is an IPv4 address or an IPv6
/64 prefix (one host usually owns a whole /64).  Memory is bounded: at most `max_entries`
sources; entries idle for more than a second are collected (a full bucket carries no state).
"""

from __future__ import annotations

from .messages import HANDSHAKES_BURSTABLE, HANDSHAKES_PER_SECOND

PACKET_COST = 1.0 / HANDSHAKES_PER_SECOND
TOKEN_MAX = PACKET_COST * HANDSHAKES_BURSTABLE
GC_INTERVAL = 1.0


def source_key(addr: bytes) -> bytes:
    """The bucket key: the 4-byte IPv4 address, or the first 8 bytes (/64) of an IPv6 one.
    IPv4-mapped IPv6 addresses count as IPv4."""
    if len(addr) == 4:
        return bytes(addr)
    if len(addr) == 16:
        if addr[:12] == b"\x00" * 10 + b"\xff\xff":
            return bytes(addr[12:])
        return bytes(addr[:8])
    raise ValueError("address must be 4 or 16 bytes")


class RateLimiter:
    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._buckets: dict[bytes, list[float]] = {}     # key -> [last_time, tokens]
        self._last_gc = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    def collect(self, now: float) -> None:
        """Forget sources idle for over a second: their buckets would be full anyway."""
        self._last_gc = now
        stale = [k for k, (t, _) in self._buckets.items() if now - t > GC_INTERVAL]
        for k in stale:
            del self._buckets[k]

    def allow(self, addr: bytes, now: float) -> bool:
        if now - self._last_gc >= GC_INTERVAL:
            self.collect(now)
        key = source_key(addr)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_entries:
                self.collect(now)
                if len(self._buckets) >= self.max_entries:
                    return False        # table full of active sources: refuse new ones
            self._buckets[key] = [now, TOKEN_MAX - PACKET_COST]
            return True
        tokens = min(TOKEN_MAX, b[1] + max(0.0, now - b[0]))
        b[0] = now
        # Small epsilon: float sums of 1/20 must not lose a token to rounding.
        if tokens >= PACKET_COST - 1e-9:
            b[1] = tokens - PACKET_COST
            return True
        b[1] = tokens
        return False
