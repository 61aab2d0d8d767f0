"""Wire formats (whitepaper §5.4.2-§5.4.7) and the §6.1 constants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgfast import messages as M


def test_constants_whitepaper_6_1():
    assert M.REKEY_AFTER_MESSAGES == 1 << 60
    assert M.REJECT_AFTER_MESSAGES == (1 << 64) - (1 << 13) - 1
    assert (M.REKEY_AFTER_TIME, M.REJECT_AFTER_TIME, M.REKEY_ATTEMPT_TIME) == (120, 180, 90)
    assert (M.REKEY_TIMEOUT, M.KEEPALIVE_TIMEOUT) == (5, 10)
    assert M.MAX_TIMER_HANDSHAKES == 18
    assert M.REKEY_TIMEOUT_JITTER_MAX == pytest.approx(0.333, abs=1e-3)


def test_sizes_and_roundtrip():
    i = M.Initiation(0x01020304, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16)
    b = i.pack()
    assert len(b) == 148 and b[:4] == b"\x01\0\0\0" and b[4:8] == b"\x04\x03\x02\x01"
    assert M.parse(b) == i and b[116:132] == b"1" * 16
    r = M.Response(7, 9, b"e" * 32, b"n" * 16, b"1" * 16, b"2" * 16)
    assert len(r.pack()) == 92 and M.parse(r.pack()) == r
    c = M.CookieReply(5, b"n" * 24, b"c" * 32)
    assert len(c.pack()) == 64 and M.parse(c.pack()) == c
    d = M.TransportHeader(3, 2**63, 0).pack() + bytes(16)
    h = M.parse(d)
    assert isinstance(h, M.TransportHeader) and h.counter == 2**63 and h.length == 32


@pytest.mark.parametrize("data,reason", [
    (b"", "short"), (b"\x01\0\0", "short"), (b"\x01\0\0\1" + bytes(144), "reserved-nonzero"),
    (b"\x05\0\0\0" + bytes(60), "unknown-type"), (b"\x01\0\0\0" + bytes(145), "bad-length"),
    (b"\x02\0\0\0" + bytes(87), "bad-length"), (b"\x03\0\0\0" + bytes(61), "bad-length"),
    (b"\x04\0\0\0" + bytes(27), "short"),
])
def test_bad_messages_typed(data, reason):
    with pytest.raises(M.MessageError) as e:
        M.parse(data)
    assert e.value.reason == reason


def test_expect_type():
    with pytest.raises(M.MessageError):
        M.parse_response(M.CookieReply(1, bytes(24), bytes(32)).pack())
    with pytest.raises(M.MessageError):
        M.mac1_offset(M.CookieReply(1, bytes(24), bytes(32)).pack())


@given(st.binary(max_size=300))
def test_random_bytes_only_typed_errors(data):
    for f in (M.parse, M.parse_initiation, M.parse_response, M.parse_cookie_reply):
        try:
            f(data)
        except M.MessageError:
            pass


def test_address_families_are_the_c_contracts():
    """wg_addr and the allowed-IP records carry Linux's AF_* values."""
    import socket

    assert (M.AF_INET, M.AF_INET6) == (socket.AF_INET, socket.AF_INET6) == (2, 10)
