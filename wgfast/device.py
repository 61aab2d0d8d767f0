"""The device: one WireGuard interface (the kernel's device.c).  It owns the TUN, the UDP
sockets, the UAPI socket, the C data plane and the control loop that runs the protocol core
on its events and timers.

Its other rooms are mixins of Device, each in the file named for what it does:
  - wgfast.device_config: UAPI set and get, and the peer and key changes behind them;
  - wgfast.handshake: handshake intake and the timer actions (initiation, response,
    keepalive, staged packets);
  - wgfast.link: following the interface across namespaces (deleted, moved, MTU, up/down);
and wgfast.sockets holds its sockets, wgfast.peers its peer table.  This file keeps its lifetime,
the control loop, the dispatch of events and the Python API.

The control loop (asyncio, one thread) wakes for three reasons:
  - the data plane's eventfd: handshake messages that passed C's intake (mac1, and under load
    mac2 and the rate limit), and per-peer control flags ("this peer needs a handshake", "the
    responder's keypair was confirmed"), each taken in a bounded slice per loop turn;
  - a timer deadline computed by timers.evaluate over all peers at once;
  - a UAPI request (wg, wg-quick) or a call from the Python API.
It never touches a data packet: packets waiting for a session stay in C (staging.c) until it
asks C to send them.

About 500 lines, past the ~400 of the others: one object's lifetime (open, close, data-plane
restarts), its control loop and its Python API, each short, over state they share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from wgfast import timers
from wgfast.cookie import CookieChecker
from wgfast.dataplane import DataPlane, lib
from wgfast.device_config import Configuration
from wgfast.endpoint import Endpoint
from wgfast.handshake import Handshakes, peer_name
from wgfast.link import HOUSEKEEPING, LinkFollowing
from wgfast.metrics import MetricsServer
from wgfast.noise import StaticIdentity
from wgfast.peers import PeerTable
from wgfast.sockets import UdpSockets
from wgfast.tun import SocketTun, Tun
from wgfast.uapi import AllowedIpChange, DeviceSnapshot, SetRequest, parse_set
from wgfast.uapi_server import UapiServer

__all__ = ["Device", "DeviceError", "Stats", "peer_name"]

log = logging.getLogger("wgfast")

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HANDSHAKE_SLICE = 64             # handshake messages handled per loop turn
CONTROL_SLICE = 1024             # peers' control flags collected per loop turn
TUN_TXQUEUELEN = 4096
TUN_OFFLOADS = (lib.WG_TUN_F_CSUM | lib.WG_TUN_F_TSO4 | lib.WG_TUN_F_TSO6 | lib.WG_TUN_F_TSO_ECN)
TUN_USO = lib.WG_TUN_F_USO4 | lib.WG_TUN_F_USO6


def offloads_default() -> bool:
    """TUN and UDP offloads are on unless WGFAST_OFFLOADS=off (for comparisons and tests)."""
    return os.environ.get("WGFAST_OFFLOADS", "on").lower() not in ("off", "0", "no", "false")


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


class Device(Configuration, Handshakes, LinkFollowing):
    """A userspace WireGuard interface.

    >>> dev = Device("wg0"); dev.open(); dev.start()          # doctest: +SKIP
    >>> dev.configure(private_key=..., listen_port=51820)    # doctest: +SKIP
    >>> dev.add_peer(pub, endpoint="192.0.2.1:51820", allowed_ips=["10.0.0.2/32"])  # +SKIP

    Without root: `Device("t0", tun=SocketTun(), listen=("127.0.0.1", "::1"),
    uapi_path=tmp / "t0.sock")` carries packets written to the SocketTun's peer end, and
    binds its UDP port on loopback (tests).
    """

    def __init__(self, name: str, *, mtu: int = 1420, max_peers: int = 0,
                 uapi_path: str | None = None, serve_uapi: bool = True,
                 aead: str | None = None, offloads: bool | None = None,
                 tun: Tun | SocketTun | None = None,
                 listen: tuple[str, str] = ("0.0.0.0", "::")) -> None:
        """tun: an interface to use instead of creating one (opened; closed with the
        device); offloads then default to off.  listen: the IPv4 and IPv6 bind addresses."""
        self.requested_name = name
        if offloads is None:
            offloads = offloads_default() if tun is None else False
        self.offloads = offloads
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
        self._given_tun = tun
        self.tun: Tun | SocketTun | None = None
        self.dp: DataPlane | None = None
        self.udp = UdpSockets(offloads, *listen)
        self.identity: StaticIdentity | None = None
        self.checker: CookieChecker | None = None
        self.table = PeerTable(self.max_peers)
        self.peers = self.table.by_key          # Mapping: public key -> Peer, in order added
        self.by_id = self.table.by_id           # Mapping: peer id -> Peer
        self.timer_state = self.table.timer_state
        self._init_handshakes()
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

    @property
    def listen_port(self) -> int:
        return self.udp.port

    @property
    def fwmark(self) -> int:
        return self.udp.fwmark

    # ---- lifetime ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the TUN interface and the data plane, and bind a UDP port (random until the
        user sets one).  The control loop is started by start() or run_forever()."""
        from wgfast.dataplane import check_handshake_crypto, choose_backend

        try:
            self.aead_in_use = choose_backend(self.aead_name)
        except (ValueError, RuntimeError) as e:
            raise DeviceError(str(e)) from None
        if self._given_tun is not None:
            self.tun, self._given_tun = self._given_tun, None
        else:
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
            self.udp.swap(*self.udp.open_pair(0, self.fwmark))
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
        self.udp.close()
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        if self._given_tun is not None:        # given, never opened
            self._given_tun.close()
            self._given_tun = None
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
        self.udp_gro = self.offloads and self.udp.gro()
        self.dp.set_offloads(self.tun.vnet_hdr, self.offloads, self.udp_gro, self.tun_uso)
        self.dp.start(self.tun.fileno(), *self.udp.fds())
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

    # ---- UAPI ---------------------------------------------------------------------------------
    def uapi_get(self) -> DeviceSnapshot:
        return self._call(self._snapshot)

    def uapi_set(self, req: SetRequest) -> None:
        self._call(lambda: self._apply(req))

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
            return self._timer_actions(self._clocks, now)

    # ---- dispatch -----------------------------------------------------------------------------
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

