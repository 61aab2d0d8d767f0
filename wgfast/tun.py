"""The TUN device: /dev/net/tun, one IP packet per read/write (IFF_TUN | IFF_NO_PI).

Constants from linux/if_tun.h and linux/sockios.h.  The interface lives as long as a queue
descriptor is open (it is not made persistent), so close() removes it.

SocketTun stands in for a Tun where there is none to create (tests without root).

The interface may be moved to another network namespace (`ip link set wg0 netns B`) or renamed
while we hold it.  The descriptor keeps working; what it is attached to is asked of the
descriptor itself (follow(): TUNGETIFF for the name, TUNGETDEVNETNS for the namespace), since
a name lookup in our own namespace stops finding it.  Once the device is deleted, wherever it
is, the descriptor is detached and TUN ioctls fail with EBADFD: that is how deletion is
recognised, without a name lookup that could race a new interface of the same name.

Nothing here keeps a socket (or descriptor) in the namespace the device moved to: that would
keep the namespace alive after `ip netns del`, and with it the device, which the kernel
deletes only when the namespace really goes.  So the MTU and flag ioctls there use a socket
made for the call, and the link monitor stays in the home namespace (where the device was
created, which our TUN descriptor keeps alive anyway) and hears other namespaces through
NETLINK_LISTEN_ALL_NSID, which covers every namespace with an id in the home one.

Just over ~400 lines: the device and its stand-in share one interface, kept side by side.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

from wgfast.rtnetlink import ensure_nsid, in_netns, open_link_monitor, socket_in_netns

__all__ = [
    "Tun",
    "SocketTun",
    "TunError",
    "TunGone",
    "IFF_TUN",
    "IFF_NO_PI",
    "IFF_VNET_HDR",
    "IFF_MULTI_QUEUE",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_USO4",
    "TUN_F_USO6",
]

TUN_PATH = "/dev/net/tun"
IFNAMSIZ = 16

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNGETDEVNETNS = 0x54E3         # _IO('T', 227), Linux 5.2+: a descriptor of the device's netns
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

# linux/sockios.h, linux/if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFINDEX = 0x8933
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943
IFF_UP = 0x1

_IFREQ = 40     # struct ifreq: name[16] + a 24-byte union


class TunError(OSError):
    """Opening or configuring the TUN device failed."""


class TunGone(TunError):
    """The interface was deleted (in whatever namespace it was): the descriptor is detached."""


def _ifreq(name: str, fmt: str = "", *values: int) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise TunError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
    head = struct.pack(f"{IFNAMSIZ}s{fmt}", raw, *values)
    return head + bytes(_IFREQ - len(head))


class Tun:
    """A TUN interface.  `name` may be a pattern such as "wgf%d"; `name` is then the real one.

    vnet_hdr prefixes every packet with a struct virtio_net_hdr (for offloads, later);
    multi_queue allows more queues through `open_queue()`."""

    def __init__(self, name: str = "wgf%d", mtu: int | None = 1420, *, nonblocking: bool = False,
                 vnet_hdr: bool = False, multi_queue: bool = False, up: bool = False) -> None:
        self._flags = IFF_TUN | IFF_NO_PI
        if vnet_hdr:
            self._flags |= IFF_VNET_HDR
        if multi_queue:
            self._flags |= IFF_MULTI_QUEUE
        self.vnet_hdr = vnet_hdr
        self.multi_queue = multi_queue
        self._queues: list[int] = []
        self._ctl: socket.socket | None = None       # in the home namespace
        self._home = -1             # a descriptor of the home namespace
        self._home_ino = self._ns_ino = 0            # home, and where the device is now
        try:
            fd, self.name = self._attach(name, nonblocking)
            self._queues.append(fd)
            self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with contextlib.suppress(OSError):
                self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                self._home_ino = self._ns_ino = os.fstat(self._home).st_ino
            if mtu is not None:
                self.mtu = mtu
            if up:
                self.up()
        except BaseException:
            self.close()
            raise

    def _attach(self, name: str, nonblocking: bool) -> tuple[int, str]:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if nonblocking else 0)
        try:
            fd = os.open(TUN_PATH, flags)
        except OSError as e:
            raise TunError(e.errno, f"cannot open {TUN_PATH}: {e.strerror}") from None
        try:
            res = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, "H", self._flags))
        except OSError as e:
            os.close(fd)
            raise TunError(e.errno, f"TUNSETIFF {name!r}: {e.strerror}") from None
        return fd, res[:IFNAMSIZ].split(b"\0", 1)[0].decode()

    # ---- descriptors ------------------------------------------------------------------

    def fileno(self) -> int:
        if not self._queues:
            raise ValueError("TUN device is closed")
        return self._queues[0]

    @property
    def queues(self) -> list[int]:
        return list(self._queues)

    def open_queue(self, nonblocking: bool = False) -> int:
        """Attach one more queue (multi_queue devices); returns its descriptor."""
        if not self.multi_queue:
            raise TunError(22, "open_queue needs multi_queue=True")
        fd, _ = self._attach(self.name, nonblocking)
        self._queues.append(fd)
        return fd

    def set_nonblocking(self, on: bool = True) -> None:
        for fd in self._queues:
            os.set_blocking(fd, not on)

    def read(self, size: int = 65536) -> bytes:
        return os.read(self.fileno(), size)

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        return os.write(self.fileno(), packet)

    # ---- where the device is ----------------------------------------------------------

    def _tun_ioctl(self, req: int, arg: bytes | int) -> bytes | int:
        try:
            return fcntl.ioctl(self.fileno(), req, arg)
        except OSError as e:
            if e.errno == errno.EBADFD:
                raise TunGone(e.errno, f"interface {self.name} was deleted") from None
            raise TunError(e.errno, f"ioctl {req:#x} on {self.name}: {e.strerror}") from None

    def netns_fd(self) -> int:
        """A new descriptor of the device's current network namespace (the caller closes it).
        TunGone once the device is deleted; TunError(ENOTTY/EINVAL) before Linux 5.2."""
        fd = self._tun_ioctl(TUNGETDEVNETNS, 0)
        assert isinstance(fd, int)
        return fd

    def follow(self) -> bool:
        """Catch up with the device: its current name and namespace.  Returns True when the
        namespace changed (the device moved); raises TunGone once it was deleted."""
        res = self._tun_ioctl(TUNGETIFF, bytes(_IFREQ))
        assert isinstance(res, bytes)
        self.name = res[:IFNAMSIZ].split(b"\0", 1)[0].decode()
        try:
            ns = self.netns_fd()
        except TunGone:
            raise
        except TunError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL):
                return False        # before Linux 5.2: assume it stays where it was made
            raise
        try:
            ino = os.fstat(ns).st_ino
            if ino == self._ns_ino:
                return False
            if ino != self._home_ino and self._home >= 0:
                # Ids live in the home namespace: ask there (from a thread of our own, as
                # the caller may stand elsewhere).  Without one, only the 1-s checks see it.
                with contextlib.suppress(OSError):
                    in_netns(self._home, lambda: ensure_nsid(ns))
        finally:
            os.close(ns)
        self._ns_ino = ino
        return True

    @contextlib.contextmanager
    def _ctl_socket(self) -> Iterator[socket.socket]:
        """A socket for interface ioctls in the device's namespace: the kept one at home,
        elsewhere one made for the call (a kept one would keep that namespace alive)."""
        if self._ctl is None:
            raise ValueError("TUN device is closed")
        if self._ns_ino == self._home_ino:
            yield self._ctl
            return
        try:
            ns = self.netns_fd()
        except TunError:
            yield self._ctl         # deleted or an old kernel: the ioctl says what is wrong
            return
        try:
            s = socket_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            os.close(ns)
        with s:
            yield s

    def link_monitor(self) -> socket.socket:
        """A non-blocking rtnetlink socket subscribed to link changes in the home namespace
        and every namespace with an id there, which follow() gives the device's: it wakes
        its reader when the device's MTU or flags change, when it is deleted and when it
        moves (RTM_DELLINK where it was).  Read it with link_events()."""
        return open_link_monitor(self._home)

    @property
    def netns_ino(self) -> int:
        """The inode of the namespace the control socket is in (as of the last follow())."""
        return self._ns_ino

    def link_state(self) -> tuple[int, bool, int]:
        """(ifindex, up, mtu) as they are now in the device's namespace, in one go."""
        with self._ctl_socket() as ctl:
            try:
                out = []
                for req, fmt in ((SIOCGIFINDEX, "i"), (SIOCGIFFLAGS, "H"), (SIOCGIFMTU, "i")):
                    res = fcntl.ioctl(ctl.fileno(), req, _ifreq(self.name))
                    out.append(struct.unpack_from(fmt, res, IFNAMSIZ)[0])
            except OSError as e:
                raise TunError(e.errno, f"link state of {self.name}: {e.strerror}") from None
        return out[0], bool(out[1] & IFF_UP), out[2]

    @property
    def ifindex(self) -> int:
        """The interface index in its current namespace (it may change when it moves)."""
        res = self._ioctl(SIOCGIFINDEX, _ifreq(self.name))
        return struct.unpack_from("i", res, IFNAMSIZ)[0]

    # ---- link settings ----------------------------------------------------------------

    def _ioctl(self, req: int, data: bytes) -> bytes:
        try:
            with self._ctl_socket() as ctl:
                return fcntl.ioctl(ctl.fileno(), req, data)
        except OSError as e:
            raise TunError(e.errno, f"ioctl {req:#x} on {self.name}: {e.strerror}") from None

    @property
    def mtu(self) -> int:
        res = self._ioctl(SIOCGIFMTU, _ifreq(self.name))
        return struct.unpack_from("i", res, IFNAMSIZ)[0]

    @mtu.setter
    def mtu(self, value: int) -> None:
        self._ioctl(SIOCSIFMTU, _ifreq(self.name, "i", value))

    @property
    def txqueuelen(self) -> int:
        """Packets the kernel queues for us to read before it drops (default 500)."""
        res = self._ioctl(SIOCGIFTXQLEN, _ifreq(self.name))
        return struct.unpack_from("i", res, IFNAMSIZ)[0]

    @txqueuelen.setter
    def txqueuelen(self, value: int) -> None:
        self._ioctl(SIOCSIFTXQLEN, _ifreq(self.name, "i", value))

    def _get_flags(self) -> int:
        res = self._ioctl(SIOCGIFFLAGS, _ifreq(self.name))
        return struct.unpack_from("H", res, IFNAMSIZ)[0]

    def _set_flags(self, flags: int) -> None:
        self._ioctl(SIOCSIFFLAGS, _ifreq(self.name, "H", flags))

    @property
    def is_up(self) -> bool:
        return bool(self._get_flags() & IFF_UP)

    def up(self) -> None:
        self._set_flags(self._get_flags() | IFF_UP)

    def down(self) -> None:
        self._set_flags(self._get_flags() & ~IFF_UP & 0xFFFF)

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD (TUN_F_* flags); only meaningful with vnet_hdr."""
        self._tun_ioctl(TUNSETOFFLOAD, flags)

    def set_vnet_hdr_size(self, size: int) -> None:
        self._tun_ioctl(TUNSETVNETHDRSZ, struct.pack("i", size))

    # ---- lifetime ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return not self._queues

    def close(self) -> None:
        """Close every queue: the (non-persistent) interface disappears."""
        while self._queues:
            with contextlib.suppress(OSError):
                os.close(self._queues.pop())
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._home >= 0:
            os.close(self._home)
            self._home = -1

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._queues[0]}"
        return f"Tun({self.name!r}, {state})"


class SocketTun:
    """A TUN stand-in needing no privilege: a SOCK_SEQPACKET unix socketpair, which like a
    TUN without a vnet header (offloads off) carries one IP packet per read and write.
    fileno() is the end given to the data plane as its TUN; `peer` is the other, where the
    caller writes the inner packets the host would send into the tunnel and reads those that
    came out of it.  There is no interface to follow: it never moves, stays up at its MTU
    (a test may set .mtu as `ip link set mtu` would), and has no link monitor."""

    vnet_hdr = False

    def __init__(self, name: str = "socktun", mtu: int = 1420) -> None:
        self.name = name
        self.mtu = mtu
        self.txqueuelen = 0
        self._end, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._end.setblocking(False)

    def fileno(self) -> int:
        return self._end.fileno()

    def send(self, packet: bytes) -> None:
        """One inner packet into the tunnel (what a TUN read would return)."""
        self.peer.send(packet)

    def recv(self, timeout: float = 5.0) -> bytes:
        """The next inner packet out of the tunnel (what was written to the TUN)."""
        self.peer.settimeout(timeout)
        return self.peer.recv(1 << 16)

    def set_offload(self, flags: int) -> None:
        if flags:
            raise OSError(errno.EINVAL, "a SocketTun has no offloads")

    def follow(self) -> bool:
        return False

    def link_state(self) -> tuple[int, bool, int]:
        return 0, True, self.mtu

    def link_monitor(self) -> socket.socket | None:
        return None

    def close(self) -> None:
        self._end.close()
        self.peer.close()

    def __enter__(self) -> SocketTun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
