"""TUN offloads: segmenting a 64 KB TCP super-packet and coalescing 44 segments, each against a
plain memcpy of the same bytes measured in the same run; coalescing 64 small UDP datagrams
(one TUN write instead of 64).

    python3 -m pytest bench/bench_offload.py        (pytest-benchmark; extra_info as bench/)
    python3 bench/bench_offload.py                  (a table with Gbit/s and ratios)
"""

from __future__ import annotations

import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgfast.dataplane import ffi, lib  # noqa: E402

MSS = 1380
NSEG = 44                 # IP length 40 + 44 * 1380 = 60760 bytes, what fits 64 KB at this MSS
PAYLOAD = MSS * 47        # the super-packet: 47 segments, 64860 payload bytes (< 65535 IP)


def _csum(data: bytes) -> int:
    """The folded RFC 1071 sum, from the data plane's own checksum (tested in tests/)."""
    return ~lib.wg_inet_csum(ffi.from_buffer(data), len(data)) & 0xFFFF


def _ipv4(l4: bytes, ident: int, proto: int = 6) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0,
                    b"\x0a\0\0\1", b"\x0a\0\0\2")
    return h[:10] + struct.pack("!H", ~_csum(h) & 0xFFFF) + h[12:] + l4


def _udp(payload: bytes) -> bytes:
    l4 = struct.pack("!HHHH", 4000, 5201, 8 + len(payload), 0) + payload
    ps = b"\x0a\0\0\1\x0a\0\0\2" + struct.pack("!BBH", 0, 17, len(l4))
    c = ~_csum(ps + l4) & 0xFFFF or 0xFFFF
    return l4[:6] + struct.pack("!H", c) + l4[8:]


def _tcp(seq: int, payload: bytes, flags: int = 0x10, partial: bool = False) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 5 << 4, flags, 65000, 0, 0) + payload
    ps = b"\x0a\0\0\1\x0a\0\0\2" + struct.pack("!BBH", 0, 6, len(l4))
    c = _csum(ps) if partial else ~_csum(ps + l4) & 0xFFFF
    return l4[:16] + struct.pack("!H", c) + l4[18:]


class World:
    """Buffers for both benchmarks, allocated once."""

    def __init__(self) -> None:
        rng = random.Random(7)
        payload = rng.randbytes(PAYLOAD)
        vnet = struct.pack("<BBHHHH", 1, 1, 40, MSS, 20, 16)
        sp = vnet + _ipv4(_tcp(1, payload, partial=True), 9)
        self.super_len = len(sp)
        self.super_pkt = ffi.new("uint8_t[]", sp)
        self.nsegs = -(-PAYLOAD // MSS)
        self.seg_bufs = [ffi.new("uint8_t[]", 2048) for _ in range(64)]
        self.seg_out = ffi.new("uint8_t *[]", self.seg_bufs)
        self.seg_lens = ffi.new("uint32_t[]", 64)
        self.copy_dst = ffi.new("uint8_t[]", 65536 + 64)

        segs = [_ipv4(_tcp(1 + k * MSS, payload[k * MSS:(k + 1) * MSS]), 100 + k)
                for k in range(NSEG)]
        self.gro_bytes = sum(len(s) for s in segs)
        self.gro_bufs = [ffi.new("uint8_t[]", 16 + len(s)) for s in segs]
        for b, s in zip(self.gro_bufs, segs, strict=True):
            ffi.memmove(b + 16, s, len(s))
        self.gro_ptrs = ffi.new("uint8_t *[]", [b + 16 for b in self.gro_bufs])
        self.gro_lens = ffi.new("uint32_t[]", [len(s) for s in segs])
        self.scratch = ffi.new("uint8_t[]", 4 * 65600)
        self.out_ptrs = ffi.new("uint8_t *[]", NSEG)
        self.out_lens = ffi.new("uint32_t[]", NSEG)
        self.gro_src = ffi.new("uint8_t[]", self.gro_bytes)

        dgrams = [_ipv4(_udp(rng.randbytes(64)), 200 + k, proto=17) for k in range(64)]
        self.udp_bufs = [ffi.new("uint8_t[]", 16 + len(d)) for d in dgrams]
        for b, d in zip(self.udp_bufs, dgrams, strict=True):
            ffi.memmove(b + 16, d, len(d))
        self.udp_ptrs = ffi.new("uint8_t *[]", [b + 16 for b in self.udp_bufs])
        self.udp_lens = ffi.new("uint32_t[]", [len(d) for d in dgrams])
        self.udp_outs = ffi.new("uint8_t *[]", 64)
        self.udp_outlens = ffi.new("uint32_t[]", 64)

    def segment(self) -> int:
        return lib.wg_vnet_segment(self.super_pkt, self.super_len, self.seg_out, 2048,
                                   self.seg_lens, 64)

    def copy_super(self) -> None:
        ffi.memmove(self.copy_dst, self.super_pkt, self.super_len)

    def coalesce(self) -> int:
        return lib.wg_gro_coalesce(self.gro_ptrs, self.gro_lens, NSEG, self.scratch,
                                   4 * 65600, self.out_ptrs, self.out_lens, NSEG, 0)

    def coalesce_udp(self) -> int:
        return lib.wg_gro_coalesce(self.udp_ptrs, self.udp_lens, 64, self.scratch, 4 * 65600,
                                   self.udp_outs, self.udp_outlens, 64, lib.WG_GRO_UDP)

    def copy_segments(self) -> None:
        ffi.memmove(self.copy_dst, self.gro_src, self.gro_bytes)


_world: World | None = None


def world() -> World:
    global _world
    if _world is None:
        _world = World()
        assert _world.segment() == _world.nsegs
        assert _world.coalesce() == 1
        assert _world.coalesce_udp() == 1
    return _world


# ---- pytest-benchmark ---------------------------------------------------------------------

def test_segment_64k(benchmark) -> None:
    w = world()
    benchmark.extra_info.update(label="segment 64K mss1380", bytes=PAYLOAD, msgs=w.nsegs)
    assert benchmark(w.segment) == w.nsegs


def test_memcpy_64k(benchmark) -> None:
    w = world()
    benchmark.extra_info.update(label="memcpy 64K", bytes=PAYLOAD, msgs=1)
    benchmark(w.copy_super)


def test_coalesce_44(benchmark) -> None:
    w = world()
    benchmark.extra_info.update(label="coalesce 44x1380", bytes=NSEG * MSS, msgs=NSEG)
    assert benchmark(w.coalesce) == 1


def test_coalesce_udp_64x64(benchmark) -> None:
    w = world()
    benchmark.extra_info.update(label="coalesce udp 64x64", bytes=64 * 64, msgs=64)
    assert benchmark(w.coalesce_udp) == 1


def test_memcpy_44(benchmark) -> None:
    w = world()
    benchmark.extra_info.update(label="memcpy 44x1420", bytes=NSEG * MSS, msgs=1)
    benchmark(w.copy_segments)


# ---- standalone ---------------------------------------------------------------------------

def _best(fn, n: int = 2000, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _noop() -> None:
    pass


def main() -> None:
    w = world()
    call = _best(lambda: lib.wg_inet_csum(w.copy_dst, 0))
    rows = [
        ("segment 64 KB super-packet, MSS 1380", _best(w.segment), PAYLOAD),
        ("memcpy of the same 64 KB (baseline)", _best(w.copy_super), PAYLOAD),
        ("coalesce 44 x 1380-byte segments", _best(w.coalesce), NSEG * MSS),
        ("memcpy of the same 44 segments (baseline)", _best(w.copy_segments), NSEG * MSS),
    ]
    print(f"(a cffi call with no work costs {call * 1e6:.2f} us; included below)")
    print(f"{'':45s} {'us/call':>8s} {'Gbit/s payload':>15s}")
    for name, t, nbytes in rows:
        print(f"{name:45s} {t * 1e6:8.2f} {nbytes * 8 / t / 1e9:15.1f}")
    print(f"segment / memcpy time:  {rows[0][1] / rows[1][1]:.2f}x")
    print(f"coalesce / memcpy time: {rows[2][1] / rows[3][1]:.2f}x")
    t = _best(w.coalesce_udp)
    print(f"coalesce 64 x 64-byte UDP datagrams into one write: {t * 1e6:.2f} us "
          f"({t / 64 * 1e9:.0f} ns per datagram)")


if __name__ == "__main__":
    main()
