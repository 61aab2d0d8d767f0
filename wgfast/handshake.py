"""Handshake intake and the timer actions (the handshake half of the kernel's receive.c, and
what its timers.c does when a timer fires): initiations, responses, cookie replies, keepalives
and the packets staged while a peer had no session.

A mixin of wgfast.device.Device: these methods run on the control loop, under the device's
lock, and use its data plane, identity, peer table and UDP sockets.  The protocol steps are
I/O-free in wgfast.peer and wgfast.noise; this is where their results meet C and the network.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from wgfast import messages, timers
from wgfast.cookie import Verdict, source_bytes
from wgfast.dataplane import lib
from wgfast.endpoint import Endpoint
from wgfast.metrics import LatencyHistogram
from wgfast.peer import IndexTable, KeypairMaterial, Peer, consume_initiation
from wgfast.ratelimiter import RateLimiter

if TYPE_CHECKING:
    from collections.abc import Mapping

    from wgfast.cookie import CookieChecker
    from wgfast.dataplane import DataPlane
    from wgfast.noise import StaticIdentity
    from wgfast.peers import PeerTable
    from wgfast.sockets import UdpSockets


log = logging.getLogger("wgfast")


def peer_name(public_key: bytes) -> str:
    """How logs name a peer: the ends of its public key, as wireguard-go does."""
    b = base64.b64encode(public_key).decode()
    return f"peer({b[:4]}…{b[-5:-1]})"


class Handshakes:
    """The handshake state of a device, and what it does with handshake messages and timers."""

    if TYPE_CHECKING:       # what the device provides
        dp: DataPlane | None
        identity: StaticIdentity | None
        checker: CookieChecker | None
        udp: UdpSockets
        peers: Mapping[bytes, Peer]
        by_id: Mapping[int, Peer]
        timer_state: timers.TimerState
        table: PeerTable

    def _init_handshakes(self) -> None:
        self.indices = IndexTable()
        self.ratelimiter = RateLimiter()
        self.rng = np.random.default_rng()
        self.handshake_drops: int = 0
        self.handshake_outcomes: dict[str, int] = dict.fromkeys(
            ("accepted", "bad_mac1", "cookie_sent", "rate_limited"), 0)
        self.handshake_rtt = LatencyHistogram()

    # The peer table's handshake columns, by the names metrics and tests use.
    @property
    def last_handshake_wall(self) -> np.ndarray:
        return self.table.last_handshake_wall

    @property
    def handshakes_completed(self) -> np.ndarray:
        return self.table.handshakes

    @property
    def handshake_timeouts(self) -> np.ndarray:
        return self.table.handshake_timeouts

    @property
    def _initiation_sent(self) -> np.ndarray:
        return self.table.initiation_sent

    def _sendto(self, data: bytes, ep: Endpoint) -> bool:
        """Send a handshake message (from ep's sticky source, if it has one)."""
        return self.udp.send(data, ep)

    # ---- timer actions ------------------------------------------------------------------
    def _timer_actions(self, clocks: timers.Clocks, now: float) -> float:
        """Evaluate the timers of every peer and do what is due; returns the next deadline."""
        assert self.dp is not None
        act = timers.evaluate(clocks, self.timer_state, now, self.rng)
        timeouts = self.handshake_timeouts          # a column of the peer table
        timeouts += act.retry | act.give_up         # no response in time
        for pid in np.flatnonzero(act.give_up):
            peer = self.by_id.get(int(pid))
            if peer is not None:
                log.debug("%s - handshake did not complete after %d seconds, giving up",
                          peer_name(peer.public_key), int(messages.REKEY_ATTEMPT_TIME))
                self.dp.drop_staged(peer.peer_id)
                peer.abandon_handshake(self.indices)
        for pid in np.flatnonzero(act.zero_keys):
            peer = self.by_id.get(int(pid))
            if peer is not None:
                for idx in peer.zero_keys(self.indices):
                    self.dp.keypair_remove(idx)
        for pid in np.flatnonzero(act.send_initiation):
            peer = self.by_id.get(int(pid))
            if peer is not None:
                self._send_initiation(peer, now)
        for pid in np.flatnonzero(act.send_keepalive | act.persistent_keepalive):
            peer = self.by_id.get(int(pid))
            if peer is not None:
                self._send_keepalive(peer, now)
        return act.next_deadline

    # ---- handshakes ---------------------------------------------------------------------
    def _send_initiation(self, peer: Peer, now: float) -> None:
        assert self.dp is not None
        if self.identity is None:
            return
        ep = self.dp.get_endpoint(peer.peer_id)
        if ep is None:
            return
        try:
            msg = peer.create_initiation(self.identity, now, time.time(), self.indices)
        except messages.MessageError:
            return          # a low-order peer key: no handshake is possible
        log.debug("%s - sending handshake initiation", peer_name(peer.public_key))
        if self._sendto(msg, ep):
            self.dp.add_bytes(peer.peer_id, tx=len(msg))
            self._initiation_sent[peer.peer_id] = now

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        assert self.dp is not None
        r = self.dp.send_packet(peer.peer_id, b"", now)
        if r == lib.WG_DROP_NO_KEY:
            self.dp.want_handshake[peer.peer_id] = 1

    def _send_staged(self, peer: Peer, now: float) -> int:
        """Send the packets C staged for the peer while it had no session; how many went."""
        assert self.dp is not None
        return self.dp.flush_staged(peer.peer_id, now)

    def _install(self, km: KeypairMaterial, evicted: list[int]) -> None:
        assert self.dp is not None
        for idx in evicted:
            self.dp.keypair_remove(idx)
        self.dp.keypair_install(*km.install_args()[:6], initiator=km.initiator,
                                current=bool(km.make_current))

    def _new_session(self, km: KeypairMaterial, evicted: list[int], addr: Endpoint,
                     now: float, tx: int = 0, rx: int = 0) -> None:
        """Keys derived from a handshake: into C, and the peer's endpoint is where the
        handshake came from (roaming, for handshakes)."""
        assert self.dp is not None
        self._install(km, evicted)
        self.dp.set_endpoint(km.peer_id, addr)
        self.dp.add_bytes(km.peer_id, tx=tx, rx=rx)
        self.timer_state.session_derived(km.peer_id, now)

    def _on_confirmed(self, pid: int, local_index: int, now: float) -> None:
        assert self.dp is not None
        peer = self.by_id.get(pid)
        if peer is None:
            return
        was_next = peer.next is not None and peer.next.local_index == local_index
        created = peer.next.created if was_next and peer.next else now
        for idx in peer.confirm(local_index):
            self.dp.keypair_remove(idx)
        if was_next:
            log.debug("%s - first data under the new keypair: session confirmed",
                      peer_name(peer.public_key))
            self.timer_state.handshake_complete(pid, now, created, False)
            self.last_handshake_wall[pid] = time.time()
            self.handshakes_completed[pid] += 1
            self._send_staged(peer, now)

    def _on_handshake(self, data: bytes, addr: Endpoint, now: float,
                      verified: bool = True) -> None:
        """A handshake message that passed C's intake (handshake_in.c: mac1, and under load
        mac2 and the rate limit).  Unverified ones (C has no BLAKE2s) are checked here."""
        assert self.dp is not None
        try:
            mtype = messages.message_type(data)
        except messages.MessageError:
            self.handshake_drops += 1
            return
        if self.identity is None or self.checker is None:
            return
        if mtype == messages.MSG_COOKIE_REPLY:
            try:
                reply = messages.parse_cookie_reply(data)
            except messages.MessageError:
                self.handshake_drops += 1
                return
            peer = self.indices.get(reply.receiver)
            if peer is None or not peer.consume_cookie_reply(reply, now):
                self.handshake_drops += 1
            return
        if not verified and not self._check_macs(data, addr, now):
            return
        if mtype == messages.MSG_INITIATION:
            self._on_initiation(data, addr, now)
        elif mtype == messages.MSG_RESPONSE:
            self._on_response(data, addr, now)

    def _check_macs(self, data: bytes, addr: Endpoint, now: float) -> bool:
        """The Python twin of C's intake, for when C could not load BLAKE2s."""
        assert self.dp is not None and self.checker is not None
        host, port = addr
        ip = ipaddress.ip_address(host.partition("%")[0])
        src = source_bytes(ip.packed, port)
        under_load = self.dp.under_load(now)
        verdict = self.checker.validate(data, src, now, under_load)
        if verdict is Verdict.DROP:
            self.handshake_drops += 1
            self.handshake_outcomes["bad_mac1"] += 1
            return False
        if verdict is Verdict.SEND_COOKIE:
            if self.ratelimiter.allow(ip.packed, now):
                self.handshake_outcomes["cookie_sent"] += 1
                with contextlib.suppress(messages.MessageError):
                    self._sendto(self.checker.create_reply(data, src, now), addr)
            return False
        if under_load and not self.ratelimiter.allow(ip.packed, now):
            self.handshake_outcomes["rate_limited"] += 1
            return False
        return True

    def _on_initiation(self, data: bytes, addr: Endpoint, now: float) -> None:
        assert self.dp is not None and self.identity is not None
        got = consume_initiation(self.identity, data, self.peers, now, time.time())
        if got is None:
            self.handshake_drops += 1
            return
        peer, state = got
        pid = peer.peer_id
        log.debug("%s - received handshake initiation, sending response",
                  peer_name(peer.public_key))
        resp, km, evicted = peer.create_response(self.identity, state, now, self.indices)
        self.handshake_outcomes["accepted"] += 1
        self._new_session(km, evicted, addr, now, tx=len(resp), rx=len(data))
        # The attempt of ours in flight, if any, was abandoned for this one; and as the
        # kernel does, a response counts as a handshake sent: no initiation of our own for
        # REKEY_TIMEOUT (the initiator's data will confirm this session first).
        self.timer_state.response_sent(pid, now)
        self._sendto(resp, addr)

    def _on_response(self, data: bytes, addr: Endpoint, now: float) -> None:
        assert self.dp is not None and self.identity is not None
        receiver = int.from_bytes(data[8:12], "little")
        peer = self.indices.get(receiver)
        if peer is None:
            self.handshake_drops += 1
            return
        got = peer.consume_response(self.identity, data, now, self.indices)
        if got is None:
            self.handshake_drops += 1
            return
        km, evicted = got
        pid = peer.peer_id
        log.debug("%s - received handshake response: session established",
                  peer_name(peer.public_key))
        self._new_session(km, evicted, addr, now, rx=len(data))
        self.timer_state.handshake_complete(pid, now, now, True)
        self.last_handshake_wall[pid] = time.time()
        self.handshakes_completed[pid] += 1
        self.handshake_outcomes["accepted"] += 1
        self.handshake_rtt.observe(now - self._initiation_sent[pid])
        # Staged packets confirm the session; with none, a keepalive does (whitepaper 6.5).
        if not self._send_staged(peer, now):
            self._send_keepalive(peer, now)
