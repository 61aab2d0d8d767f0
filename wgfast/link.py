"""Following the interface wherever it is: deleted, moved to another network namespace,
renamed, its MTU and up/down (what the kernel's device.c learns from netdev notifiers).

The interface may leave for another network namespace (`ip link set wg0 netns B`, the
way wireguard-go's netns tests place it) while the UDP sockets stay in ours.  So
nothing here looks it up by name in our namespace: the TUN descriptor says what it is
attached to (Tun.follow), and one link monitor hears the namespace it is in now (see
wgfast/tun.py for how, without keeping that namespace alive).  Deletion, anywhere,
detaches the descriptor; the monitor's RTM_DELLINK wakes us to see that at once, so a
daemon started right after `ip link del` finds the UAPI socket already released.

A mixin of wgfast.device.Device, on its control loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from wgfast.rtnetlink import link_events
from wgfast.tun import TunError, TunGone

if TYPE_CHECKING:
    import asyncio
    import socket
    from collections.abc import Callable
    from typing import TypeVar

    from wgfast.dataplane import DataPlane
    from wgfast.tun import SocketTun, Tun

    T = TypeVar("T")


log = logging.getLogger("wgfast")

HOUSEKEEPING = 1.0               # UAPI socket check; MTU and interface checks as a fallback


class LinkFollowing:
    """The device's view of its interface, kept current."""

    if TYPE_CHECKING:       # what the device provides
        dp: DataPlane | None
        tun: Tun | SocketTun | None
        name: str
        mtu: int
        _ring_mtu: int
        _loop: asyncio.AbstractEventLoop | None
        _stopping: asyncio.Event | None
        _link_mon: socket.socket | None
        _ifindex: int
        link_up: bool

        def _restart_dataplane(self, change: Callable[[], T]) -> T: ...

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
        if mon is None:         # a SocketTun: nothing to watch
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
