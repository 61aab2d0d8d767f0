"""Packets for the offload tests (test_gso, test_gro, test_offload), built independently of
the C code: IPv4/IPv6 with TCP or UDP, the virtio_net_hdr in front of a super-packet, a parsed
view that checks every field and checksum of one output packet, and thin calls into the C
segmenter (gso.c) and coalescer (gro.c).  Header layouts: RFC 791 (IPv4), RFC 8200 (IPv6),
RFC 9293 (TCP), RFC 768 (UDP), struct virtio_net_hdr (linux/include/uapi/linux/virtio_net.h).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from support import inet_csum, inet_sum
from wgfast.dataplane import ffi, lib

VNET = 10
ACK, PSH, FIN, SYN, RST, CWR, ECE = 0x10, 0x08, 0x01, 0x02, 0x04, 0x80, 0x40
SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")



def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp_hdr(sport: int, dport: int, seq: int, ack: int, flags: int, window: int = 65000,
            options: bytes = b"") -> bytes:
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0) \
        + options


def udp_hdr(sport: int, dport: int, length: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, length, 0)


def l4_with_csum(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    off = 16 if proto == 6 else 6
    c = inet_csum(pseudo(src, dst, proto, len(l4)) + l4)
    if proto == 17 and c == 0:
        c = 0xFFFF
    return l4[:off] + struct.pack("!H", c) + l4[off + 2:]


def ip_packet(l4: bytes, proto: int, v6: bool = False, ident: int = 1, ttl: int = 64,
              df: bool = True, tos: int = 0, rev: bool = False) -> bytes:
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(l4), proto, ttl) + SRC6 + DST6 + l4
    src, dst = (DST4, SRC4) if rev else (SRC4, DST4)
    hdr = struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(l4), ident, 0x4000 if df else 0, ttl,
                      proto, 0) + src + dst
    hdr = hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:]
    return hdr + l4


def tcp_packet(payload: bytes, seq: int, flags: int = ACK, v6: bool = False, ident: int = 1,
               sport: int = 40000, dport: int = 5201, ack: int = 777, options: bytes = b"",
               window: int = 65000, csum: bool = True, rev: bool = False) -> bytes:
    """rev: from DST4 to SRC4 (the far end's direction in the real TUN test)."""
    l4 = tcp_hdr(sport, dport, seq, ack, flags, window, options) + payload
    if csum:
        src, dst = (SRC6, DST6) if v6 else ((DST4, SRC4) if rev else (SRC4, DST4))
        l4 = l4_with_csum(src, dst, 6, l4)
    return ip_packet(l4, 6, v6, ident, rev=rev)


def udp_packet(payload: bytes, v6: bool = False, ident: int = 1, sport: int = 4000,
               dport: int = 5000, ttl: int = 64, df: bool = True, csum: bool = True,
               rev: bool = False) -> bytes:
    l4 = udp_hdr(sport, dport, 8 + len(payload)) + payload
    if csum:
        src, dst = (SRC6, DST6) if v6 else ((DST4, SRC4) if rev else (SRC4, DST4))
        l4 = l4_with_csum(src, dst, 17, l4)
    return ip_packet(l4, 17, v6, ident, ttl=ttl, df=df, rev=rev)


def vnet_hdr(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
             csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def partial(pkt: bytes, v6: bool, proto: int) -> bytes:
    """What the kernel hands out with NEEDS_CSUM: the folded pseudo-header sum in the field."""
    iphl = 40 if v6 else (pkt[0] & 15) * 4
    src, dst = (pkt[8:24], pkt[24:40]) if v6 else (pkt[12:16], pkt[16:20])
    off = iphl + (16 if proto == 6 else 6)
    ps = inet_sum(pseudo(src, dst, proto, len(pkt) - iphl))
    return pkt[:off] + struct.pack("!H", ps) + pkt[off + 2:]


def super_packet(payload: bytes, mss: int, v6: bool = False, proto: int = 6, flags: int = ACK,
                 seq: int = 1000, options: bytes = b"", hdr_len: int | None = None) -> bytes:
    if proto == 6:
        l4 = tcp_hdr(40000, 5201, seq, 777, flags, 65000, options) + payload
        gso = lib.WG_VNET_GSO_TCPV6 if v6 else lib.WG_VNET_GSO_TCPV4
    else:
        l4 = udp_hdr(4000, 5000, 8 + len(payload)) + payload
        gso = lib.WG_VNET_GSO_UDP_L4
    ip = partial(ip_packet(l4, proto, v6, ident=100), v6, proto)
    iphl = 40 if v6 else 20
    l4hl = len(l4) - len(payload)
    hl = iphl + l4hl if hdr_len is None else hdr_len
    return vnet_hdr(1, gso, hl, mss, iphl, 16 if proto == 6 else 6) + ip


# ---- a parsed view of one output packet, checked field by field ---------------------------

@dataclass
class Parsed:
    v6: bool
    ident: int
    proto: int
    sport: int
    dport: int
    seq: int
    flags: int
    payload: bytes


def parse_and_verify(pkt: bytes) -> Parsed:
    v6 = pkt[0] >> 4 == 6
    if v6:
        assert struct.unpack("!H", pkt[4:6])[0] == len(pkt) - 40
        proto, iphl, src, dst, ident = pkt[6], 40, pkt[8:24], pkt[24:40], 0
    else:
        assert pkt[0] >> 4 == 4
        iphl = (pkt[0] & 15) * 4
        assert struct.unpack("!H", pkt[2:4])[0] == len(pkt)
        assert inet_sum(pkt[:iphl]) == 0xFFFF, "IPv4 header checksum"
        proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
        ident = struct.unpack("!H", pkt[4:6])[0]
    l4 = pkt[iphl:]
    assert inet_sum(pseudo(src, dst, proto, len(l4)) + l4) == 0xFFFF, "L4 checksum"
    sport, dport = struct.unpack("!HH", l4[:4])
    if proto == 6:
        seq = struct.unpack("!I", l4[4:8])[0]
        flags, hl = l4[13], (l4[12] >> 4) * 4
    else:
        assert struct.unpack("!H", l4[4:6])[0] == len(l4)
        assert l4[6:8] != b"\0\0"
        seq, flags, hl = 0, 0, 8
    return Parsed(v6, ident, proto, sport, dport, seq, flags, l4[hl:])


# ---- calling the C functions -------------------------------------------------------------

def exact_copy(buf: bytes) -> object:
    """buf in C memory of exactly its length: ffi.new from bytes adds a terminating zero, which
    would hide a one-byte over-read from the sanitizer lane."""
    c = ffi.new("uint8_t[]", len(buf))
    ffi.memmove(c, buf, len(buf))
    return c


def segment(buf: bytes, cap: int = 65536, max_out: int = 64) -> list[bytes] | int:
    outs = [ffi.new("uint8_t[]", cap) for _ in range(max_out)]
    out = ffi.new("uint8_t *[]", outs)
    lens = ffi.new("uint32_t[]", max_out)
    src = exact_copy(buf)
    n = lib.wg_vnet_segment(src, len(buf), out, cap, lens, max_out)
    if n < 0:
        return n
    return [ffi.buffer(outs[k], lens[k])[:] for k in range(n)]


def coalesce(pkts: list[bytes], scratch_cap: int = 4 * 65600,
             pad: list[int] | None = None, flags: int = 0) -> list[bytes]:
    n = len(pkts)
    bufs = []
    for i, p in enumerate(pkts):
        extra = pad[i] if pad else 0
        b = ffi.new("uint8_t[]", 16 + len(p) + extra)
        ffi.memmove(b + 16, p, len(p))
        bufs.append(b)
    ptrs = ffi.new("uint8_t *[]", [b + 16 for b in bufs])
    lens = ffi.new("uint32_t[]", [len(p) + (pad[i] if pad else 0) for i, p in enumerate(pkts)])
    scratch = ffi.new("uint8_t[]", max(scratch_cap, 1))
    out_ptrs = ffi.new("uint8_t *[]", max(n, 1))
    out_lens = ffi.new("uint32_t[]", max(n, 1))
    m = lib.wg_gro_coalesce(ptrs, lens, n, scratch, scratch_cap, out_ptrs, out_lens, n, flags)
    res = [ffi.buffer(out_ptrs[k], out_lens[k])[:] for k in range(m)]
    del bufs, scratch
    return res


def kernel_view(write: bytes) -> list[bytes]:
    """What the kernel makes of one TUN write: the super-packet cut back into segments by our
    own segmenter (the NEEDS_CSUM field holds the pseudo sum, which it finishes)."""
    r = segment(write, max_out=128)
    assert isinstance(r, list), r
    return r


def stream(total: int, mss: int, v6: bool = False, seq: int = 5000, sport: int = 40000,
           ident: int = 1, psh_last: bool = True, rng: random.Random | None = None,
           options: bytes = b"") -> tuple[list[bytes], bytes]:
    rng = rng or random.Random(0)
    data = rng.randbytes(total)
    pkts = []
    for k, off in enumerate(range(0, total, mss)):
        chunk = data[off:off + mss]
        last = off + mss >= total
        flags = ACK | (PSH if last and psh_last else 0)
        pkts.append(tcp_packet(chunk, (seq + off) & 0xFFFFFFFF, flags, v6=v6,
                               ident=(ident + k) & 0xFFFF, sport=sport, options=options))
    return pkts, data



UDP = lib.WG_GRO_UDP


def datagrams(n: int, size: int, v6: bool = False, last: int | None = None, ident: int = 7,
              **kw) -> list[bytes]:
    rnd = random.Random(n * 1000 + size)
    sizes = [size] * n + ([last] if last is not None else [])
    return [udp_packet(rnd.randbytes(sz), v6=v6, ident=ident + k, **kw)
            for k, sz in enumerate(sizes)]


