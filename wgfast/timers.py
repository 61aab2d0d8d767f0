"""Every WireGuard timer rule (whitepaper §6), evaluated for all peers at once.

Timers are data, not threads.  The C data plane stamps per-peer clocks (struct wg_peer_clocks
in csrc/wgfast.h: float64 CLOCK_MONOTONIC seconds, 0 = never); the control plane keeps its own
per-peer arrays in `TimerState`; `evaluate(clocks, state, now, rng)` returns what is due for
every peer as boolean arrays, updates `state` for the actions it returns (the caller must
carry them out), and says when to look again (`next_deadline`).

Rules (kernel timers.c semantics where the paper leaves a choice):
  * handshake retry: REKEY_TIMEOUT + jitter in [0, 333 ms) after each initiation, until a
    handshake completes; after REKEY_ATTEMPT_TIME of trying, give up (drop staged packets);
  * new handshake: C asked for one (want_handshake: no usable key, or REKEY_AFTER_MESSAGES);
    we sent on a keypair we initiated that is REKEY_AFTER_TIME old; we received on such a
    keypair at REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT; or data was sent and
    nothing authenticated came back for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT.  At most one new
    initiation per REKEY_TIMEOUT, and none while one is in flight;
  * keepalive: data received and nothing authenticated sent for KEEPALIVE_TIMEOUT;
  * persistent keepalive: every N s without any authenticated packet sent or received;
  * zero keys: 3 x REJECT_AFTER_TIME after the last session was derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .messages import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    ZERO_KEYS_AFTER,
)

# Receiving on an old keypair we initiated: rekey before the peer's REJECT_AFTER_TIME hits.
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT


@dataclass
class Clocks:
    """Plain numpy twin of struct wg_peer_clocks (tests, benchmarks); the device passes the
    real views from dataplane.py, which have the same attribute names."""
    last_data_sent: np.ndarray
    last_data_recv: np.ndarray
    last_auth_sent: np.ndarray
    last_auth_recv: np.ndarray
    pending_data_sent: np.ndarray
    pending_data_recv: np.ndarray
    want_handshake: np.ndarray
    active: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> Clocks:
        kw = {f.name: np.zeros(n, dtype=np.float64) for f in fields(cls)}
        kw["want_handshake"] = np.zeros(n, dtype=np.uint8)
        kw["active"] = np.zeros(n, dtype=np.uint8)
        return cls(**kw)


class TimerState:
    """The control plane's per-peer timer arrays (0 = never / none).  They grow with the
    peer table (grow); evaluate() reads them afresh each time."""

    def __init__(self, max_peers: int) -> None:
        z = lambda: np.zeros(max_peers, dtype=np.float64)  # noqa: E731
        self.max_peers = max_peers
        self.handshake_started = z()     # first initiation of the attempt in flight, 0 = none
        self.last_initiation_sent = z()
        self.retry_at = z()              # next retransmission (REKEY_TIMEOUT + jitter)
        self.attempts = np.zeros(max_peers, dtype=np.int32)   # initiations in this attempt
        self.last_handshake = z()        # last completed handshake (for `wg show`)
        self.keypair_created = z()       # current keypair, 0 = none
        self.keypair_initiator = np.zeros(max_peers, dtype=bool)
        self.derived_at = z()            # last keys derived (either side)
        self.keys_live = np.zeros(max_peers, dtype=bool)
        self.persistent_interval = z()   # seconds, 0 = off
        self.persistent_sent = z()       # last persistent keepalive fired
        self.keepalive_sent = z()        # last keepalive fired

    def grow(self, n: int) -> None:
        """Make every array n long, keeping what is there (new entries 0)."""
        if n <= self.max_peers:
            return
        for name, arr in list(vars(self).items()):
            if isinstance(arr, np.ndarray):
                b = np.zeros(n, dtype=arr.dtype)
                b[: self.max_peers] = arr
                setattr(self, name, b)
        self.max_peers = n

    # -- events the device reports -----------------------------------------------------------
    def reset(self, i: int) -> None:
        """A peer slot was (re)configured or removed."""
        for arr in vars(self).values():
            if isinstance(arr, np.ndarray):
                arr[i] = 0

    def initiation_sent(self, i: int, now: float, rng: np.random.Generator) -> None:
        """An initiation sent outside evaluate() (e.g. from a WG_EV_NEED_HANDSHAKE event)."""
        if self.handshake_started[i] == 0:
            self.handshake_started[i] = now
            self.attempts[i] = 0
        self.attempts[i] += 1
        self.last_initiation_sent[i] = now
        self.retry_at[i] = now + REKEY_TIMEOUT + rng.uniform(0.0, REKEY_TIMEOUT_JITTER_MAX)

    def response_sent(self, i: int, now: float) -> None:
        """We answered an initiation: an attempt of ours in flight is abandoned, and the
        response counts as a handshake sent (the kernel stamps it), so no initiation of our
        own starts for REKEY_TIMEOUT -- the initiator's first data confirms the session."""
        self.handshake_started[i] = 0
        self.retry_at[i] = 0
        self.attempts[i] = 0
        self.last_initiation_sent[i] = now

    def session_derived(self, i: int, now: float) -> None:
        """Keys were derived (initiator consumed a response / responder sent one)."""
        self.derived_at[i] = now
        self.keys_live[i] = True

    def handshake_complete(self, i: int, now: float, keypair_created: float,
                           initiator: bool) -> None:
        """A keypair became current: the initiator got a response, or the responder's
        keypair was confirmed by data (WG_EV_CONFIRMED).  Stops retries."""
        self.handshake_started[i] = 0
        self.retry_at[i] = 0
        self.attempts[i] = 0
        self.last_handshake[i] = now
        self.keypair_created[i] = keypair_created
        self.keypair_initiator[i] = initiator

    def set_persistent_keepalive(self, i: int, interval: float) -> None:
        """0 turns it off.  A newly set interval fires at the next evaluate (as the kernel
        sends a keepalive at once when the option is set on a running interface)."""
        self.persistent_interval[i] = interval
        self.persistent_sent[i] = 0


@dataclass
class Actions:
    send_initiation: np.ndarray     # bool per peer: create and send an initiation
    retry: np.ndarray               # bool: of those, which are retransmissions
    give_up: np.ndarray             # bool: stop trying, drop staged packets
    send_keepalive: np.ndarray      # bool: passive keepalive (answering received data)
    persistent_keepalive: np.ndarray  # bool: persistent keepalive (not also in send_keepalive)
    zero_keys: np.ndarray           # bool: remove every keypair and handshake of the peer
    next_deadline: float = field(default=float("inf"))   # earliest future due time

    @staticmethod
    def indices(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)


def _earliest(now: float, *cands: tuple[np.ndarray, np.ndarray]) -> float:
    best = float("inf")
    for cond, due in cands:
        sel = due[cond & (due > now)]
        if sel.size:
            best = min(best, float(sel.min()))
    return best


def evaluate(clocks: Clocks, state: TimerState, now: float,
             rng: np.random.Generator) -> Actions:
    s = state
    act = np.asarray(clocks.active) != 0
    lds = np.asarray(clocks.last_auth_sent)
    lar = np.asarray(clocks.last_auth_recv)
    pds = np.asarray(clocks.pending_data_sent)
    pdr = np.asarray(clocks.pending_data_recv)
    want_arr = clocks.want_handshake
    want = np.asarray(want_arr) != 0

    in_flight = act & (s.handshake_started > 0)

    # -- retransmission and giving up
    retry_due = in_flight & (now >= s.retry_at)
    give_up = retry_due & (now - s.handshake_started >= REKEY_ATTEMPT_TIME)
    retry = retry_due & ~give_up

    # -- reasons to start a new handshake
    kc = s.keypair_created
    mine = s.keypair_initiator & (kc > 0)
    rekey_send = mine & (lds - kc >= REKEY_AFTER_TIME) & (lds > s.last_initiation_sent)
    rekey_recv = mine & (lar - kc >= REKEY_ON_RECEIVE_AGE) & (lar > s.last_initiation_sent)
    no_reply_due = pds + (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)
    no_reply = (pds > 0) & (now >= no_reply_due) & (s.last_initiation_sent < no_reply_due)
    wanted = act & ~in_flight & (want | rekey_send | rekey_recv | no_reply)
    spaced = now - s.last_initiation_sent >= REKEY_TIMEOUT
    start = wanted & spaced
    send_init = retry | start

    # -- keepalives
    ka_due = pdr + KEEPALIVE_TIMEOUT
    ka_armed = act & (pdr > 0) & (s.keepalive_sent < pdr)
    send_ka = ka_armed & (now >= ka_due)
    pk = s.persistent_interval
    pk_due = np.maximum(np.maximum(lds, lar), s.persistent_sent) + pk
    pk_on = act & (pk > 0)
    persistent = pk_on & (now >= pk_due)
    fired_ka = send_ka | persistent
    persistent &= ~send_ka

    # -- key expiry
    zero_due = s.derived_at + ZERO_KEYS_AFTER
    zero = act & s.keys_live & (now >= zero_due)

    # -- update our own state for everything returned
    n_send = int(np.count_nonzero(send_init))
    if n_send:
        s.handshake_started[start] = now
        s.attempts[start] = 0
        s.attempts[send_init] += 1
        s.last_initiation_sent[send_init] = now
        s.retry_at[send_init] = now + REKEY_TIMEOUT + rng.uniform(
            0.0, REKEY_TIMEOUT_JITTER_MAX, size=n_send)
    if give_up.any():
        s.handshake_started[give_up] = 0
        s.retry_at[give_up] = 0
        s.attempts[give_up] = 0
    if fired_ka.any():
        s.keepalive_sent[send_ka] = now
        s.persistent_sent[fired_ka] = now
    if zero.any():
        s.keys_live[zero] = False
        s.keypair_created[zero] = 0
        s.keypair_initiator[zero] = False
    # C's request is answered by the attempt in flight (or the one just started).
    clear_want = want & (in_flight | start)
    if clear_want.any():
        want_arr[clear_want] = 0

    in_flight_now = act & (s.handshake_started > 0)
    blocked = wanted & ~spaced
    nd = _earliest(
        now,
        (in_flight_now, s.retry_at),
        (blocked, s.last_initiation_sent + REKEY_TIMEOUT),
        (ka_armed & ~send_ka, ka_due),
        (act & (pds > 0) & (s.last_initiation_sent < no_reply_due), no_reply_due),
        (pk_on, np.maximum(np.maximum(lds, lar), s.persistent_sent) + pk),
        (act & s.keys_live, s.derived_at + ZERO_KEYS_AFTER),
        (act & s.keypair_initiator & (s.keypair_created > 0), s.keypair_created + REKEY_AFTER_TIME),
    )
    return Actions(send_init, retry, give_up, send_ka, persistent, zero, nd)
