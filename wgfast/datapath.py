"""The one module that imports wgfast._native: C data plane handles and zero-copy numpy views."""

from __future__ import annotations

import os
import time

import nacl._sodium as _sodium
import numpy as np

from wgfast._native import ffi, lib

__all__ = [
    "ffi",
    "lib",
    "init_aead",
    "ADDR_DTYPE",
    "Ring",
    "BACKENDS",
    "available_backends",
    "choose_backend",
    "cross_check",
]

# wg_addr as numpy sees it (24 bytes, no padding).
ADDR_DTYPE = np.dtype(
    [("family", "<u2"), ("port", "<u2"), ("scope_id", "<u4"), ("addr", "u1", (16,))]
)

BACKENDS: dict[str, int] = {
    "libsodium": lib.WG_AEAD_SODIUM,
    "openssl": lib.WG_AEAD_OPENSSL,
    "ipsec-mb": lib.WG_AEAD_IPSECMB,
}

_backends_mask: int | None = None


def init_aead() -> int:
    """Load the AEAD backends once; returns the bitmask of those available."""
    global _backends_mask
    if _backends_mask is None:
        _backends_mask = lib.wg_aead_init(_sodium.__file__.encode())
    return _backends_mask


def _view(ptr: object, ctype: str, n: int, dtype: np.dtype | str) -> np.ndarray:
    """A numpy array over C memory: no copy, lives as long as the C allocation."""
    dt = np.dtype(dtype)
    return np.frombuffer(ffi.buffer(ffi.cast(ctype, ptr), n * dt.itemsize), dtype=dt)


class Ring:
    """A wg_ring and numpy views of its slab and metadata (all zero-copy).

    slab[i] is slot i: the transport header at 0, the plaintext at HEADROOM.
    """

    HEADROOM = lib.WG_HEADROOM

    def __init__(self, nslots: int, data_cap: int) -> None:
        r = lib.wg_ring_new(nslots, data_cap)
        if r == ffi.NULL:
            raise ValueError(f"cannot allocate a ring of {nslots} x {data_cap} bytes")
        self._r = r
        self.nslots = int(r.nslots)
        self.slot_size = int(r.slot_size)
        self.data_cap = int(r.data_cap)
        n = self.nslots
        self.slab = _view(r.slab, "uint8_t *", n * self.slot_size, np.uint8).reshape(
            n, self.slot_size
        )
        self.len = _view(r.len, "uint32_t *", n, np.uint32)
        self.peer = _view(r.peer, "uint32_t *", n, np.uint32)
        self.receiver = _view(r.receiver, "uint32_t *", n, np.uint32)
        self.counter = _view(r.counter, "uint64_t *", n, np.uint64)
        self.status = _view(r.status, "uint8_t *", n, np.uint8)
        self.addr = _view(r.addr, "wg_addr *", n, ADDR_DTYPE)

    @property
    def ptr(self) -> object:
        """The wg_ring * to pass to C."""
        if self._r is None:
            raise ValueError("ring is closed")
        return self._r

    def put_plaintext(self, i: int, data: bytes, peer: int = 0) -> None:
        """Slot i gets a plaintext (at HEADROOM) for peer, ready for wg_seal_batch."""
        if len(data) > self.data_cap:
            raise ValueError(f"{len(data)} bytes do not fit a {self.data_cap}-byte slot")
        self.slab[i, self.HEADROOM : self.HEADROOM + len(data)] = np.frombuffer(data, np.uint8)
        self.len[i] = len(data)
        self.peer[i] = peer

    def put_message(self, i: int, data: bytes) -> None:
        """Slot i gets a received transport message (at 0), ready for wg_open_batch."""
        if len(data) > self.slot_size:
            raise ValueError(f"{len(data)} bytes do not fit a {self.slot_size}-byte slot")
        self.slab[i, : len(data)] = np.frombuffer(data, np.uint8)
        self.len[i] = len(data)

    def message(self, i: int) -> bytes:
        """The sealed transport message in slot i (after wg_seal_batch)."""
        return self.slab[i, : int(self.len[i])].tobytes()

    def plaintext(self, i: int) -> bytes:
        """The opened plaintext in slot i (after wg_open_batch)."""
        return self.slab[i, self.HEADROOM : self.HEADROOM + int(self.len[i])].tobytes()

    def close(self) -> None:
        if getattr(self, "_r", None) is not None:
            # Drop the views first so nothing reads freed memory through them.
            for name in ("slab", "len", "peer", "receiver", "counter", "status", "addr"):
                setattr(self, name, None)
            lib.wg_ring_free(self._r)
            self._r = None

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def available_backends() -> list[str]:
    """Names of the AEAD backends that loaded on this machine."""
    init_aead()
    return [name for name, b in BACKENDS.items() if lib.wg_aead_available(b)]


def cross_check(name: str, reference: str = "libsodium") -> bool:
    """True if backend `name` seals to exactly the reference's bytes and opens them back."""
    init_aead()
    b, ref = BACKENDS[name], BACKENDS[reference]
    if not (lib.wg_aead_available(b) and lib.wg_aead_available(ref)):
        return False
    key = os.urandom(32)
    for size in (0, 1, 15, 16, 17, 63, 64, 65, 255, 1420, 8192):
        counter = int.from_bytes(os.urandom(8), "little") >> 4
        pt = os.urandom(size)
        a = ffi.new("uint8_t[]", size + 16)
        c = ffi.new("uint8_t[]", size + 16)
        ffi.memmove(a, pt, size)
        ffi.memmove(c, pt, size)
        if lib.wg_aead_seal(b, key, counter, a, size):
            return False
        if lib.wg_aead_seal(ref, key, counter, c, size):
            return False
        if ffi.buffer(a)[:] != ffi.buffer(c)[:]:
            return False
        if lib.wg_aead_open(b, key, counter, a, size, a + size) or ffi.buffer(a, size)[:] != pt:
            return False
        if size:
            c[0] ^= 1   # a forgery must fail
            if lib.wg_aead_open(b, key, counter, c, size, c + size) == 0:
                return False
    return True


def _measure(backend: int, size: int = 1420, budget: float = 0.004) -> float:
    """Bytes per second of the backend's plain loop, over about `budget` seconds."""
    key = os.urandom(32)
    buf = ffi.new("uint8_t[]", size + 16)
    lib.wg_aead_seal_loop(backend, key, buf, size, 8)   # warm up: per-thread state
    n, best = 16, 0.0
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        lib.wg_aead_seal_loop(backend, key, buf, size, n)
        dt = time.perf_counter() - t
        best = max(best, n * size / dt if dt > 0 else 0.0)
        n = min(n * 2, 1024)
    return best


def choose_backend(name: str | None = None) -> str:
    """Select the data plane's AEAD backend: `name`, or the fastest one that passes the
    cross-check, measured for a few ms at 1,420 bytes.  Returns the selected name."""
    init_aead()
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"unknown AEAD backend {name!r}; known: {', '.join(BACKENDS)}")
        if not lib.wg_aead_available(BACKENDS[name]):
            raise ValueError(f"AEAD backend {name!r} is not available on this machine")
        if name != "libsodium" and not cross_check(name):
            raise RuntimeError(f"AEAD backend {name!r} disagrees with libsodium")
        lib.wg_aead_select(BACKENDS[name])
        return name
    candidates = [n for n in available_backends() if n == "libsodium" or cross_check(n)]
    if not candidates:
        raise RuntimeError("no AEAD backend available")
    best = max(candidates, key=lambda n: _measure(BACKENDS[n]))
    lib.wg_aead_select(BACKENDS[best])
    return best
