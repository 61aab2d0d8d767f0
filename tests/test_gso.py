"""csrc/gso.c: cutting TSO/USO super-packets from the TUN into segments, field by field and
against an independent Python checksum; resumable segmentation and IPv6 extension headers.
The packets come from support/packets.py.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import inet_sum
from support.packets import (
    ACK,
    CWR,
    DST4,
    DST6,
    FIN,
    PSH,
    SRC4,
    SRC6,
    VNET,
    exact_copy,
    ip_packet,
    l4_with_csum,
    parse_and_verify,
    partial,
    pseudo,
    segment,
    super_packet,
    tcp_hdr,
    udp_hdr,
    vnet_hdr,
)

from wgfast.dataplane import ffi, lib

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


# ---- resumable segmentation: more segments than free slots, and IPv6 extension headers ----

def segment_from(buf: bytes, chunks: list[int], cap: int = 2048) -> tuple[list[bytes], int]:
    """Cut buf in calls of chunks[0], chunks[1], ... slots (the last size repeats)."""
    src = exact_copy(buf)
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
