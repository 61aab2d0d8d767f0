"""The one module that imports wgfast._native: C data plane handles and zero-copy numpy views.

Longer than ~400 lines on purpose: it is the Python face of csrc/wgfast.h, one thin wrapper
per C entry point in the contract's order (AEAD backends and their cross-check, the ring,
endpoints, then the DataPlane handle), and keeping every ffi/lib use in one module is what
lets the rest of the package stay free of cffi.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import nacl._sodium as _sodium
import numpy as np
import numpy.typing as npt

from wgfast._native import ffi, lib
from wgfast.endpoint import Endpoint
from wgfast.messages import AF_INET, AF_INET6

# A cffi pointer or struct: cffi itself checks its C type when it is passed to C.
CData = Any

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
    "init_handshake_crypto",
    "check_handshake_crypto",
]

# wg_addr as numpy sees it (44 bytes, no padding).
ADDR_DTYPE = np.dtype(
    [("family", "<u2"), ("port", "<u2"), ("scope_id", "<u4"), ("addr", "u1", (16,)),
     ("src_ifindex", "<u4"), ("src", "u1", (16,))]
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


_hs_mask: int | None = None


def init_handshake_crypto() -> int:
    """Load the handshake intake's crypto once (BLAKE2SMAC from OpenSSL 3, XChaCha20-Poly1305
    from libsodium); returns the WG_HS_* bits of what loaded."""
    global _hs_mask
    if _hs_mask is None:
        _hs_mask = lib.wg_hs_crypto_init(_sodium.__file__.encode())
    return _hs_mask


def check_handshake_crypto() -> str | None:
    """Cross-check C's keyed BLAKE2s against hashlib.blake2s and its XChaCha20-Poly1305
    against PyNaCl's.  Returns None when both agree, else why not (C then leaves the MAC
    checks to Python, which is slower but correct)."""
    import hashlib

    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt as xenc

    mask = init_handshake_crypto()
    if not mask & lib.WG_HS_BLAKE2S:
        return "OpenSSL 3 BLAKE2SMAC (libcrypto.so.3) is not available"
    if not mask & lib.WG_HS_XCHACHA:
        return "libsodium XChaCha20-Poly1305 is not available"
    out = ffi.new("uint8_t[16]")
    for keylen in (16, 32):
        for size in (0, 1, 63, 64, 65, 116, 132, 200):
            key, data = os.urandom(keylen), os.urandom(size)
            want = hashlib.blake2s(data, key=key, digest_size=16).digest()
            if lib.wg_blake2s_mac(key, keylen, data, size, out) != 0 or bytes(out) != want:
                return "C BLAKE2s MAC disagrees with hashlib.blake2s"
    # XChaCha: a cookie reply made in C must decrypt to a cookie PyNaCl agrees with.
    dp = lib.wg_dp_new(1, 1, 1420)
    try:
        mac1_key, cookie_key = os.urandom(32), os.urandom(32)
        lib.wg_hs_set_keys(dp, mac1_key, cookie_key)
        msg = os.urandom(148)
        src = ffi.new("wg_addr *", {"family": AF_INET, "port": 51820})
        reply = ffi.new("uint8_t[64]")
        if lib.wg_hs_cookie_reply(dp, msg, 148, src, 1.0, reply) != 0:
            return "C could not make a cookie reply"
        from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt as xdec
        r = bytes(reply)
        try:
            cookie = xdec(r[32:64], msg[116:132], r[8:32], cookie_key)
        except Exception:
            return "C XChaCha20-Poly1305 disagrees with PyNaCl"
        if xenc(cookie, msg[116:132], r[8:32], cookie_key) != r[32:64]:
            return "C XChaCha20-Poly1305 disagrees with PyNaCl"
    finally:
        lib.wg_dp_free(dp)
    return None


# The data plane's drop counters by index, named as in csrc/wgfast.h (WG_DROP_NO_ROUTE ->
# "no_route"): what Device.drops() and the metrics report.
DROP_REASONS: dict[int, str] = {getattr(lib, n): n[len("WG_DROP_"):].lower() for n in dir(lib)
                                if n.startswith("WG_DROP_") and n != "WG_DROP_NREASONS"}


def _c_array(cdecl: str, arr: np.ndarray, writable: bool = False) -> CData:
    """A C array over a numpy array's memory, no copy (the array must outlive the call)."""
    # numpy's stubs treat arrays as buffers only from Python 3.12 (PEP 688).
    return ffi.from_buffer(cdecl, arr, require_writable=writable)  # type: ignore[call-overload]


def _view(ptr: CData, ctype: str, n: int, dtype: npt.DTypeLike) -> np.ndarray:
    """A numpy array over C memory: no copy, lives as long as the C allocation."""
    dt = np.dtype(dtype)
    # numpy's stubs accept cffi buffers as buffers only from Python 3.12 (PEP 688).
    return np.frombuffer(ffi.buffer(ffi.cast(ctype, ptr), n * dt.itemsize),  # type: ignore[call-overload]
                         dtype=dt)


class Ring:
    """A wg_ring and numpy views of its slab and metadata (all zero-copy).

    slab[i] is slot i: the transport header at 0, the plaintext at HEADROOM.
    """

    HEADROOM = lib.WG_HEADROOM

    def __init__(self, nslots: int, data_cap: int) -> None:
        r = lib.wg_ring_new(nslots, data_cap)
        if r == ffi.NULL:
            raise ValueError(f"cannot allocate a ring of {nslots} x {data_cap} bytes")
        self._r: CData = r
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
    def ptr(self) -> CData:
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


# ---- the data-plane handle the device drives -------------------------------------------------


def addr_to_c(endpoint: tuple[str, int] | None, out: CData) -> None:
    """Fill a wg_addr from an Endpoint (with its source, if any), or from any (host, port)
    pair (no source); None clears."""
    ffi.memmove(out, bytes(ffi.sizeof("wg_addr")), ffi.sizeof("wg_addr"))
    if endpoint is None:
        return
    ep = endpoint if isinstance(endpoint, Endpoint) else Endpoint(*endpoint)
    packed = ep.packed                  # the encoding pack_endpoints uses for many at once
    v6 = len(packed) == 16
    out.family = AF_INET6 if v6 else AF_INET
    out.port = ep.port
    out.scope_id = ep.scope_id if v6 else 0
    ffi.memmove(out.addr, packed, len(packed))
    if ep.src is not None:
        fam = AF_INET6 if v6 else AF_INET
        try:
            spacked = socket.inet_pton(fam, ep.src[0])
        except OSError:
            raise ValueError(f"source {ep.src[0]} is not of the family of {ep.host}") from None
        ffi.memmove(out.src, spacked, len(spacked))
        out.src_ifindex = ep.src[1] if v6 else 0


def _addr_dtype() -> np.dtype:
    """wg_addr as numpy sees it, from cffi's layout (other fields may follow the four)."""
    names = ["family", "port", "scope_id", "addr"]
    return np.dtype({"names": names, "formats": ["<u2", "<u2", "<u4", ("u1", (16,))],
                     "offsets": [ffi.offsetof("wg_addr", n) for n in names],
                     "itemsize": ffi.sizeof("wg_addr")})


ADDR_LAYOUT = _addr_dtype()


def pack_endpoints(endpoints: list[Endpoint]) -> np.ndarray:
    """Endpoints -> a wg_addr array for DataPlane.set_endpoints (no sources: a configured
    endpoint clears the sticky one)."""
    n = len(endpoints)
    out = np.zeros(n, dtype=ADDR_LAYOUT)
    packed = [ep.packed for ep in endpoints]
    out["family"] = [AF_INET if len(p) == 4 else AF_INET6 for p in packed]
    out["port"] = [ep.port for ep in endpoints]
    out["scope_id"] = [ep.scope_id if len(p) == 16 else 0
                       for ep, p in zip(endpoints, packed, strict=True)]
    out["addr"] = np.frombuffer(b"".join(p if len(p) == 16 else p + bytes(12) for p in packed),
                                dtype=np.uint8).reshape(n, 16)
    return out


def addr_from_c(a: CData) -> Endpoint | None:
    if a.family == AF_INET:
        raw = bytes(a.src[0:4])
        src = (str(ipaddress.IPv4Address(raw)), 0) if any(raw) else None
        return Endpoint(str(ipaddress.IPv4Address(bytes(a.addr[0:4]))), int(a.port), src)
    if a.family == AF_INET6:
        host = str(ipaddress.IPv6Address(bytes(a.addr[0:16])))
        if a.scope_id:
            host = f"{host}%{a.scope_id}"
        raw = bytes(a.src[0:16])
        src = (str(ipaddress.IPv6Address(raw)), int(a.src_ifindex)) if any(raw) else None
        return Endpoint(host, int(a.port), src)
    return None


class DataPlane:
    """One wg_dp: peers' keys, endpoints, allowed IPs and clocks on the C side, and the I/O
    threads that run inside C with the GIL released."""

    CLOCK_FIELDS = (
        "last_data_sent", "last_data_recv", "last_auth_sent", "last_auth_recv",
        "pending_data_sent", "pending_data_recv",
    )

    def __init__(self, max_peers: int = 0, max_keypairs: int = 0, mtu: int = 1420) -> None:
        """max_peers / max_keypairs are upper bounds, 0 = C's limits (WG_PEERS_LIMIT,
        WG_KEYPAIRS_LIMIT); the tables start small and grow."""
        init_aead()
        dp = lib.wg_dp_new(max_peers, max_keypairs, mtu)
        if dp == ffi.NULL:
            raise MemoryError("wg_dp_new failed")
        self._dp = ffi.gc(dp, lib.wg_dp_free)
        self.max_peers = max_peers or lib.WG_PEERS_LIMIT
        self._take_views()
        self.drops = _view(lib.wg_dp_drops(self._dp), "uint8_t *", lib.WG_DROP_NREASONS, "<u8")
        # Batch-size counters (rows WG_BATCH_TUN/UDP), for metrics.
        self.batches = _view(lib.wg_dp_batches(self._dp), "uint8_t *", 2 * lib.WG_BATCH_STRIDE,
                             "<u8").reshape(2, lib.WG_BATCH_STRIDE)
        self._addr = ffi.new("wg_addr *")
        self._threads: list[threading.Thread] = []
        init_handshake_crypto()
        self._ev_max = 256
        self._evs = ffi.new("wg_event[]", self._ev_max)
        self._ev_stride = 160           # the largest handshake message is 148 bytes
        self._ev_data = ffi.new("uint8_t[]", self._ev_max * self._ev_stride)
        self._ctl_peers = ffi.new("uint32_t[]", self._ev_max)
        self._ctl_flags = ffi.new("uint32_t[]", self._ev_max)
        self._ctl_conf = ffi.new("uint32_t[]", self._ev_max)
        self.on_grow: list[object] = []      # callables run after the views were replaced

    def _take_views(self) -> None:
        c = lib.wg_dp_clocks(self._dp)
        n = self.capacity = int(c.max_peers)
        self.clocks = {f: _view(getattr(c, f), "double *", n, "<f8") for f in self.CLOCK_FIELDS}
        self.tx_bytes = _view(c.tx_bytes, "uint8_t *", n, "<u8")
        self.rx_bytes = _view(c.rx_bytes, "uint8_t *", n, "<u8")
        self.want_handshake = _view(c.want_handshake, "uint8_t *", n, "u1")
        self.active = _view(c.active, "uint8_t *", n, "u1")
        # Per-peer roaming counts (metrics), a per-peer table like the clocks.
        self.roams = _view(lib.wg_dp_roams(self._dp), "uint8_t *", n, "<u8")

    def reserve(self, npeers: int) -> bool:
        """Room for peer ids [0, npeers).  True if the tables grew: every view above is then
        new and on_grow callbacks have run (they must drop every view they took before: the
        old tables are freed after them).  OverflowError beyond max_peers."""
        if npeers <= self.capacity:
            return False
        r = lib.wg_dp_reserve(self._dp, npeers)
        if r == -errno.ENOSPC:
            raise OverflowError(f"more than {self.max_peers} peers")
        if r != 0:
            raise MemoryError("wg_dp_reserve failed")
        self._take_views()
        try:
            for fn in self.on_grow:
                fn()  # type: ignore[operator]
        finally:
            lib.wg_dp_free_retired(self._dp)
        return True

    @property
    def handle(self) -> CData:
        return self._dp

    def set_mtu(self, mtu: int) -> None:
        lib.wg_dp_set_mtu(self._dp, mtu)

    # peers
    def peer_add(self, peer: int) -> None:
        try:
            self.reserve(peer + 1)
        except OverflowError:
            raise ValueError(f"peer id {peer} out of range") from None
        if lib.wg_peer_add(self._dp, peer) != 0:
            raise ValueError(f"peer id {peer} out of range")

    def peer_remove(self, peer: int) -> None:
        lib.wg_peer_remove(self._dp, peer)

    def set_endpoint(self, peer: int, endpoint: Endpoint | None) -> None:
        addr_to_c(endpoint, self._addr)
        lib.wg_peer_set_endpoint(self._dp, peer, self._addr)

    def set_endpoints(self, peers: list[int], addrs: np.ndarray) -> None:
        """Endpoints of many peers in one call; addrs from pack_endpoints."""
        ids = np.asarray(peers, dtype=np.uint32)
        lib.wg_peer_set_endpoints(self._dp, _c_array("uint32_t[]", ids),
                                  _c_array("wg_addr[]", addrs), len(peers))

    def get_endpoints(self, peers: np.ndarray) -> np.ndarray:
        """The endpoints of many peers (ADDR_LAYOUT records; family 0 = none)."""
        ids = np.ascontiguousarray(peers, dtype=np.uint32)
        out = np.zeros(len(ids), dtype=ADDR_LAYOUT)
        lib.wg_peer_get_endpoints(self._dp, _c_array("uint32_t[]", ids),
                                  _c_array("wg_addr[]", out, writable=True),
                                  len(ids))
        return out

    def get_endpoint(self, peer: int) -> Endpoint | None:
        lib.wg_peer_get_endpoint(self._dp, peer, self._addr)
        return addr_from_c(self._addr)

    def add_bytes(self, peer: int, tx: int = 0, rx: int = 0) -> None:
        lib.wg_peer_add_bytes(self._dp, peer, tx, rx)

    # keypairs
    def keypair_install(self, peer: int, local_index: int, remote_index: int, send_key: bytes,
                        recv_key: bytes, created: float, initiator: bool, current: bool) -> None:
        r = lib.wg_keypair_install(self._dp, peer, local_index, remote_index, send_key, recv_key,
                                   created, int(initiator), int(current))
        if r != 0:
            raise OSError(-r, f"wg_keypair_install failed ({r})")

    def keypair_remove(self, local_index: int) -> None:
        lib.wg_keypair_remove(self._dp, local_index)

    def keypair_current(self, peer: int) -> int | None:
        out = ffi.new("uint32_t *")
        return int(out[0]) if lib.wg_keypair_current(self._dp, peer, out) == 0 else None

    # allowed IPs
    def aip_insert(self, peer: int, network: ipaddress.IPv4Network | ipaddress.IPv6Network
                   ) -> None:
        fam = AF_INET if network.version == 4 else AF_INET6
        r = lib.wg_aip_insert(self._dp, fam, network.network_address.packed, network.prefixlen,
                              peer)
        if r != 0:
            raise OSError(-r, f"wg_aip_insert failed ({r})")

    def aip_remove(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        fam = AF_INET if network.version == 4 else AF_INET6
        lib.wg_aip_remove(self._dp, fam, network.network_address.packed, network.prefixlen)

    def aip_remove_peer(self, peer: int) -> None:
        lib.wg_aip_remove_peer(self._dp, peer)

    def aip_insert_many(self, families: bytes, keys: bytes, peers: list[int]) -> list[int]:
        """Insert n prefixes (families: one byte each, 2 or 10; keys: 17 bytes each, 16 address
        bytes then the cidr) under one lock; returns each prefix's previous owner (-1 new)."""
        n = len(peers)
        if not n:
            return []
        prev = ffi.new("int32_t[]", n)
        r = lib.wg_aip_insert_many(self._dp, families, keys, ffi.new("uint32_t[]", peers), n,
                                   prev)
        if r != n:
            raise OSError(-r if r < 0 else errno.ENOMEM, f"wg_aip_insert_many failed ({r})")
        return list(ffi.unpack(prev, n))

    def aip_remove_many(self, families: bytes, keys: bytes, peers: list[int]) -> list[int]:
        """Remove each prefix if peers[i] owns it; returns the owners found (-1 none)."""
        n = len(peers)
        if not n:
            return []
        prev = ffi.new("int32_t[]", n)
        r = lib.wg_aip_remove_many(self._dp, families, keys, ffi.new("uint32_t[]", peers), n,
                                   prev)
        if r != n:
            raise OSError(-r, f"wg_aip_remove_many failed ({r})")
        return list(ffi.unpack(prev, n))

    def aip_lookup(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
        fam = AF_INET if address.version == 4 else AF_INET6
        r = lib.wg_aip_lookup(self._dp, fam, address.packed)
        return None if r < 0 else int(r)

    # events
    def eventfd(self) -> int:
        return int(lib.wg_dp_eventfd(self._dp))

    def events_pending(self) -> int:
        """Handshake messages queued for Python (control flags cannot back up)."""
        return int(lib.wg_hs_queued(self._dp))

    def pop_events(self, max_events: int = 1 << 30,
                   ) -> list[tuple[int, int, int, Endpoint | None, bytes]]:
        """Control events first, then handshake messages, at most max_events of them:
        (type, peer, receiver, source, data)."""
        out: list[tuple[int, int, int, Endpoint | None, bytes]] = []
        while len(out) < max_events:
            want = min(self._ev_max, max_events - len(out))
            n = lib.wg_events_pop(self._dp, self._evs, self._ev_data, self._ev_stride, want)
            for k in range(n):
                e = self._evs[k]
                if e.type == 0:
                    continue        # voided: its peer was removed while it was queued
                data = bytes(ffi.buffer(self._ev_data + k * self._ev_stride, e.len))
                out.append((int(e.type), int(e.peer), int(e.receiver), addr_from_c(e.addr),
                            data))
            if n < want:
                break
        return out

    def collect_control(self, max_peers: int = 256) -> list[tuple[int, int, int]]:
        """Peers whose control flags C set since the last call: (peer, WG_CTL_* flags,
        local index C promoted when WG_CTL_CONFIRMED is set).  At most max_peers."""
        n = lib.wg_ctl_collect(self._dp, self._ctl_peers, self._ctl_flags, self._ctl_conf,
                               min(max_peers, self._ev_max))
        return [(int(self._ctl_peers[k]), int(self._ctl_flags[k]), int(self._ctl_conf[k]))
                for k in range(n)]

    def pop_handshakes(self, max_msgs: int = 64) -> list[tuple[bytes, Endpoint | None, bool]]:
        """Handshake messages that passed C's intake, fairly between sources: (message,
        source, verified) -- verified False when C could not check the MACs."""
        n = lib.wg_hs_pop(self._dp, self._evs, self._ev_data, self._ev_stride,
                          min(max_msgs, self._ev_max))
        out = []
        for k in range(n):
            e = self._evs[k]
            out.append((bytes(ffi.buffer(self._ev_data + k * self._ev_stride, e.len)),
                        addr_from_c(e.addr), not (e.receiver & lib.WG_HS_UNVERIFIED)))
        return out

    def pending(self) -> bool:
        """Anything left for the control plane (handshakes queued, control flags set)."""
        return bool(lib.wg_hs_queued(self._dp) or lib.wg_ctl_pending(self._dp))

    def wake(self) -> None:
        """Make the eventfd readable again (more is waiting than one turn took)."""
        os.eventfd_write(self.eventfd(), 1)

    # handshake intake
    def set_handshake_keys(self, mac1_key: bytes | None, cookie_key: bytes | None) -> None:
        """Our mac1 and cookie keys (cookie.CookieChecker computes them); None = no key."""
        if mac1_key is None or cookie_key is None:
            lib.wg_hs_set_keys(self._dp, ffi.NULL, ffi.NULL)
        else:
            lib.wg_hs_set_keys(self._dp, mac1_key, cookie_key)

    def under_load(self, now: float) -> bool:
        return bool(lib.wg_hs_under_load(self._dp, now))

    def receive_handshake(self, msg: bytes, src: Endpoint, now: float) -> int:
        """Feed one handshake datagram to the intake as the receive loop does (tests)."""
        addr_to_c(src, self._addr)
        return int(lib.wg_hs_receive(self._dp, msg, len(msg), self._addr, now))

    # staged packets
    def stage(self, peer: int, packet: bytes) -> None:
        if lib.wg_stage_put(self._dp, peer, packet, len(packet)) != 0:
            raise MemoryError("wg_stage_put failed")

    def flush_staged(self, peer: int, now: float) -> int:
        return int(lib.wg_stage_flush(self._dp, peer, now))

    def drop_staged(self, peer: int) -> int:
        return int(lib.wg_stage_drop(self._dp, peer))

    def staged_count(self, peer: int) -> int:
        return int(lib.wg_stage_count(self._dp, peer))

    # I/O
    def send_packet(self, peer: int, packet: bytes, now: float) -> int:
        return int(lib.wg_send_packet(self._dp, peer, packet, len(packet), now))

    def set_offloads(self, tun_vnet: bool, udp_gso: bool, udp_gro: bool,
                     tun_uso: bool = False) -> None:
        """Tell the loops what the descriptors were opened with (before start()); tun_uso =
        the TUN took TUN_F_USO4/6, so UDP datagrams may be coalesced on TUN writes."""
        tun = (lib.WG_TUN_VNET | (lib.WG_TUN_USO if tun_uso else 0)) if tun_vnet else 0
        lib.wg_dp_set_offloads(self._dp, tun, int(udp_gso), int(udp_gro))

    def test_delay(self, where: int, usec: int) -> None:
        """Tests: make the loops pause between two lock holds (WG_DELAY_*)."""
        lib.wg_dp_test_delay(self._dp, where, usec)

    def offloads(self) -> dict[str, bool]:
        bits = lib.wg_dp_offloads(self._dp)
        return {"tun_vnet": bool(bits & lib.WG_OFFLOAD_TUN_VNET),
                "udp_gso4": bool(bits & lib.WG_OFFLOAD_UDP_GSO4),
                "udp_gso6": bool(bits & lib.WG_OFFLOAD_UDP_GSO6),
                "udp_gro": bool(bits & lib.WG_OFFLOAD_UDP_GRO),
                "tun_uso": bool(bits & lib.WG_OFFLOAD_TUN_USO)}

    def start(self, tun_fd: int, udp4_fd: int, udp6_fd: int) -> None:
        """Start the send thread and one receive thread per socket (-1 = no such socket)."""
        lib.wg_dp_set_fds(self._dp, tun_fd, udp4_fd, udp6_fd)
        targets: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [(lib.wg_run_send, (self._dp,))]
        targets += [(lib.wg_run_receive, (self._dp, fd)) for fd in (udp4_fd, udp6_fd) if fd >= 0]
        for fn, args in targets:
            t = threading.Thread(target=fn, args=args, daemon=True, name="wgfast-dataplane")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        lib.wg_dp_stop(self._dp)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        lib.wg_dp_resume(self._dp)
