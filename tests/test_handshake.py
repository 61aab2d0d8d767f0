"""wgfast.handshake: handshake intake and the timer actions, end to end between two devices
on SocketTuns joined over loopback UDP (no root needed)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from support import until
from support.device import LOOP_INNER, LoopSide, inner_udp, join, loop_device

from wgfast.cookie import CookieState
from wgfast.handshake import peer_name


@pytest.fixture
def pair(tmp_path: object) -> Iterator[tuple[LoopSide, LoopSide]]:
    with loop_device(str(tmp_path), "hsa") as a, loop_device(str(tmp_path), "hsb") as b:
        yield a, b


def test_peer_name_is_the_ends_of_the_key() -> None:
    assert peer_name(bytes(32)) == "peer(AAAA…AAAA)"


def test_staged_packet_confirms_and_both_count_one_handshake(
        pair: tuple[LoopSide, LoopSide]) -> None:
    """Data sent with no session starts an initiation; the response makes a's session (its
    round trip observed), and the staged packet, the first data under the new keypair,
    confirms b's."""
    a, b = pair
    join(a, b)
    p = inner_udp(LOOP_INNER[0], LOOP_INNER[1], b"first")
    a.tun.send(p)
    assert b.tun.recv() == p
    pid_a, pid_b = a.dev.table.id_of(b.me.public), b.dev.table.id_of(a.me.public)
    assert pid_a is not None and pid_b is not None
    assert until(lambda: int(b.dev.handshakes_completed[pid_b]) == 1)
    assert int(a.dev.handshakes_completed[pid_a]) == 1
    assert a.dev.handshake_outcomes["accepted"] == 1 == b.dev.handshake_outcomes["accepted"]
    assert a.dev.handshake_rtt.cumulative()[-1][1] == 1      # (+Inf, count)
    assert a.dev.handshake_drops == 0 == b.dev.handshake_drops


def test_keepalive_confirms_when_nothing_is_staged(pair: tuple[LoopSide, LoopSide]) -> None:
    """A handshake with nothing waiting (persistent keepalive starts one at once): the
    initiator confirms the responder's session with a keepalive (whitepaper §6.5)."""
    a, b = pair
    join(a, b, keepalive=25)
    pid_b = b.dev.table.id_of(a.me.public)
    assert pid_b is not None
    assert until(lambda: int(b.dev.handshakes_completed[pid_b]) == 1, 10)
    b.tun.peer.settimeout(0.2)
    with pytest.raises(TimeoutError):
        b.tun.peer.recv(2048)            # a keepalive never reaches the TUN


def test_initiation_from_an_unknown_key_is_rejected(pair: tuple[LoopSide, LoopSide]) -> None:
    """An initiation with a valid mac1 passes C's intake; Noise finds no such peer, so the
    control plane drops it and counts it."""
    _, b = pair
    msg = CookieState(b.me.public).add_macs(bytes([1, 0, 0, 0]) + os.urandom(144),
                                            time.monotonic())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(msg, ("127.0.0.1", b.dev.listen_port))
    assert until(lambda: b.dev.handshake_drops == 1)
    assert b.dev.handshake_outcomes["accepted"] == 0
