"""mac1/mac2 and cookie replies (whitepaper §5.4.4, §5.4.7)."""

from __future__ import annotations

import hashlib

from wgfast import noise as N
from wgfast.cookie import CookieChecker, CookieState, Verdict, source_bytes
from wgfast.messages import INITIATION_MAC1_OFF, parse_cookie_reply

SRC = source_bytes(bytes([198, 51, 100, 7]), 51820)


def _initiation(resp_pub: bytes) -> bytes:
    init = N.StaticIdentity.generate()
    msg, _ = N.create_initiation(init, resp_pub, 42, 1.7e9)
    return msg.pack()


def test_source_bytes_port_big_endian():
    assert source_bytes(b"\x01\x02\x03\x04", 0x1234) == b"\x01\x02\x03\x04\x12\x34"


def test_mac1_definition():
    resp = N.StaticIdentity.generate()
    st = CookieState(resp.public)
    m = st.add_macs(_initiation(resp.public), now=0.0)
    key = hashlib.blake2s(b"mac1----" + resp.public).digest()
    want = hashlib.blake2s(m[:116], key=key, digest_size=16).digest()
    assert m[116:132] == want and m[132:] == bytes(16)     # no cookie yet: mac2 zero
    chk = CookieChecker(resp.public)
    assert chk.check_mac1(m) and chk.validate(m, SRC, 0.0, under_load=False) is Verdict.ACCEPT
    bad = bytearray(m)
    bad[10] ^= 1
    assert chk.validate(bytes(bad), SRC, 0.0, False) is Verdict.DROP
    assert not chk.check_mac1(b"garbage")


def test_under_load_cookie_roundtrip():
    resp = N.StaticIdentity.generate()
    chk = CookieChecker(resp.public)
    st = CookieState(resp.public)
    raw = _initiation(resp.public)
    m = st.add_macs(raw, now=10.0)
    assert chk.validate(m, SRC, 10.0, under_load=True) is Verdict.SEND_COOKIE
    reply = chk.create_reply(m, SRC, 10.0)
    assert len(reply) == 64 and reply[:4] == b"\x03\0\0\0"
    r = parse_cookie_reply(reply)
    assert r.receiver == 42
    assert st.consume_reply(r, 10.1)
    assert not st.consume_reply(r, 10.2)                   # only one reply per mac1 sent
    m2 = st.add_macs(raw, now=11.0)
    assert m2[132:] != bytes(16)
    assert chk.validate(m2, SRC, 11.0, under_load=True) is Verdict.ACCEPT
    # the cookie is bound to the source address and port
    other = source_bytes(bytes([198, 51, 100, 7]), 51821)
    assert chk.validate(m2, other, 11.0, under_load=True) is Verdict.SEND_COOKIE
    # the initiator stops using an old cookie (kernel: 120 s - 5 s latency)
    assert st.add_macs(raw, now=10.1 + 116)[132:] == bytes(16)
    # the responder's secret rotates after 120 s: the old cookie stops working
    assert chk.validate(m2, SRC, 10.0 + 121, under_load=True) is Verdict.SEND_COOKIE


def test_reply_for_other_message_or_tampered_rejected():
    resp = N.StaticIdentity.generate()
    chk = CookieChecker(resp.public)
    st = CookieState(resp.public)
    m = st.add_macs(_initiation(resp.public), now=0.0)
    reply = bytearray(chk.create_reply(m, SRC, 0.0))
    reply[-1] ^= 1
    assert not st.consume_reply(parse_cookie_reply(bytes(reply)), 0.0)
    st2 = CookieState(resp.public)                      # never sent anything
    assert not st2.consume_reply(parse_cookie_reply(chk.create_reply(m, SRC, 0.0)), 0.0)
    assert m[INITIATION_MAC1_OFF:INITIATION_MAC1_OFF + 16] == st.last_mac1
