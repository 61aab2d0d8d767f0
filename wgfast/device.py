"""The device: one WireGuard interface.  It owns the TUN, the UDP sockets, the UAPI socket, the
C data plane and the control loop that runs the protocol core on its events and timers.

The control loop (asyncio, one thread) wakes for three reasons:
  - the data plane's eventfd: handshake messages that passed C's intake (mac1, and under load
    mac2 and the rate limit), and per-peer control flags ("this peer needs a handshake", "the
    responder's keypair was confirmed"), each taken in a bounded slice per loop turn;
  - a timer deadline computed by timers.evaluate over all peers at once;
  - a UAPI request (wg, wg-quick) or a call from the Python API.
It never touches a data packet: packets waiting for a session stay in C (staging.c) until it
asks C to send them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from wgfast import messages, timers
from wgfast.cookie import CookieChecker, Verdict, source_bytes
from wgfast.dataplane import DataPlane, lib, pack_endpoints
from wgfast.metrics import LatencyHistogram, MetricsServer
from wgfast.noise import StaticIdentity
from wgfast.peer import IndexTable, KeypairMaterial, Peer, consume_initiation
from wgfast.peers import PeerTable, format_key, network_of_key, pack_keys
from wgfast.ratelimiter import RateLimiter
from wgfast.tun import Tun, TunError, TunGone, link_events
from wgfast.uapi import (
    AllowedIpChange,
    DeviceSnapshot,
    Endpoint,
    PeerSnapshot,
    SetRequest,
    UapiError,
    UapiServer,
    format_endpoint,
    parse_set,
)

log = logging.getLogger("wgfast")

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ZERO_KEY = bytes(32)
SOCKET_BUFFER = 4 << 20          # UDP socket buffers (forced as root): bursts of 64-packet batches
HANDSHAKE_SLICE = 64             # handshake messages handled per loop turn
CONTROL_SLICE = 1024             # peers' control flags collected per loop turn
HOUSEKEEPING = 1.0               # UAPI socket check; MTU and interface checks as a fallback
TUN_TXQUEUELEN = 4096
SOL_UDP = 17
UDP_GRO = 104
IP_PKTINFO = 8                      # linux/in.h; Python's socket module lacks it
# A send from a sticky source failing with these: the address left the host (or its route).
SOURCE_ERRNOS = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH,
                           errno.EHOSTUNREACH, errno.ENODEV, errno.ENXIO})
TUN_OFFLOADS = (lib.WG_TUN_F_CSUM | lib.WG_TUN_F_TSO4 | lib.WG_TUN_F_TSO6 | lib.WG_TUN_F_TSO_ECN)
TUN_USO = lib.WG_TUN_F_USO4 | lib.WG_TUN_F_USO6


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


_libc: object = None


def peer_name(public_key: bytes) -> str:
    """How logs name a peer: the ends of its public key, as wireguard-go does."""
    import base64

    b = base64.b64encode(public_key).decode()
    return f"peer({b[:4]}…{b[-5:-1]})"


def offloads_default() -> bool:
    """TUN and UDP offloads are on unless WGFAST_OFFLOADS=off (for comparisons and tests)."""
    return os.environ.get("WGFAST_OFFLOADS", "on").lower() not in ("off", "0", "no", "false")


def pipeline_default() -> bool:
    """Run-to-completion threads unless WGFAST_THREADS=pipeline (two stages per loop, for
    comparison; see the README)."""
    mode = os.environ.get("WGFAST_THREADS", "rtc").lower()
    if mode not in ("rtc", "pipeline"):
        raise DeviceError(f"WGFAST_THREADS={mode!r}: expected 'rtc' or 'pipeline'")
    return mode == "pipeline"


class DeviceError(Exception):
    """The device cannot be created or configured."""


@dataclass
class Stats:
    """A peer's counters as the Python API reports them."""

    public_key: bytes
    endpoint: Endpoint | None
    rx_bytes: int
    tx_bytes: int
    last_handshake: float | None        # unix time
    allowed_ips: list[IPNetwork]


def _endpoint_tuple(ep: Endpoint | None) -> tuple[str, int] | None:
    return None if ep is None else (str(ep.address), ep.port)


def _endpoint_from_tuple(t: tuple[str, int] | None) -> Endpoint | None:
    if t is None:
        return None
    host, port = t
    return Endpoint(ipaddress.ip_address(host), port)


class _ApplyBatch:
    """The changes of one set request on their way to C: endpoints and allowed IPs go in a
    few large calls (cffi's per-call cost dominates one small insert).  Allowed-IP changes are
    queued in order and the per-peer sets updated from C's answers (each prefix's previous
    owner), so a prefix taken from another peer costs one insert, never a search."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.t = dev.table
        self.ep_ids: list[int] = []
        self.ep_fam: list[int] = []
        self.ep_port: list[int] = []
        self.ep_scope: list[int] = []
        self.ep_addr: list[bytes] = []
        self.ops: list[tuple[int, bytes, bool]] = []    # (peer id, prefix key, remove)
        self.queued: set[int] = set()                   # peer ids with queued changes

    def endpoint(self, pid: int, ep: Endpoint) -> None:
        packed = ep.address.packed
        self.ep_ids.append(pid)
        self.ep_fam.append(socket.AF_INET if len(packed) == 4 else socket.AF_INET6)
        self.ep_port.append(ep.port)
        self.ep_scope.append(ep.scope_id if len(packed) == 16 else 0)
        self.ep_addr.append(packed if len(packed) == 16 else packed + bytes(12))

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
            dp.set_endpoints(self.ep_ids, pack_endpoints(
                self.ep_fam, self.ep_port, self.ep_scope, b"".join(self.ep_addr)))
            self.ep_ids, self.ep_fam, self.ep_port, self.ep_scope, self.ep_addr = \
                [], [], [], [], []
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


class Device:
    """A userspace WireGuard interface.

    >>> dev = Device("wg0"); dev.open(); dev.start()          # doctest: +SKIP
    >>> dev.configure(private_key=..., listen_port=51820)    # doctest: +SKIP
    >>> dev.add_peer(pub, endpoint="192.0.2.1:51820", allowed_ips=["10.0.0.2/32"])  # +SKIP
    """

    def __init__(self, name: str, *, mtu: int = 1420, max_peers: int = 0,
                 uapi_path: str | None = None, serve_uapi: bool = True,
                 aead: str | None = None, offloads: bool | None = None,
                 pipeline: bool | None = None) -> None:
        self.requested_name = name
        self.offloads = offloads_default() if offloads is None else offloads
        self.pipeline = pipeline_default() if pipeline is None else pipeline
        self.udp_gro = False
        self.tun_uso = False        # the TUN took TUN_F_USO4/6
        self.name = name
        self.mtu = mtu
        # An upper bound only (0 = none but C's WG_PEERS_LIMIT): every table grows.
        self.max_peers = max_peers if max_peers > 0 else lib.WG_PEERS_LIMIT
        self.uapi_path = uapi_path
        self.serve_uapi = serve_uapi
        self.aead_name = aead
        self.aead_in_use = ""
        self.tun: Tun | None = None
        self.dp: DataPlane | None = None
        self.sock4: socket.socket | None = None
        self.sock6: socket.socket | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.identity: StaticIdentity | None = None
        self.checker: CookieChecker | None = None
        self.table = PeerTable(self.max_peers)
        self.peers = self.table.by_key          # Mapping: public key -> Peer, in order added
        self.by_id = self.table.by_id           # Mapping: peer id -> Peer
        self.timer_state = self.table.timer_state
        self.indices = IndexTable()
        self.ratelimiter = RateLimiter()
        self.rng = np.random.default_rng()
        self.handshake_drops = 0
        self.handshake_outcomes = dict.fromkeys(
            ("accepted", "bad_mac1", "cookie_sent", "rate_limited"), 0)
        self.handshake_rtt = LatencyHistogram()
        self._clocks: timers.Clocks | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._uapi: UapiServer | None = None
        self._ready = threading.Event()
        self._ring_mtu = 0
        self._running_dp = False
        self._lock = threading.RLock()
        self._link_mon: socket.socket | None = None     # rtnetlink link monitor (Tun)
        self._ifindex = 0
        self.link_up = False        # the interface's IFF_UP, wherever it is now

    # ---- lifetime ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the TUN interface and the data plane, and bind a UDP port (random until the
        user sets one).  The control loop is started by start() or run_forever()."""
        from wgfast.dataplane import check_handshake_crypto, choose_backend

        try:
            self.aead_in_use = choose_backend(self.aead_name)
        except (ValueError, RuntimeError) as e:
            raise DeviceError(str(e)) from None
        try:
            self.tun = Tun(self.requested_name, self.mtu, nonblocking=True,
                           vnet_hdr=self.offloads)
        except OSError as e:
            raise DeviceError(f"cannot create TUN interface {self.requested_name!r}: "
                              f"{e.strerror or e}") from None
        self.name = self.tun.name
        # A deeper queue than the TUN default (500) rides out the bursts of a sender that
        # outruns one batch (the TUN drops what does not fit; measured with 64-byte UDP, 1000
        # lost ~10 % of a 290 kpps load that 4096 carried with < 0.1 %).  At worst that is a
        # few ms of queue; TCP's own small-queue limits keep it from filling with bulk data.
        with contextlib.suppress(OSError):
            self.tun.txqueuelen = TUN_TXQUEUELEN
        if self.offloads:
            # Checksum and TSO let the kernel hand us 64 KB TCP super-packets; USO (Linux
            # 6.2+) the same for UDP, and lets us write UDP trains.  Older kernels refuse
            # flags they do not know.
            for flags in (TUN_OFFLOADS | TUN_USO, TUN_OFFLOADS, 0):
                try:
                    self.tun.set_offload(flags)
                    self.tun_uso = flags & TUN_USO == TUN_USO
                    break
                except OSError:
                    continue
        why = check_handshake_crypto()
        if why is not None and "disagrees" in why:
            raise DeviceError(f"handshake crypto self-test failed: {why}")
        if why is not None:
            log.warning("%s: handshake MACs are checked in Python (slower under a flood)", why)
        self.dp = DataPlane(self.max_peers, mtu=self.mtu)
        self.dp.on_grow.append(self._tables_grew)
        self._tables_grew()
        if self.checker is not None:
            self.dp.set_handshake_keys(self.checker.mac1_key, self.checker.cookie_key)
        try:
            self._swap_sockets(*self._open_sockets(0, self.fwmark))
        except OSError as e:
            self.close()
            raise DeviceError(f"cannot open UDP sockets: {e}") from None
        self._start_dataplane()

    def close(self) -> None:
        """Stop everything and remove the interface (idempotent)."""
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._loop is not None and self._loop_thread is not None:
            self.stop()
        if self.dp is not None and self._running_dp:
            self.dp.stop()
            self._running_dp = False
        for s in (self.sock4, self.sock6):
            if s is not None:
                s.close()
        self.sock4 = self.sock6 = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        for peer in list(self.table.live.values()):
            for idx in peer.zero_keys(self.indices):
                if self.dp is not None:
                    self.dp.keypair_remove(idx)      # wiped in C, not only forgotten
        self.identity = None

    def __enter__(self) -> Device:
        if self.tun is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_dataplane(self) -> None:
        assert self.dp is not None and self.tun is not None
        self._ring_mtu = self.mtu
        self.dp.set_mtu(self.mtu)
        socks = [s for s in (self.sock4, self.sock6) if s is not None]
        gro = self.offloads and all(s.getsockopt(SOL_UDP, UDP_GRO) for s in socks) \
            if socks else False
        self.udp_gro = bool(gro)
        self.dp.set_offloads(self.tun.vnet_hdr, self.offloads, self.udp_gro, self.tun_uso)
        self.dp.set_threads(self.pipeline)
        self.dp.start(self.tun.fileno(),
                      self.sock4.fileno() if self.sock4 else -1,
                      self.sock6.fileno() if self.sock6 else -1)
        self._running_dp = True

    def _restart_dataplane(self, change: Callable[[], T]) -> T:
        """Run `change` with the I/O threads stopped (new sockets, larger MTU)."""
        assert self.dp is not None
        if self._running_dp:
            self.dp.stop()
            self._running_dp = False
        try:
            return change()
        finally:
            self._start_dataplane()

    # ---- UDP sockets --------------------------------------------------------------------------
    @staticmethod
    def _tune(s: socket.socket, fwmark: int) -> None:
        for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                             (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        if fwmark:
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), fwmark)

    def _open_sockets(self, port: int, fwmark: int,
                      ) -> tuple[socket.socket | None, socket.socket | None, int]:
        """IPv4 and IPv6 sockets on one port (random when 0).  Either family may be missing
        from the host; both missing is an error."""
        last: OSError | None = None
        for _ in range(16 if port == 0 else 1):
            s6: socket.socket | None = None
            s4: socket.socket | None = None
            try:
                try:
                    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    self._tune(s6, fwmark)
                    s6.bind(("::", port))
                except OSError as e:
                    if s6 is not None:
                        s6.close()
                    s6 = None
                    if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
                bound = s6.getsockname()[1] if s6 is not None else port
                try:
                    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    self._tune(s4, fwmark)
                    s4.bind(("0.0.0.0", bound))
                except OSError as e:
                    if s4 is not None:
                        s4.close()
                    s4 = None
                    if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) or s6 is None:
                        raise
                if s4 is None and s6 is None:
                    raise OSError(errno.EAFNOSUPPORT, "neither IPv4 nor IPv6 is available")
                real = (s4 or s6).getsockname()[1]  # type: ignore[union-attr]
                # The local address each datagram reached: replies leave from it (sticky).
                if s4 is not None:
                    s4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                if s6 is not None:
                    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                if self.offloads:
                    for s in (s4, s6):
                        if s is not None:
                            with contextlib.suppress(OSError):
                                s.setsockopt(SOL_UDP, UDP_GRO, 1)
                return s4, s6, real
            except OSError as e:
                for s in (s4, s6):
                    if s is not None:
                        s.close()
                last = e
                if e.errno != errno.EADDRINUSE:
                    break
        assert last is not None
        raise last

    def _swap_sockets(self, s4: socket.socket | None, s6: socket.socket | None,
                      port: int) -> None:
        old = (self.sock4, self.sock6)
        self.sock4, self.sock6, self.listen_port = s4, s6, port
        for s in old:
            if s is not None:
                s.close()

    def _set_fwmark(self, mark: int) -> None:
        self.fwmark = mark
        for s in (self.sock4, self.sock6):
            if s is not None:
                s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), mark)

    def _sendto(self, data: bytes, ep: tuple[str, int]) -> bool:
        """Send a handshake message to ep; from its sticky source (ep.src, when it is a
        dataplane.Sticky that has one) like the data plane, else from where routing says."""
        host, port = ep
        s = self.sock6 if ":" in host else self.sock4
        if s is None:
            return False
        v6 = s is self.sock6
        dest: tuple[str, int] | tuple[str, int, int, int] = (host, port)
        src = getattr(ep, "src", None)
        try:
            if v6 and "%" in host:
                addr, _, zone = host.partition("%")
                scope = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
                dest = (addr, port, 0, scope)
            if src is not None:
                if v6:
                    info = struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, src[0]),
                                       src[1])
                    cmsg = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)
                else:
                    info = struct.pack("=i4s4s", 0, socket.inet_aton(src[0]), bytes(4))
                    cmsg = (socket.IPPROTO_IP, IP_PKTINFO, info)
                try:
                    s.sendmsg([data], [cmsg], 0, dest)
                    return True
                except OSError as e:
                    if e.errno not in SOURCE_ERRNOS:
                        raise
                    # Not too sticky: that address is gone, so routing picks one.
                    log.debug("source %s for %s:%d refused (%s)", src[0], host, port, e)
            s.sendto(data, dest)
            return True
        except OSError as e:
            log.debug("send to %s:%d failed: %s", host, port, e)
            return False

    # ---- peers --------------------------------------------------------------------------------
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

    # ---- UAPI ---------------------------------------------------------------------------------
    def uapi_get(self) -> DeviceSnapshot:
        return self._call(self._snapshot)

    def uapi_set(self, req: SetRequest) -> None:
        self._call(lambda: self._apply(req))

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
                endpoint=_endpoint_from_tuple(self.dp.get_endpoint(pid)),
                persistent_keepalive_interval=int(t.keepalive[pid]),
                allowed_ips=[network_of_key(k) for k in t.allowed(pid)],
                rx_bytes=int(self.dp.rx_bytes[pid]),
                tx_bytes=int(self.dp.tx_bytes[pid]),
                last_handshake_time_sec=sec,
                last_handshake_time_nsec=int(round((wall - sec) * 1e9)) if sec else 0,
            ))
        return DeviceSnapshot(
            private_key=self.identity.private if self.identity else ZERO_KEY,
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
                socks = self._open_sockets(req.listen_port, fwmark)
            except OSError as e:
                raise UapiError(errno.EADDRINUSE if e.errno == errno.EADDRINUSE else errno.EIO,
                                f"cannot listen on port {req.listen_port}: {e}") from None

        # From here on nothing fails (but memory).
        if req.private_key is not None:
            self._set_private_key(req.private_key)
        if socks is not None:
            self._restart_dataplane(lambda: self._swap_sockets(*socks))
        if req.fwmark is not None:
            self._set_fwmark(req.fwmark)
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
                    live = t.live.get(pid)
                    if live is not None:
                        live.persistent_keepalive = ka
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

    # ---- the Python API (thin wrappers over the same apply path) ------------------------------
    def configure(self, text: str | None = None, *, private_key: bytes | None = None,
                  listen_port: int | None = None, fwmark: int | None = None) -> None:
        """Apply UAPI `set` lines (text) and/or device settings."""
        req = parse_set(text) if text is not None else SetRequest()
        if private_key is not None:
            req.private_key = private_key
        if listen_port is not None:
            req.listen_port = listen_port
        if fwmark is not None:
            req.fwmark = fwmark
        self.uapi_set(req)

    def add_peer(self, public_key: bytes, *, endpoint: str | None = None,
                 allowed_ips: Iterable[str] = (), preshared_key: bytes | None = None,
                 persistent_keepalive: int | None = None) -> None:
        from wgfast.uapi import PeerSet

        ps = PeerSet(public_key=public_key, preshared_key=preshared_key,
                     endpoint=Endpoint.parse(endpoint) if endpoint else None,
                     persistent_keepalive_interval=persistent_keepalive,
                     allowed_ips=[AllowedIpChange(ipaddress.ip_network(a, strict=False))
                                  for a in allowed_ips])
        self.uapi_set(SetRequest(peers=[ps]))

    def remove_peer(self, public_key: bytes) -> None:
        from wgfast.uapi import PeerSet

        self.uapi_set(SetRequest(peers=[PeerSet(public_key=public_key, remove=True)]))

    def stats(self) -> list[Stats]:
        """Every peer's counters (the Python API's `wg show`)."""
        snap = self.uapi_get()
        return [Stats(p.public_key, p.endpoint, p.rx_bytes, p.tx_bytes,
                      (p.last_handshake_time_sec + p.last_handshake_time_nsec * 1e-9)
                      if p.last_handshake_time_sec else None, p.allowed_ips)
                for p in snap.peers]

    def drops(self) -> dict[str, int]:
        """The data plane's drop counters by reason."""
        assert self.dp is not None
        names = {getattr(lib, n): n[len("WG_DROP_"):].lower() for n in dir(lib)
                 if n.startswith("WG_DROP_") and n != "WG_DROP_NREASONS"}
        out = {names[i]: int(v) for i, v in enumerate(self.dp.drops) if i in names}
        out["handshake_rejected"] = self.handshake_drops
        return out

    def metrics(self) -> str:
        """The Prometheus text exposition of this device's counters (see wgfast.metrics)."""
        from wgfast.metrics import exposition

        return exposition(self)

    def serve_metrics(self, address: str) -> str:
        """Serve metrics over HTTP at ADDR:PORT (port 0 = any free one) until close();
        returns the URL."""
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._metrics_server = MetricsServer(self, address)
        return self._metrics_server.url

    _metrics_server: MetricsServer | None = None

    # ---- cross-thread calls -------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None or not loop.is_running() or self._in_loop_thread():
            with self._lock:
                return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:   # handed to the caller's thread
                fut.set_exception(e)

        loop.call_soon_threadsafe(run)
        return fut.result()

    def _in_loop_thread(self) -> bool:
        return self._loop_thread_id == threading.get_ident()

    _loop_thread_id: int | None = None

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ---- the control loop ---------------------------------------------------------------------
    def start(self) -> None:
        """Run the control loop in a background thread (the in-process API)."""
        if self.tun is None:
            self.open()
        self._ready.clear()
        self._loop_thread = threading.Thread(target=lambda: asyncio.run(self._main(())),
                                             name=f"wgfast-{self.name}", daemon=True)
        self._loop_thread.start()
        if not self._ready.wait(10):
            raise DeviceError("the control loop did not start")
        if self._start_error is not None:
            raise self._start_error

    _start_error: BaseException | None = None

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and loop.is_running():
            loop.call_soon_threadsafe(stopping.set)
        if self._loop_thread is not None:
            self._loop_thread.join(10)
            self._loop_thread = None

    def run_forever(self, stop_signals: Iterable[int] = (),
                    on_ready: Callable[[], None] | None = None) -> None:
        """Run the control loop in this thread until a stop signal, stop(), the interface
        being deleted or the UAPI socket being removed (what `wg-quick down` does).
        on_ready is called once the UAPI socket accepts requests; an error before that (the
        socket is in use) is raised before it is called."""
        if self.tun is None:
            self.open()
        asyncio.run(self._main(tuple(stop_signals), on_ready))

    async def _main(self, stop_signals: tuple[int, ...],
                    on_ready: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._start_error = None
        for sig in stop_signals:
            loop.add_signal_handler(sig, self._stopping.set)
        assert self.dp is not None
        evfd = self.dp.eventfd()
        loop.add_reader(evfd, self._on_events)
        tasks = []
        try:
            if self.serve_uapi:
                self._uapi = UapiServer(self.name, self, self.uapi_path)
                await self._uapi.start()
            tasks = [asyncio.create_task(self._timer_loop()),
                     asyncio.create_task(self._housekeeping())]
            self._watch_link()
            self._follow_interface()
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            loop.remove_reader(evfd)
            self._unwatch_link()
            self._loop = None
            raise
        self._ready.set()
        try:
            if on_ready is not None:
                on_ready()
            await self._stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            loop.remove_reader(evfd)
            self._unwatch_link()
            if self._uapi is not None:
                await self._uapi.close()
                self._uapi = None
            self._loop = None
            self._loop_thread_id = None

    async def _housekeeping(self) -> None:
        assert self._stopping is not None
        sock_ino = None
        if self._uapi is not None:
            with contextlib.suppress(OSError):
                sock_ino = os.stat(self._uapi.path).st_ino
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            # `wg-quick down` removes the UAPI socket of a userspace interface: that is the
            # signal to go (as wireguard-go does); so is the interface disappearing.
            if sock_ino is not None and self._uapi is not None:
                try:
                    gone = os.stat(self._uapi.path).st_ino != sock_ino
                except OSError:
                    gone = True
                if gone:
                    log.info("UAPI socket removed: shutting down")
                    self._stopping.set()
                    return
            # The netlink monitor reports interface changes at once; this catches what it
            # could not (a monitor that failed to open, or a move between two reads).
            if not self._follow_interface():
                return

    # ---- following the interface ----------------------------------------------------------
    # The interface may leave for another network namespace (`ip link set wg0 netns B`, the
    # way wireguard-go's netns tests place it) while the UDP sockets stay in ours.  So
    # nothing here looks it up by name in our namespace: the TUN descriptor says what it is
    # attached to (Tun.follow), and one link monitor hears the namespace it is in now (see
    # wgfast/tun.py for how, without keeping that namespace alive).  Deletion, anywhere,
    # detaches the descriptor; the monitor's RTM_DELLINK wakes us to see that at once, so a
    # daemon started right after `ip link del` finds the UAPI socket already released.
    def _watch_link(self) -> None:
        """Open the link monitor (once per control loop)."""
        self._unwatch_link()
        if self.tun is None or self._loop is None:
            return
        try:
            mon = self.tun.link_monitor()
        except OSError as e:
            log.info("cannot watch %s for link changes (%s): checking every %.0f s",
                     self.name, e, HOUSEKEEPING)
            return
        self._link_mon = mon
        self._loop.add_reader(mon.fileno(), self._on_link_events)

    def _unwatch_link(self) -> None:
        mon, self._link_mon = self._link_mon, None
        if mon is not None:
            if self._loop is not None:
                self._loop.remove_reader(mon.fileno())
            mon.close()

    def _on_link_events(self) -> None:
        if self._link_mon is None:
            return
        try:
            seen = link_events(self._link_mon)
        except OSError:
            seen = None
        # Indices are per namespace and ours may change on a move: an unknown one, or a
        # dropped message, means "look".
        if seen is None or not self._ifindex or self._ifindex in seen:
            self._follow_interface()

    def _follow_interface(self) -> bool:
        """Catch up with the interface: deleted (stop; returns False), moved, renamed, MTU
        and up/down as they are now."""
        if self.tun is None:
            return True
        try:
            moved = self.tun.follow()
        except TunGone:
            log.info("interface %s deleted: shutting down", self.name)
            if self._stopping is not None:
                self._stopping.set()
            return False
        except (TunError, ValueError):
            return True
        if moved:
            log.info("interface %s moved to another network namespace (now %s)", self.name,
                     self.tun.name)
        try:
            self._ifindex, up, mtu = self.tun.link_state()
        except (OSError, ValueError):
            return True
        if up != self.link_up:
            log.info("link %s is %s", self.tun.name, "up" if up else "down")
            self.link_up = up
        self._check_mtu(mtu)
        return True

    def _check_mtu(self, mtu: int) -> None:
        """Follow the interface's MTU (set with `ip link set ... mtu`)."""
        if self.tun is None or self.dp is None:
            return
        if mtu == self.mtu:
            return
        log.info("MTU of %s is now %d (was %d)", self.name, mtu, self.mtu)
        self.mtu = mtu
        if mtu > self._ring_mtu:
            self._restart_dataplane(lambda: None)     # rings sized for the new MTU
        else:
            self.dp.set_mtu(mtu)

    async def _timer_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                deadline = self._run_timers()
            except Exception:       # a bug here must not silently stop every timer for good
                log.exception("timer evaluation failed")
                deadline = time.monotonic() + 1.0
            delay = min(max(deadline - time.monotonic(), 0.01), 1.0)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _run_timers(self) -> float:
        assert self.dp is not None and self._clocks is not None
        now = time.monotonic()
        with self._lock:
            act = timers.evaluate(self._clocks, self.timer_state, now, self.rng)
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

    # ---- handshakes ---------------------------------------------------------------------------
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

    def _new_session(self, km: KeypairMaterial, evicted: list[int], addr: tuple[str, int],
                     now: float, tx: int = 0, rx: int = 0) -> None:
        """Keys derived from a handshake: into C, and the peer's endpoint is where the
        handshake came from (roaming, for handshakes)."""
        assert self.dp is not None
        self._install(km, evicted)
        self.dp.set_endpoint(km.peer_id, addr)
        self.dp.add_bytes(km.peer_id, tx=tx, rx=rx)
        self.timer_state.session_derived(km.peer_id, now)

    def _on_events(self) -> None:
        """One bounded slice of what C queued: control flags (never dropped), then handshake
        messages (fair between sources).  What is left waits for the next loop turn, so a
        flood cannot starve timers or UAPI."""
        assert self.dp is not None
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.dp.eventfd())
        now = time.monotonic()
        want = False
        with self._lock:
            for pid, flags, confirmed in self.dp.collect_control(CONTROL_SLICE):
                try:
                    if flags & lib.WG_CTL_CONFIRMED:
                        self._on_confirmed(pid, confirmed, now)
                    if flags & lib.WG_CTL_NEED_HANDSHAKE:
                        want = True
                except Exception:     # one bad event must not take the device down
                    self.handshake_drops += 1
                    log.exception("control flags %d for peer %d failed", flags, pid)
            for data, addr, verified in self.dp.pop_handshakes(HANDSHAKE_SLICE):
                if addr is None:
                    continue
                try:
                    self._on_handshake(data, addr, now, verified)
                except Exception:
                    self.handshake_drops += 1
                    log.exception("handshake message from %s failed", addr[0])
        if self.dp.pending():
            self.dp.wake()
        if want:
            self._kick()

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

    def _on_handshake(self, data: bytes, addr: tuple[str, int], now: float,
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

    def _check_macs(self, data: bytes, addr: tuple[str, int], now: float) -> bool:
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

    def _on_initiation(self, data: bytes, addr: tuple[str, int], now: float) -> None:
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

    def _on_response(self, data: bytes, addr: tuple[str, int], now: float) -> None:
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
