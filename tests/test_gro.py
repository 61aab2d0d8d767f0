"""csrc/gro.c: coalescing TCP and UDP flows into super-packets for the TUN, and what it must
refuse; each write cut back by our segmenter (kernel_view) must give the packets that went in.
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
    DST4,
    DST6,
    FIN,
    PSH,
    SRC4,
    SRC6,
    SYN,
    UDP,
    coalesce,
    datagrams,
    ip_packet,
    kernel_view,
    l4_with_csum,
    pseudo,
    stream,
    tcp_hdr,
    tcp_packet,
    udp_hdr,
    udp_packet,
)

from wgfast.dataplane import lib

# ---- coalescing --------------------------------------------------------------------------

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


