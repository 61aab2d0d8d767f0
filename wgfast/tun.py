"""The TUN device: /dev/net/tun, one IP packet per read/write (IFF_TUN | IFF_NO_PI).

Constants from linux/if_tun.h and linux/sockios.h.  The interface lives as long as a queue
descriptor is open (it is not made persistent), so close() removes it.  The control socket for
MTU and flag ioctls is opened with the device, so both stay in the network namespace the
device was created in, whatever the calling thread does later.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct

__all__ = [
    "Tun",
    "TunError",
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
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943
IFF_UP = 0x1

_IFREQ = 40     # struct ifreq: name[16] + a 24-byte union


class TunError(OSError):
    """Opening or configuring the TUN device failed."""


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
        self._ctl: socket.socket | None = None
        try:
            fd, self.name = self._attach(name, nonblocking)
            self._queues.append(fd)
            self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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

    # ---- link settings ----------------------------------------------------------------

    def _ioctl(self, req: int, data: bytes) -> bytes:
        if self._ctl is None:
            raise ValueError("TUN device is closed")
        try:
            return fcntl.ioctl(self._ctl.fileno(), req, data)
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
        try:
            fcntl.ioctl(self.fileno(), TUNSETOFFLOAD, flags)
        except OSError as e:
            raise TunError(e.errno, f"TUNSETOFFLOAD on {self.name}: {e.strerror}") from None

    def set_vnet_hdr_size(self, size: int) -> None:
        try:
            fcntl.ioctl(self.fileno(), TUNSETVNETHDRSZ, struct.pack("i", size))
        except OSError as e:
            raise TunError(e.errno, f"TUNSETVNETHDRSZ on {self.name}: {e.strerror}") from None

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
