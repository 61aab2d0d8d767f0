"""The whitepaper §6 timer rules on a fake clock, for many peers at once."""

from __future__ import annotations

import numpy as np

from wgfast.messages import MAX_TIMER_HANDSHAKES
from wgfast.timers import Clocks, TimerState, evaluate

T0 = 1000.0


def setup(n: int = 4):
    c = Clocks.zeros(n)
    c.active[:] = 1
    return c, TimerState(n), np.random.default_rng(1)


def test_retry_jitter_and_give_up_after_90s():
    c, s, rng = setup()
    c.want_handshake[0] = 1
    a = evaluate(c, s, T0, rng)
    assert list(a.indices(a.send_initiation)) == [0] and not a.retry[0]
    assert c.want_handshake[0] == 0                       # request answered
    sent = [T0]
    now, gave_up = T0, None
    for _ in range(100):
        gap = s.retry_at[0] - s.last_initiation_sent[0]
        assert 5.0 <= gap < 5.0 + 1 / 3                     # REKEY_TIMEOUT + jitter(0-333 ms)
        now = a.next_deadline
        a = evaluate(c, s, now, rng)
        if a.give_up[0]:
            gave_up = now
            break
        assert a.send_initiation[0] and a.retry[0]
        sent.append(now)
    assert gave_up is not None and 90.0 <= gave_up - T0 < 90.0 + 5.34
    assert len(sent) in (MAX_TIMER_HANDSHAKES - 1, MAX_TIMER_HANDSHAKES)   # ~18 in 90 s
    assert len(set(np.round(np.diff(sent), 6))) > 1          # jitter actually varies
    a = evaluate(c, s, now + 50, rng)
    assert not a.send_initiation.any() and s.handshake_started[0] == 0


def test_handshake_complete_stops_retries_and_rekey_after_time():
    c, s, rng = setup()
    c.want_handshake[1] = 1
    evaluate(c, s, T0, rng)
    s.session_derived(1, T0 + 0.1)
    s.handshake_complete(1, T0 + 0.1, T0 + 0.1, initiator=True)
    assert not evaluate(c, s, T0 + 6, rng).send_initiation.any()
    # sending on our keypair before 120 s: nothing; after: rekey (once)
    c.last_auth_sent[1] = T0 + 100
    assert not evaluate(c, s, T0 + 100, rng).send_initiation[1]
    c.last_auth_sent[1] = T0 + 120.2
    assert evaluate(c, s, T0 + 120.2, rng).send_initiation[1]
    # the responder of a keypair never rekeys on time
    s.handshake_complete(2, T0, T0, initiator=False)
    c.last_auth_sent[2] = T0 + 150
    assert not evaluate(c, s, T0 + 150, rng).send_initiation[2]


def test_rekey_on_receive_at_165s():
    c, s, rng = setup()
    s.handshake_complete(0, T0, T0, initiator=True)
    c.last_auth_recv[0] = T0 + 160
    assert not evaluate(c, s, T0 + 160, rng).send_initiation[0]
    c.last_auth_recv[0] = T0 + 165
    assert evaluate(c, s, T0 + 165, rng).send_initiation[0]


def test_keepalive_after_10s_of_receiving_without_sending():
    c, s, rng = setup()
    c.pending_data_recv[2] = T0
    a = evaluate(c, s, T0 + 9.9, rng)
    assert not a.send_keepalive[2] and a.next_deadline == T0 + 10
    a = evaluate(c, s, T0 + 10, rng)
    assert list(a.indices(a.send_keepalive)) == [2]
    assert not evaluate(c, s, T0 + 11, rng).send_keepalive[2]   # not again for that data
    c.pending_data_recv[2] = T0 + 20
    assert evaluate(c, s, T0 + 30, rng).send_keepalive[2]


def test_new_handshake_after_15s_of_sending_without_reply():
    c, s, rng = setup()
    c.pending_data_sent[3] = T0
    a = evaluate(c, s, T0 + 14.9, rng)
    assert not a.send_initiation[3] and a.next_deadline == T0 + 15
    a = evaluate(c, s, T0 + 15, rng)
    assert a.send_initiation[3] and not a.retry[3]
    c.pending_data_sent[3] = 0                                  # an answer came back


def test_at_most_one_new_initiation_per_rekey_timeout():
    c, s, rng = setup()
    c.want_handshake[0] = 1
    evaluate(c, s, T0, rng)
    s.handshake_complete(0, T0 + 1, T0 + 1, initiator=True)
    c.want_handshake[0] = 1
    a = evaluate(c, s, T0 + 2, rng)
    assert not a.send_initiation[0] and a.next_deadline <= T0 + 5
    assert evaluate(c, s, T0 + 5, rng).send_initiation[0]


def test_persistent_keepalive():
    c, s, rng = setup()
    s.set_persistent_keepalive(1, 25)
    a = evaluate(c, s, T0, rng)
    assert a.persistent_keepalive[1]                          # at once when configured
    assert not evaluate(c, s, T0 + 24, rng).persistent_keepalive[1]
    c.last_auth_recv[1] = T0 + 20                             # traffic resets the interval
    assert not evaluate(c, s, T0 + 25, rng).persistent_keepalive[1]
    a = evaluate(c, s, T0 + 40, rng)
    assert not a.persistent_keepalive[1] and a.next_deadline == T0 + 45
    assert evaluate(c, s, T0 + 45, rng).persistent_keepalive[1]
    s.set_persistent_keepalive(1, 0)
    assert not evaluate(c, s, T0 + 500, rng).persistent_keepalive[1]


def test_zero_keys_after_540s():
    c, s, rng = setup()
    s.session_derived(0, T0)
    s.handshake_complete(0, T0, T0, initiator=False)
    assert not evaluate(c, s, T0 + 539, rng).zero_keys[0]
    a = evaluate(c, s, T0 + 540, rng)
    assert a.zero_keys[0] and s.keypair_created[0] == 0
    assert not evaluate(c, s, T0 + 600, rng).zero_keys[0]


def test_inactive_peers_ignored_and_idle_deadline_infinite():
    c, s, rng = setup()
    c.active[:] = 0
    c.want_handshake[:] = 1
    c.pending_data_recv[:] = T0
    a = evaluate(c, s, T0 + 100, rng)
    assert not (a.send_initiation.any() or a.send_keepalive.any())
    assert a.next_deadline == float("inf")
    s.reset(0)
    assert s.handshake_started[0] == 0


def test_no_initiation_for_rekey_timeout_after_sending_a_response():
    """Issue 10, 4b: right after answering an initiation the responder has data but no
    confirmed key (C asks for a handshake).  The kernel stamps the handshake-sent time when it
    sends a response, so no initiation of its own starts for REKEY_TIMEOUT."""
    c, s, rng = setup()
    # an attempt of ours was in flight when the peer's initiation arrived
    c.want_handshake[0] = 1
    evaluate(c, s, T0 - 20, rng)
    s.response_sent(0, T0)
    assert s.handshake_started[0] == 0 and s.retry_at[0] == 0
    c.want_handshake[0] = 1                                   # NO_KEY -> NEED_HANDSHAKE
    for now in (T0 + 0.01, T0 + 1.0, T0 + 4.9):
        a = evaluate(c, s, now, rng)
        assert not a.send_initiation[0]
        assert a.next_deadline <= T0 + 5.0
    a = evaluate(c, s, T0 + 5.0, rng)
    assert a.send_initiation[0] and not a.retry[0]
