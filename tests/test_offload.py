"""TUN offloads (csrc/gso.c, gro.c, csum.c): TSO/USO segmentation and TCP GRO coalescing.

Packets are built here with struct and checksummed with an independent Python RFC 1071
implementation; header layouts are RFC 791 (IPv4), RFC 8200 (IPv6), RFC 9293 (TCP), RFC 768
(UDP) and struct virtio_net_hdr from linux/include/uapi/linux/virtio_net.h.
"""

from __future__ import annotations

import fcntl
import os
import random
import select
import socket
import struct
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import inet_csum, inet_sum, needs_tun

from wgfast.dataplane import ffi, lib
from wgfast.lab.netns import inside

VNET = 10
ACK, PSH, FIN, SYN, RST, CWR, ECE = 0x10, 0x08, 0x01, 0x02, 0x04, 0x80, 0x40
SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")


# ---- an independent packet builder (checksums: support) -----------------------------------

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

def segment(buf: bytes, cap: int = 65536, max_out: int = 64) -> list[bytes] | int:
    outs = [ffi.new("uint8_t[]", cap) for _ in range(max_out)]
    out = ffi.new("uint8_t *[]", outs)
    lens = ffi.new("uint32_t[]", max_out)
    src = ffi.new("uint8_t[]", buf)
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


# ---- segmentation ------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("flags", [ACK, ACK | PSH, ACK | PSH | FIN, ACK | CWR])
def test_tcp_segmentation_fields(v6: bool, flags: int) -> None:
    mss = 1380
    payload = random.Random(1).randbytes(65000 - 52)
    opts = bytes.fromhex("0101080a0000abcd00001234")     # NOP NOP timestamps
    segs = segment(super_packet(payload, mss, v6, flags=flags, options=opts))
    assert isinstance(segs, list)
    assert len(segs) == -(-len(payload) // mss)
    got = b""
    for k, s in enumerate(segs):
        p = parse_and_verify(s)
        assert p.v6 == v6 and p.proto == 6 and (p.sport, p.dport) == (40000, 5201)
        assert p.seq == 1000 + k * mss
        if not v6:
            assert p.ident == 100 + k
        last = k == len(segs) - 1
        want = flags
        if not last:
            want &= ~(FIN | PSH)
        if k > 0:
            want &= ~CWR
        assert p.flags == want
        assert s[(40 if v6 else 20) + 20:(40 if v6 else 20) + 32] == opts
        assert len(p.payload) == (mss if not last else len(payload) - k * mss)
        got += p.payload
    assert got == payload


@pytest.mark.parametrize("v6", [False, True])
def test_udp_segmentation(v6: bool) -> None:
    payload = random.Random(2).randbytes(10 * 1200 + 77)
    segs = segment(super_packet(payload, 1200, v6, proto=17))
    assert isinstance(segs, list) and len(segs) == 11
    for k, s in enumerate(segs):
        p = parse_and_verify(s)
        assert p.proto == 17 and (p.sport, p.dport) == (4000, 5000)
        assert p.payload == payload[k * 1200:(k + 1) * 1200]
        if not v6:
            assert p.ident == 100 + k


def test_segmentation_seq_wraps() -> None:
    payload = bytes(5000)
    segs = segment(super_packet(payload, 1000, seq=0xFFFFFE00))
    assert isinstance(segs, list)
    assert [parse_and_verify(s).seq for s in segs] == [
        (0xFFFFFE00 + 1000 * k) & 0xFFFFFFFF for k in range(5)]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("proto", [6, 17])
def test_gso_none_finishes_partial_checksum(v6: bool, proto: int) -> None:
    payload = b"hello, checksum" * 7
    if proto == 6:
        l4 = tcp_hdr(1, 2, 3, 4, ACK | PSH) + payload
    else:
        l4 = udp_hdr(1, 2, 8 + len(payload)) + payload
    pkt = partial(ip_packet(l4, proto, v6), v6, proto)
    iphl = 40 if v6 else 20
    segs = segment(vnet_hdr(1, 0, 0, 0, iphl, 16 if proto == 6 else 6) + pkt)
    assert isinstance(segs, list) and len(segs) == 1
    assert parse_and_verify(segs[0]).payload == payload
    # Without NEEDS_CSUM the packet is passed as it is.
    whole = ip_packet(l4_with_csum(SRC6 if v6 else SRC4, DST6 if v6 else DST4, proto, l4),
                      proto, v6)
    assert segment(vnet_hdr() + whole) == [whole]


def test_kernel_hdr_len_is_not_trusted() -> None:
    """The kernel's hdr_len is the skb's linear length; the headers are parsed instead."""
    payload = bytes(range(256)) * 20
    good = segment(super_packet(payload, 1000))
    odd = segment(super_packet(payload, 1000, hdr_len=40 + 1000))
    assert isinstance(good, list) and good == odd


def test_segment_in_place_first_output() -> None:
    payload = random.Random(3).randbytes(7000)
    sp = super_packet(payload, 1380, v6=True)
    expect = segment(sp)
    src = ffi.new("uint8_t[]", sp)
    outs = [src + VNET] + [ffi.new("uint8_t[]", 2000) for _ in range(7)]
    out = ffi.new("uint8_t *[]", outs)
    lens = ffi.new("uint32_t[]", 8)
    n = lib.wg_vnet_segment(src, len(sp), out, 2000, lens, 8)
    assert n == len(expect)
    assert [ffi.buffer(outs[k], lens[k])[:] for k in range(n)] == expect


def test_segment_errors() -> None:
    payload = bytes(4000)
    sp = super_packet(payload, 1000)
    assert segment(sp, max_out=3) == -lib.WG_OFF_ERR_TOO_MANY
    assert segment(sp, cap=1000) == -lib.WG_OFF_ERR_TOO_BIG
    assert segment(sp[:5]) == -lib.WG_OFF_ERR_SHORT
    bad_type = sp[:1] + bytes([3]) + sp[2:]                      # UFO
    assert segment(bad_type) == -lib.WG_OFF_ERR_GSO_TYPE
    zero_mss = sp[:4] + b"\0\0" + sp[6:]
    assert segment(zero_mss) == -lib.WG_OFF_ERR_HEADER
    bad_start = sp[:6] + struct.pack("<H", 24) + sp[8:]
    assert segment(bad_start) == -lib.WG_OFF_ERR_HEADER
    bad_hdr_len = sp[:2] + struct.pack("<H", 60000) + sp[4:]
    assert segment(bad_hdr_len) == -lib.WG_OFF_ERR_HEADER
    v6_as_v4 = super_packet(payload, 1000, v6=True)
    v6_as_v4 = v6_as_v4[:1] + bytes([lib.WG_VNET_GSO_TCPV4]) + v6_as_v4[2:]
    assert segment(v6_as_v4) == -lib.WG_OFF_ERR_PACKET
    csum_past_end = vnet_hdr(1, 0, 0, 0, 60, 16) + ip_packet(b"x" * 40, 17)
    assert segment(csum_past_end) == -lib.WG_OFF_ERR_HEADER


@pytest.mark.fuzz
@settings(max_examples=3000)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 9), st.integers(0, 0xFFFF))
def test_segment_fuzz_never_crashes(blob: bytes, mode: int, word: int) -> None:
    base = super_packet(bytes(300), 100, v6=bool(mode & 1), proto=6 if mode < 6 else 17)
    if mode in (2, 3):
        buf = base[:10] + blob          # a valid header over garbage
    elif mode in (4, 5, 6, 7):
        i = word % len(base)            # one corrupted word anywhere
        buf = base[:i] + struct.pack("<H", word) + base[i + 2:]
        buf = buf[:len(base) - (word % 50)]
    else:
        buf = blob
    r = segment(buf, cap=512, max_out=8)
    if isinstance(r, list):
        assert 1 <= len(r) <= 8 and all(len(s) <= 512 for s in r)
    else:
        assert -6 <= r <= -1


# ---- coalescing --------------------------------------------------------------------------

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


def test_coalesce_across_sequence_wrap() -> None:
    """Sequence numbers wrap at 2**32 in the middle of a super-packet."""
    pkts, _ = stream(10 * 1000, 1000, seq=0xFFFFFFFF - 4500)
    writes = coalesce(pkts)
    assert len(writes) == 1 and kernel_view(writes[0]) == pkts


def test_coalesce_one_flow_fields() -> None:
    pkts, data = stream(44 * 1380, 1380)
    writes = coalesce(pkts)
    assert len(writes) == 1
    w = writes[0]
    flags, gso_type, hdr_len, gso_size, cs, co = struct.unpack("<BBHHHH", w[:10])
    assert (flags, gso_type, hdr_len, gso_size, cs, co) == (1, lib.WG_VNET_GSO_TCPV4, 40, 1380,
                                                            20, 16)
    ip = w[10:]
    assert struct.unpack("!H", ip[2:4])[0] == len(ip) == 40 + len(data)
    assert inet_sum(ip[:20]) == 0xFFFF
    # The checksum field holds the pseudo-header sum (CHECKSUM_PARTIAL), not inverted.
    assert struct.unpack("!H", ip[36:38])[0] == inet_sum(pseudo(SRC4, DST4, 6, len(ip) - 20))
    assert ip[33] == ACK | PSH
    assert ip[40:] == data
    assert kernel_view(w) == pkts


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_round_trip_v6_and_v4(v6: bool) -> None:
    pkts, data = stream(20 * 1000 + 123, 1000, v6=v6)
    writes = coalesce(pkts)
    assert len(writes) == 1
    assert writes[0][1] == (lib.WG_VNET_GSO_TCPV6 if v6 else lib.WG_VNET_GSO_TCPV4)
    assert kernel_view(writes[0]) == pkts


def test_coalesce_caps_at_64k() -> None:
    pkts, _ = stream(100 * 1380, 1380)
    writes = coalesce(pkts, scratch_cap=8 * 65600)
    assert len(writes) > 1
    assert all(len(w) - 10 <= 65535 for w in writes)
    assert [s for w in writes for s in kernel_view(w)] == pkts


def test_coalesce_trims_wireguard_padding() -> None:
    pkts, _ = stream(5 * 500 + 3, 500)
    writes = coalesce(pkts, pad=[13, 1, 0, 15, 7, 2])
    assert len(writes) == 1 and kernel_view(writes[0]) == pkts


def test_passthrough_gets_zero_header() -> None:
    udp = ip_packet(l4_with_csum(SRC4, DST4, 17, udp_hdr(1, 2, 12) + b"abcd"), 17)
    syn = tcp_packet(b"", 1, SYN)
    junk = b"\x00" * 3
    writes = coalesce([udp, syn, junk])
    assert writes == [bytes(10) + udp, bytes(10) + syn, bytes(10) + junk]


@pytest.mark.parametrize("case", ["gap", "bigger", "after_short", "psh_middle", "syn", "fin",
                                  "ack", "window", "options", "ttl", "ident", "bad_csum",
                                  "bad_head_csum", "no_scratch"])
def test_coalesce_refuses(case: str) -> None:
    """Each rule in turn: segments that must not merge stay separate (and nothing is lost)."""
    mss = 1000
    p = [tcp_packet(bytes([i]) * mss, 100 + i * mss, ident=1 + i) for i in range(4)]
    scratch = 4 * 65600
    if case == "gap":
        p[2] = tcp_packet(b"\2" * mss, 100 + 2 * mss + 1, ident=3)
    elif case == "bigger":
        p[2] = tcp_packet(b"\2" * (mss + 1), 100 + 2 * mss, ident=3)
    elif case == "after_short":
        p[1] = tcp_packet(b"\1" * (mss - 1), 100 + mss, ident=2)
        p[2] = tcp_packet(b"\2" * mss, 100 + 2 * mss - 1, ident=3)
    elif case == "psh_middle":
        p[1] = tcp_packet(b"\1" * mss, 100 + mss, ACK | PSH, ident=2)
    elif case in ("syn", "fin"):
        p[2] = tcp_packet(b"\2" * mss, 100 + 2 * mss, ACK | (SYN if case == "syn" else FIN),
                          ident=3)
    elif case == "ack":
        p[2] = tcp_packet(b"\2" * mss, 100 + 2 * mss, ident=3, ack=778)
    elif case == "window":
        p[2] = tcp_packet(b"\2" * mss, 100 + 2 * mss, ident=3, window=1)
    elif case == "options":
        p[2] = tcp_packet(b"\2" * mss, 100 + 2 * mss, ident=3, options=b"\1\1\1\1")
    elif case == "ttl":
        l4 = l4_with_csum(SRC4, DST4, 6, tcp_hdr(40000, 5201, 100 + 2 * mss, 777, ACK) +
                          b"\2" * mss)
        p[2] = ip_packet(l4, 6, ident=3, ttl=9)
    elif case == "ident":
        l4 = l4_with_csum(SRC4, DST4, 6, tcp_hdr(40000, 5201, 100 + 2 * mss, 777, ACK) +
                          b"\2" * mss)
        p[2] = ip_packet(l4, 6, ident=99, df=False)
        p[1] = ip_packet(p[1][20:], 6, ident=2, df=False)
        p[0] = ip_packet(p[0][20:], 6, ident=1, df=False)
    elif case == "bad_csum":
        p[2] = p[2][:-1] + bytes([p[2][-1] ^ 0xFF])
    elif case == "bad_head_csum":
        p[0] = p[0][:-1] + bytes([p[0][-1] ^ 0xFF])
    elif case == "no_scratch":
        scratch = 1000
    writes = coalesce(p, scratch_cap=scratch)
    assert 1 < len(writes) <= 4
    assert [s for w in writes for s in kernel_view(w)] == p or case in ("bad_csum",
                                                                        "bad_head_csum")
    if case in ("bad_csum", "bad_head_csum"):
        # the corrupt segment is passed as it is, never inside a super-packet
        bad = 2 if case == "bad_csum" else 0
        assert bytes(10) + p[bad] in writes
        assert all(w[0] == 0 or p[bad][40:] not in w for w in writes)


def test_pure_ack_keeps_order() -> None:
    """A non-mergeable TCP packet of a flow closes its open super-packet, so the flow's later
    data cannot overtake it."""
    d = [tcp_packet(bytes([i]) * 500, 1 + 500 * i, ident=1 + i) for i in range(4)]
    fin = tcp_packet(b"", 1 + 1000, ACK | FIN, ident=9)
    writes = coalesce([d[0], d[1], fin, d[2], d[3]])
    order = [s for w in writes for s in kernel_view(w)]
    assert order == [d[0], d[1], fin, d[2], d[3]]
    assert len(writes) == 3


# ---- UDP coalescing (USO on the TUN) ------------------------------------------------------

UDP = lib.WG_GRO_UDP


def datagrams(n: int, size: int, v6: bool = False, last: int | None = None, ident: int = 7,
              **kw) -> list[bytes]:
    rnd = random.Random(n * 1000 + size)
    sizes = [size] * n + ([last] if last is not None else [])
    return [udp_packet(rnd.randbytes(sz), v6=v6, ident=ident + k, **kw)
            for k, sz in enumerate(sizes)]


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_udp_flow_fields(v6: bool) -> None:
    pkts = datagrams(20, 64, v6=v6, last=17)
    writes = coalesce(pkts, flags=UDP)
    assert len(writes) == 1
    w = writes[0]
    iphl = 40 if v6 else 20
    assert struct.unpack("<BBHHHH", w[:10]) == (1, lib.WG_VNET_GSO_UDP_L4, iphl + 8, 64,
                                                iphl, 6)
    ip = w[10:]
    l4len = 20 * 64 + 17 + 8
    assert len(ip) == iphl + l4len
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    assert struct.unpack("!HH", ip[iphl + 4:iphl + 8]) == (
        l4len, inet_sum(pseudo(src, dst, 17, l4len)))
    if not v6:
        assert inet_sum(ip[:20]) == 0xFFFF and struct.unpack("!H", ip[2:4])[0] == len(ip)
    assert ip[iphl + 8:] == b"".join(p[iphl + 8:] for p in pkts)
    assert kernel_view(w) == pkts


def test_udp_not_coalesced_without_uso() -> None:
    pkts = datagrams(5, 100)
    assert coalesce(pkts) == [bytes(10) + p for p in pkts]


def test_coalesce_udp_at_most_64_per_write() -> None:
    pkts = datagrams(100, 32)
    writes = coalesce(pkts, flags=UDP)
    assert [len(kernel_view(w)) for w in writes] == [64, 36]
    assert [s for w in writes for s in kernel_view(w)] == pkts


@pytest.mark.parametrize("case", ["bigger", "after_short", "ports", "ttl", "ident",
                                  "bad_csum", "no_csum", "length_field"])
def test_coalesce_udp_refuses(case: str) -> None:
    p = datagrams(4, 200)
    if case == "bigger":
        p[2] = udp_packet(b"x" * 201, ident=9)
    elif case == "after_short":
        p[1] = udp_packet(b"x" * 199, ident=8)
    elif case == "ports":
        # another flow in between: its own write; the first flow's third datagram still joins
        other = udp_packet(b"x" * 200, ident=9, sport=4001)
        p = p[:2] + [other, udp_packet(b"y" * 200, ident=9)]
        writes = coalesce(p, flags=UDP)
        assert len(writes) == 2 and writes[1] == bytes(10) + other
        assert kernel_view(writes[0]) == [p[0], p[1], p[3]]
        return
    elif case == "ttl":
        p[2] = udp_packet(b"x" * 200, ident=9, ttl=3)
    elif case == "ident":
        p = [udp_packet(b"x" * 200, ident=i, df=False) for i in (1, 2, 9, 10)]
    elif case == "bad_csum":
        p[2] = p[2][:-1] + bytes([p[2][-1] ^ 1])
    elif case == "no_csum":
        p[2] = udp_packet(b"x" * 200, ident=9, csum=False)
    elif case == "length_field":
        p[2] = p[2][:24] + struct.pack("!H", 100) + p[2][26:]
    writes = coalesce(p, flags=UDP)
    assert 1 < len(writes) <= 4
    if case in ("bad_csum", "length_field"):
        assert bytes(10) + p[2] in writes       # passed on as it is, for the kernel to judge
    else:
        assert [s for w in writes for s in kernel_view(w)] == p


def test_udp_and_tcp_of_the_same_ports_stay_apart() -> None:
    """A TCP segment with the UDP flow's addresses and ports neither joins its train nor lets
    the train's later datagrams overtake it."""
    u = datagrams(4, 300, sport=40000, dport=5201)
    t = tcp_packet(b"t" * 300, 1)
    writes = coalesce([u[0], u[1], t, u[2], u[3]], flags=UDP)
    order = [s for w in writes for s in kernel_view(w)]
    assert order == [u[0], u[1], t, u[2], u[3]]
    assert len(writes) == 3


@pytest.mark.fuzz
@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 9000), st.sampled_from([536, 1000, 1380, 1440]),
                          st.booleans()), min_size=1, max_size=4),
       st.randoms(use_true_random=False))
def test_coalesce_interleaved_round_trip(flows: list[tuple[int, int, bool]],
                                         rnd: random.Random) -> None:
    """Interleave several flows: the writes, re-segmented, give every flow's packets back in
    order, byte for byte; merged writes are valid GSO super-packets."""
    queues = []
    for f, (total, mss, v6) in enumerate(flows):
        pkts, _ = stream(total, mss, v6=v6, sport=41000 + f, seq=rnd.getrandbits(32),
                         ident=rnd.getrandbits(16), rng=rnd)
        queues.append(pkts)
    mixed = []
    qs = [list(q) for q in queues]
    while any(qs):
        q = rnd.choice([q for q in qs if q])
        mixed.append(q.pop(0))
    mixed = mixed[:128]
    writes = coalesce(mixed, scratch_cap=len(flows) * 65600)
    assert len(writes) <= len(mixed)
    if any(len(q) > 1 for q in queues):
        assert len(writes) < len(mixed), "some flow had two segments to merge"
    back = [s for w in writes for s in kernel_view(w)]
    assert sorted(back) == sorted(mixed)

    def per_flow(seq: list[bytes]) -> dict[bytes, list[bytes]]:
        d: dict[bytes, list[bytes]] = {}
        for s in seq:
            iphl = 40 if s[0] >> 4 == 6 else 20
            d.setdefault(s[iphl:iphl + 2], []).append(s)
        return d

    assert per_flow(back) == per_flow(mixed)


@pytest.mark.fuzz
@settings(max_examples=500)
@given(st.lists(st.binary(min_size=0, max_size=200), min_size=0, max_size=20),
       st.integers(0, 3))
def test_coalesce_fuzz_never_crashes(blobs: list[bytes], mutate: int) -> None:
    pkts, _ = stream(3000, 300)
    mixed = list(blobs)
    for i, p in enumerate(pkts):
        if mutate and blobs:
            j = i % len(blobs)
            cut = len(blobs[j]) % len(p)
            p = p[:cut] + blobs[j][:len(p) - cut]       # keep the header, corrupt the rest
        mixed.insert(i * 2 % (len(mixed) + 1), p)
    writes = coalesce(mixed, scratch_cap=65600)
    assert len(writes) <= len(mixed)
    total_in = sum(len(p) for p in mixed)
    assert sum(len(w) - 10 for w in writes) <= total_in


# ---- the real thing: a TUN with IFF_VNET_HDR in a namespace of our own --------------------

IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0       # _IOW('T', 202/208, int)


@needs_tun()
def test_real_tun_tso_and_gro() -> None:
    """The kernel hands us a TSO super-packet that we cut into valid segments, and takes a
    super-packet we coalesced: its TCP socket receives the bytes intact."""
    ns, dev = f"h5off{os.getpid()}", "h5tun0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with inside(ns):
            _tun_conversation(ns, dev)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _tun_conversation(ns: str, dev: str) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    sock = None
    try:
        ifr = struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETOFFLOAD, lib.WG_TUN_F_CSUM | lib.WG_TUN_F_TSO4 | lib.WG_TUN_F_TSO6)
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", "10.0.0.1/24", "dev", dev],
                    ["link", "set", dev, "up", "mtu", "1420"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)

        def read_tcp(timeout: float = 3.0) -> bytes:
            """Next TUN packet of our flow (vnet header included)."""
            while True:
                r, _, _ = select.select([fd], [], [], timeout)
                assert r, "no packet from the kernel"
                b = os.read(fd, 70000)
                ip = b[10:]
                if len(ip) >= 40 and ip[0] == 0x45 and ip[9] == 6 and ip[12:20] == SRC4 + DST4:
                    return b

        def plain(b: bytes) -> list[bytes]:
            r = segment(b, cap=2048, max_out=64)
            assert isinstance(r, list), r
            return r

        sock = socket.socket()
        sock.setblocking(False)
        assert sock.connect_ex(("10.0.0.2", 5201)) in (115, 0)     # EINPROGRESS
        syn = parse_and_verify(plain(read_tcp())[0])
        assert syn.flags & SYN
        cport, kseq = syn.sport, syn.seq + 1
        pseq = 0x10000000
        mss_opt = struct.pack("!BBH", 2, 4, 1380)
        synack = tcp_packet(b"", pseq, SYN | ACK, sport=5201, dport=cport, ack=kseq,
                            options=mss_opt, rev=True)
        os.write(fd, bytes(10) + synack)
        pseq += 1
        select.select([], [sock], [], 3)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

        # GRO direction: 12 segments from the far end, coalesced into one TUN write.
        data = random.Random(5).randbytes(12 * 1000)
        segs = [tcp_packet(data[k * 1000:(k + 1) * 1000], pseq + k * 1000,
                           ACK | (PSH if k == 11 else 0), sport=5201, dport=cport, ack=kseq,
                           ident=50 + k, rev=True) for k in range(12)]
        writes = coalesce(segs)
        assert len(writes) == 1 and writes[0][1] == lib.WG_VNET_GSO_TCPV4
        os.write(fd, writes[0])
        got = b""
        while len(got) < len(data):
            r, _, _ = select.select([sock], [], [], 3)
            assert r, f"kernel socket got {len(got)} of {len(data)} bytes"
            got += sock.recv(65536)
        assert got == data
        pseq += len(data)

        # TSO direction: the kernel sends a burst; we must see a super-packet and cut it.
        sent = random.Random(6).randbytes(200_000)
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(sent[:60_000])
        stream = b""
        saw_gso = 0
        while len(stream) < 60_000:
            b = read_tcp()
            if b[1] != lib.WG_VNET_GSO_NONE:
                saw_gso += 1
            for s in plain(b):
                p = parse_and_verify(s)                 # every checksum verifies
                if p.payload and p.seq == kseq:
                    stream += p.payload
                    kseq += len(p.payload)
                    assert len(p.payload) <= 1380
            ack = tcp_packet(b"", pseq, ACK, sport=5201, dport=cport, ack=kseq, rev=True)
            os.write(fd, bytes(10) + ack)
        assert stream == sent[:60_000]
        assert saw_gso > 0, "the kernel never sent a TSO super-packet"
    finally:
        if sock is not None:
            sock.close()
        os.close(fd)


@needs_tun()
@pytest.mark.parametrize("v6", [False, True])
def test_real_tun_takes_udp_train(v6: bool) -> None:
    """A UDP train we coalesced, written to a TUN that took USO, reaches a plain UDP socket as
    the original datagrams, one by one and intact."""
    ns, dev = f"h5uso{os.getpid()}", "h5tun1"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with inside(ns):
            _udp_train(ns, dev, v6)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _udp_train(ns: str, dev: str, v6: bool) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    sock = None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(),
                                                IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, lib.WG_TUN_F_CSUM | lib.WG_TUN_F_USO4
                        | lib.WG_TUN_F_USO6)
        except OSError:
            pytest.skip("this kernel's TUN has no USO (Linux < 6.2)")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", "10.0.0.2/24", "dev", dev],
                    ["addr", "add", "fd00::2/64", "dev", dev, "nodad"],
                    ["link", "set", dev, "up", "mtu", "1420"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("fd00::2" if v6 else "10.0.0.2", 5000))
        sock.settimeout(3)
        pkts = datagrams(30, 96, v6=v6, last=41)
        writes = coalesce(pkts, flags=UDP)
        assert len(writes) == 1 and writes[0][1] == lib.WG_VNET_GSO_UDP_L4
        os.write(fd, writes[0])
        iphl = 40 if v6 else 20
        for p in pkts:
            assert sock.recv(2048) == p[iphl + 8:]
    finally:
        if sock is not None:
            sock.close()
        os.close(fd)


# ---- resumable segmentation: more segments than free slots, and IPv6 extension headers ----

def segment_from(buf: bytes, chunks: list[int], cap: int = 2048) -> tuple[list[bytes], int]:
    """Cut buf in calls of chunks[0], chunks[1], ... slots (the last size repeats)."""
    src = ffi.new("uint8_t[]", buf)
    nseg = ffi.new("uint32_t *")
    got: list[bytes] = []
    k = 0
    while True:
        m = chunks[min(k, len(chunks) - 1)]
        k += 1
        outs = [ffi.new("uint8_t[]", cap) for _ in range(m)]
        lens = ffi.new("uint32_t[]", m)
        n = lib.wg_vnet_segment_from(src, len(buf), len(got), ffi.new("uint8_t *[]", outs),
                                     cap, lens, m, nseg)
        assert n >= 0, n
        got += [ffi.buffer(outs[i], lens[i])[:] for i in range(n)]
        if len(got) >= nseg[0] or n == 0:
            return got, int(nseg[0])


@pytest.mark.fuzz
@settings(max_examples=40)
@given(st.integers(1, 60000), st.integers(88, 1400), st.booleans(), st.sampled_from([6, 17]),
       st.lists(st.integers(1, 300), min_size=1, max_size=5))
def test_segment_from_resumes_in_any_chunks(size: int, mss: int, v6: bool, proto: int,
                                            chunks: list[int]) -> None:
    payload = random.Random(size).randbytes(size)
    sp = super_packet(payload, mss, v6=v6, proto=proto)
    got, nseg = segment_from(sp, chunks)
    assert nseg == (size + mss - 1) // mss and len(got) == nseg
    whole = segment(sp, cap=2048, max_out=nseg)
    assert got == whole                         # the same packets, however it was cut
    parsed = [parse_and_verify(p) for p in got]
    assert b"".join(p.payload for p in parsed) == payload
    if proto == 6:
        assert [p.seq for p in parsed] == [1000 + k * mss for k in range(nseg)]
    if not v6:
        assert [p.ident for p in parsed] == [(100 + k) & 0xFFFF for k in range(nseg)]


def test_small_mss_64k_needs_many_batches() -> None:
    """MSS 88 over 64 KB: 740 segments, more than any batch; all of them come out."""
    payload = random.Random(88).randbytes(65535 - 40 - 12)
    sp = super_packet(payload, 88, options=bytes([1, 1, 8, 10]) + bytes(8))
    assert segment(sp, cap=2048, max_out=lib.WG_MAX_BATCH) == -lib.WG_OFF_ERR_TOO_MANY
    got, nseg = segment_from(sp, [lib.WG_MAX_BATCH, 37])
    assert nseg == len(got) == (len(payload) + 87) // 88 > 2 * lib.WG_MAX_BATCH
    assert b"".join(parse_and_verify(p).payload for p in got) == payload
    # Past the end there is nothing more, and that is no error.
    src, nseg_p = ffi.new("uint8_t[]", sp), ffi.new("uint32_t *")
    out = ffi.new("uint8_t *[]", [ffi.new("uint8_t[]", 2048)])
    assert lib.wg_vnet_segment_from(src, len(sp), nseg, out, 2048, ffi.new("uint32_t[]", 1),
                                    1, nseg_p) == 0


HOA = bytes.fromhex("fd0000000000000000000000000000aa")       # a routing header's final hop
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS = 0, 43, 44, 60


def ext_chain(kinds: list[tuple[int, int]], proto: int) -> tuple[bytes, int, bytes]:
    """IPv6 extension headers (kind, segments left) ending in proto: (bytes, first next
    header, the destination the pseudo-header uses)."""
    out, final = b"", DST6
    nhs = [k for k, _ in kinds[1:]] + [proto]
    for (kind, left), nh in zip(kinds, nhs[:len(kinds)], strict=True):
        if kind in (HOPOPTS, DSTOPTS):
            out += bytes([nh, 1, 1, 12]) + bytes(12)            # PadN: 16 bytes in all
        elif kind == ROUTING:
            out += bytes([nh, 2, 2, left]) + bytes(4) + HOA     # type 2 (RFC 6275)
            if left:
                final = HOA
        else:
            out += bytes([nh, 0, 0, 0]) + bytes(4)              # fragment header
    return out, (kinds[0][0] if kinds else proto), final


def ext_super_packet(payload: bytes, mss: int, kinds: list[tuple[int, int]],
                     proto: int = 6) -> tuple[bytes, int, bytes]:
    exts, first, final = ext_chain(kinds, proto)
    if proto == 6:
        l4 = tcp_hdr(40000, 5201, 1000, 777, ACK | PSH) + payload
        gso = lib.WG_VNET_GSO_TCPV6
    else:
        l4 = udp_hdr(4000, 5000, 8 + len(payload)) + payload
        gso = lib.WG_VNET_GSO_UDP_L4
    off = 16 if proto == 6 else 6
    ps = inet_sum(pseudo(SRC6, final, proto, len(l4)))
    l4 = l4[:off] + struct.pack("!H", ps) + l4[off + 2:]
    ip = struct.pack("!IHBB", 6 << 28, len(exts) + len(l4), first, 64) + SRC6 + DST6
    l4off = 40 + len(exts)
    hdr = vnet_hdr(1, gso, l4off + len(l4) - len(payload), mss, l4off, off)
    return hdr + ip + exts + l4, l4off, final


@pytest.mark.fuzz
@settings(max_examples=40)
@given(st.lists(st.sampled_from([(DSTOPTS, 0), (ROUTING, 0), (ROUTING, 1)]), max_size=3),
       st.booleans(), st.integers(1, 20000), st.integers(88, 1300), st.sampled_from([6, 17]))
def test_segment_ipv6_extension_headers(kinds: list[tuple[int, int]], hop: bool, size: int,
                                        mss: int, proto: int) -> None:
    kinds = ([(HOPOPTS, 0)] if hop else []) + kinds
    payload = random.Random(size).randbytes(size)
    sp, l4off, final = ext_super_packet(payload, mss, kinds, proto)
    got, nseg = segment_from(sp, [lib.WG_MAX_BATCH])
    assert len(got) == nseg == (size + mss - 1) // mss
    data = b""
    for k, p in enumerate(got):
        assert p[:4] == sp[10:14] and p[6:40] == sp[16:50]       # the same IPv6 header
        assert struct.unpack("!H", p[4:6])[0] == len(p) - 40
        assert p[40:l4off] == sp[10 + 40:10 + l4off]            # every extension header kept
        l4 = p[l4off:]
        assert inet_sum(pseudo(SRC6, final, proto, len(l4)) + l4) == 0xFFFF, "L4 checksum"
        hl = ((l4[12] >> 4) * 4) if proto == 6 else 8
        if proto == 6:
            assert struct.unpack("!I", l4[4:8])[0] == 1000 + k * mss
            assert bool(l4[13] & PSH) == (k == nseg - 1)
        else:
            assert struct.unpack("!H", l4[4:6])[0] == len(l4)
        data += l4[hl:]
    assert data == payload


def test_segment_ipv6_fragment_or_unknown_header_refused() -> None:
    for kinds in ([(FRAGMENT, 0)], [(DSTOPTS, 0), (HOPOPTS, 0)]):   # hop-by-hop only first
        sp, _, _ = ext_super_packet(bytes(3000), 1000, kinds)
        assert segment(sp) == -lib.WG_OFF_ERR_PACKET
    sp, _, _ = ext_super_packet(bytes(3000), 1000, [(DSTOPTS, 0)])
    # Cut inside the extension header: shorter than its headers (or than hdr_len) claim.
    assert segment(sp[:10 + 44]) in (-lib.WG_OFF_ERR_SHORT, -lib.WG_OFF_ERR_HEADER)
