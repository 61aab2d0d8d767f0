"""A device's configuration: applying UAPI set requests and answering get (what the kernel's
netlink.c does for `wg`), and the peer and key changes they make.

A mixin of wgfast.device.Device: these methods run on the control loop, under the device's
lock.  A set is applied whole or not at all, and costs what it changes (see _apply).
"""

from __future__ import annotations

import errno
import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from wgfast import timers
from wgfast.cookie import CookieChecker
from wgfast.dataplane import pack_endpoints
from wgfast.endpoint import Endpoint, format_endpoint
from wgfast.noise import StaticIdentity
from wgfast.peer import Peer
from wgfast.peers import format_key, network_of_key, pack_keys
from wgfast.uapi import (
    AllowedIpChange,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    UapiError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TypeVar

    from wgfast.dataplane import DataPlane
    from wgfast.peer import IndexTable
    from wgfast.peers import PeerTable
    from wgfast.sockets import UdpSockets

    T = TypeVar("T")


ZERO_KEY = bytes(32)

TRIM_AFTER_PEERS = 4096         # a set this large leaves the parse's garbage all over the heap


def _trim_heap() -> None:
    """Give the heap's free pages back after a large set (glibc; elsewhere nothing): the
    request's transient objects are freed by then, the configuration stays."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            getattr(_libc, "malloc_trim")  # noqa: B009 -- glibc only
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: Any = None     # ctypes.CDLL once loaded; False where libc has no malloc_trim


class _ApplyBatch:
    """The changes of one set request on their way to C: endpoints and allowed IPs go in a
    few large calls (cffi's per-call cost dominates one small insert).  Allowed-IP changes are
    queued in order and the per-peer sets updated from C's answers (each prefix's previous
    owner), so a prefix taken from another peer costs one insert, never a search."""

    def __init__(self, dev: Configuration) -> None:
        self.dev = dev
        self.t = dev.table
        self.ep_ids: list[int] = []
        self.eps: list[Endpoint] = []
        self.ops: list[tuple[int, bytes, bool]] = []    # (peer id, prefix key, remove)
        self.queued: set[int] = set()                   # peer ids with queued changes

    def endpoint(self, pid: int, ep: Endpoint) -> None:
        self.ep_ids.append(pid)
        self.eps.append(ep)

    def allowed(self, pid: int, key: bytes, remove: bool) -> None:
        self.ops.append((pid, key, remove))
        self.queued.add(pid)

    def same_allowed(self, pid: int, changes: list[AllowedIpChange]) -> bool:
        """Whether replacing pid's prefixes with `changes` (all adds) changes nothing."""
        cur = self.t.allowed(pid)
        if len(cur) != len(changes) or any(c.remove for c in changes):
            return False
        if self.ops:
            self.flush()        # queued moves may take some of pid's prefixes away
        return list(cur) == [c.key for c in changes]

    def clear_allowed(self, pid: int) -> None:
        if pid in self.queued:
            self.flush()
        keys = list(self.t.allowed(pid))
        if keys:
            assert self.dev.dp is not None
            fams, recs = pack_keys(keys)
            self.dev.dp.aip_remove_many(fams, recs, [pid] * len(keys))
            self.t.allowed(pid).clear()

    def flush(self) -> None:
        dp = self.dev.dp
        assert dp is not None
        if self.ep_ids:
            dp.set_endpoints(self.ep_ids, pack_endpoints(self.eps))
            self.ep_ids, self.eps = [], []
        ops, self.ops = self.ops, []
        self.queued.clear()
        aips = self.t.aips
        i = 0
        while i < len(ops):
            # Runs of inserts or of removes, each one C call, applied in order.
            remove = ops[i][2]
            j = i
            while j < len(ops) and ops[j][2] == remove:
                j += 1
            run = ops[i:j]
            keys = [k for _, k, _ in run]
            pids = [p for p, _, _ in run]
            fams, recs = pack_keys(keys)
            if remove:
                owners = dp.aip_remove_many(fams, recs, pids)
                for pid, key, owner in zip(pids, keys, owners, strict=True):
                    if owner == pid:
                        aips[pid].pop(key, None)    # type: ignore[union-attr]
            else:
                prev = dp.aip_insert_many(fams, recs, pids)
                for pid, key, was in zip(pids, keys, prev, strict=True):
                    if was >= 0 and was != pid:
                        aips[was].pop(key, None)    # type: ignore[union-attr]
                    aips[pid][key] = None           # type: ignore[index]
            i = j




class Configuration:
    """Set and get, and the peer table changes behind them."""

    if TYPE_CHECKING:       # what the device provides
        dp: DataPlane | None
        identity: StaticIdentity | None
        checker: CookieChecker | None
        udp: UdpSockets
        table: PeerTable
        peers: Mapping[bytes, Peer]
        timer_state: timers.TimerState
        indices: IndexTable
        max_peers: int

        @property
        def listen_port(self) -> int: ...
        @property
        def fwmark(self) -> int: ...
        _clocks: timers.Clocks | None

        def _kick(self) -> None: ...
        def _restart_dataplane(self, change: Callable[[], T]) -> T: ...

    def _tables_grew(self) -> None:
        """The C tables grew: the Python columns follow, and the timers read the new views."""
        assert self.dp is not None
        self.table.grow(self.dp.capacity)
        self._clocks = timers.Clocks(want_handshake=self.dp.want_handshake,
                                     active=self.dp.active, **self.dp.clocks)

    def _new_peer(self, public_key: bytes) -> int:
        assert self.dp is not None
        self.dp.reserve(self.table.next_id() + 1)      # grows self.table too
        pid = self.table.add(public_key)
        self.dp.peer_add(pid)
        return pid

    def _remove_peer(self, public_key: bytes) -> None:
        assert self.dp is not None
        pid = self.table.id_of(public_key)
        if pid is None:
            return
        peer = self.table.live.get(pid)
        if peer is not None:
            peer.zero_keys(self.indices)     # C drops its staged packets with the peer
        keys = list(self.table.allowed(pid))
        if keys:
            # By name, so C need not walk the whole trie for this peer.
            fams, recs = pack_keys(keys)
            self.dp.aip_remove_many(fams, recs, [pid] * len(keys))
        self.dp.peer_remove(pid)      # keypairs, endpoint; its id is released
        self.table.remove(public_key)

    def _expire_keys(self, peer: Peer) -> None:
        assert self.dp is not None
        for idx in peer.zero_keys(self.indices):
            self.dp.keypair_remove(idx)
        self.timer_state.reset(peer.peer_id)
        self.timer_state.set_persistent_keepalive(
            peer.peer_id, int(self.table.keepalive[peer.peer_id]))

    def _set_private_key(self, key: bytes) -> None:
        if key == ZERO_KEY:
            self.identity = None
            self.checker = None
            if self.dp is not None:
                self.dp.set_handshake_keys(None, None)
        else:
            if self.identity is not None and self.identity.private == key:
                return
            self.identity = StaticIdentity(key)
            self.checker = CookieChecker(self.identity.public)
            if self.dp is not None:
                # C checks mac1 (and under load mac2) before anything reaches Python.
                self.dp.set_handshake_keys(self.checker.mac1_key, self.checker.cookie_key)
            # Our own public key cannot be a peer (wireguard-go drops it).
            if self.identity.public in self.peers:
                self._remove_peer(self.identity.public)
        # Sessions made with the old key are void: the next packet starts a handshake.  Only
        # peers with protocol state can have any.
        for peer in list(self.table.live.values()):
            self._expire_keys(peer)


    def _snapshot(self) -> DeviceSnapshot:
        assert self.dp is not None
        t = self.table
        peers = []
        for pk, pid in t.ids.items():
            wall = float(t.last_handshake_wall[pid])
            sec = int(wall)
            peers.append(PeerSnapshot(
                public_key=pk,
                preshared_key=t.preshared_key(pid),
                endpoint=self.dp.get_endpoint(pid),
                persistent_keepalive_interval=int(t.keepalive[pid]),
                allowed_ips=[network_of_key(k) for k in t.allowed(pid)],
                rx_bytes=int(self.dp.rx_bytes[pid]),
                tx_bytes=int(self.dp.tx_bytes[pid]),
                last_handshake_time_sec=sec,
                last_handshake_time_nsec=int(round((wall - sec) * 1e9)) if sec else 0,
            ))
        return DeviceSnapshot(
            private_key=bytes(self.identity.private) if self.identity else ZERO_KEY,
            listen_port=self.listen_port, fwmark=self.fwmark, peers=peers)

    GET_BLOCK = 512             # peers per piece of a streamed get reply

    def uapi_get_chunks(self) -> Iterator[str]:
        """The get reply in pieces, made as the server writes them (a large device never
        becomes one string).  The server awaits between pieces, so peers are taken from a
        list made at the start, and one removed meanwhile (its id released) is left out."""
        assert self.dp is not None
        t = self.table
        head: list[str] = []
        if self.identity is not None:
            head.append(f"private_key={self.identity.private.hex()}\n")
        if self.listen_port:
            head.append(f"listen_port={self.listen_port}\n")
        if self.fwmark:
            head.append(f"fwmark={self.fwmark}\n")
        order = list(t.ids.items())
        gens = t.gen.copy()             # generations as of the start
        out = head
        for at in range(0, len(order), self.GET_BLOCK):
            block = [(pk, pid) for pk, pid in order[at:at + self.GET_BLOCK]
                     if t.valid(pid, int(gens[pid]))]
            if not block:
                continue
            ids = np.fromiter((pid for _, pid in block), dtype=np.int64, count=len(block))
            eps = self.dp.get_endpoints(ids)
            fam, port, scope = (eps["family"].tolist(), eps["port"].tolist(),
                                eps["scope_id"].tolist())
            addrs = eps["addr"].tobytes()
            tx, rx = self.dp.tx_bytes[ids].tolist(), self.dp.rx_bytes[ids].tolist()
            ka = t.keepalive[ids].tolist()
            wall = t.last_handshake_wall[ids].tolist()
            for k, (pk, pid) in enumerate(block):
                ep = format_endpoint(fam[k], port[k], scope[k], addrs[16 * k:16 * k + 16])
                sec = int(wall[k])
                nsec = int(round((wall[k] - sec) * 1e9)) if sec else 0
                out.append(f"public_key={pk.hex()}\npreshared_key={t.preshared_key(pid).hex()}\n"
                           "protocol_version=1\n")
                if ep is not None:
                    out.append(f"endpoint={ep}\n")
                out.append(f"last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\n"
                           f"tx_bytes={tx[k]}\nrx_bytes={rx[k]}\n"
                           f"persistent_keepalive_interval={ka[k]}\n")
                aips = t.aips[pid]
                if aips:
                    out.extend([f"allowed_ip={format_key(key)}\n" for key in aips])
            yield "".join(out)
            out = []
        out.append("errno=0\n\n")
        yield "".join(out)

    def _apply(self, req: SetRequest) -> None:
        """Apply a whole set request or nothing: everything that can fail is checked (or
        prepared, like a new listening socket) before the first change is made.  The cost is
        what the request changes: no step walks every configured peer (but replace_peers)."""
        assert self.dp is not None
        t = self.table
        own = self.identity.public if self.identity else None
        if req.private_key is not None and req.private_key != ZERO_KEY:
            own = StaticIdentity(req.private_key).public
        present: dict[bytes, bool] = {}     # key -> configured after the blocks so far
        count = 0 if req.replace_peers else len(t)
        for ps in req.peers:
            pk = ps.public_key
            if pk == own:
                continue
            was = present.get(pk)
            if was is None:
                was = not req.replace_peers and pk in t
            if ps.remove:
                count -= was
                present[pk] = False
            elif not was and not ps.update_only:
                count += 1
                present[pk] = True
        if count > self.max_peers:
            raise UapiError(errno.ENOSPC, "too many peers")
        socks = None
        if req.listen_port is not None and (req.listen_port != self.listen_port
                                            or req.listen_port == 0):
            fwmark = self.fwmark if req.fwmark is None else req.fwmark
            try:
                socks = self.udp.open_pair(req.listen_port, fwmark)
            except OSError as e:
                raise UapiError(errno.EADDRINUSE if e.errno == errno.EADDRINUSE else errno.EIO,
                                f"cannot listen on port {req.listen_port}: {e}") from None

        # From here on nothing fails (but memory).
        if req.private_key is not None:
            self._set_private_key(req.private_key)
        if socks is not None:
            self._restart_dataplane(lambda: self.udp.swap(*socks))
        if req.fwmark is not None:
            self.udp.set_fwmark(req.fwmark)
        if req.replace_peers:
            for pk in list(t.ids):
                self._remove_peer(pk)
        own = self.identity.public if self.identity else None
        batch = _ApplyBatch(self)
        for ps in req.peers:
            if ps.public_key == own:
                continue
            if ps.remove:
                batch.flush()
                self._remove_peer(ps.public_key)
                continue
            pid = t.id_of(ps.public_key)
            if pid is None:
                if ps.update_only:
                    continue
                pid = self._new_peer(ps.public_key)
            if ps.preshared_key is not None:
                t.set_preshared_key(pid, ps.preshared_key)
            if ps.endpoint is not None:
                batch.endpoint(pid, ps.endpoint)
            if ps.persistent_keepalive_interval is not None:
                ka = ps.persistent_keepalive_interval
                if ka != int(t.keepalive[pid]):
                    t.keepalive[pid] = ka
                    self.timer_state.set_persistent_keepalive(pid, ka)
            if ps.replace_allowed_ips:
                if batch.same_allowed(pid, ps.allowed_ips):
                    continue        # `wg syncconf` sends every peer's prefixes again
                batch.clear_allowed(pid)
            for change in ps.allowed_ips:
                batch.allowed(pid, change.key, change.remove)
        batch.flush()
        if len(req.peers) >= TRIM_AFTER_PEERS:
            _trim_heap()
            # What is alive now is the configuration: later collections need not walk it.
            gc.freeze()
        self._kick()

