"""Network namespaces and rtnetlink link messages: what following an interface across
namespaces needs from the kernel (used by wgfast.tun and wgfast.link).

Constants from linux/sched.h, linux/netlink.h and linux/rtnetlink.h.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["in_netns", "socket_in_netns", "ensure_nsid", "open_link_monitor", "link_events"]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000

# linux/netlink.h, linux/rtnetlink.h
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_LISTEN_ALL_NSID = 8
RTMGRP_LINK = 1
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWNSID = 88
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NETNSA_NSID = 1
NETNSA_FD = 3
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")


def in_netns(ns_fd: int, fn: Callable[[], T]) -> T:
    """fn() run in the network namespace `ns_fd` refers to.  setns applies to the calling
    thread only, so a short-lived thread enters the namespace, runs fn and ends: the caller's
    thread never leaves its own namespace (a failed way back cannot strand it)."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(ns_fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns: {os.strerror(e)}")
            out.append(fn())
        except BaseException as e:      # handed to the caller's thread
            err.append(e)

    t = threading.Thread(target=run, name="wgfast-setns", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def socket_in_netns(ns_fd: int, family: int, type: int, proto: int = 0) -> socket.socket:
    """A socket made inside the network namespace `ns_fd` refers to (it stays there)."""
    return in_netns(ns_fd, lambda: socket.socket(family, type, proto))


def ensure_nsid(ns_fd: int) -> None:
    """Give the namespace `ns_fd` an id in the calling thread's namespace (RTM_NEWNSID with
    any free id; EEXIST when it has one), so that a NETLINK_LISTEN_ALL_NSID socket here
    hears its link messages.  An id does not keep the namespace alive."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        s.settimeout(2.0)
        s.bind((0, 0))
        body = (struct.pack("=Bxxx", socket.AF_UNSPEC)
                + struct.pack("=HHi", 8, NETNSA_NSID, -1)         # -1: any free id
                + struct.pack("=HHI", 8, NETNSA_FD, ns_fd))
        s.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWNSID,
                              NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)
        reply = s.recv(4096)
        if len(reply) >= _NLMSGHDR.size + 4 and _NLMSGHDR.unpack_from(reply)[1] == NLMSG_ERROR:
            err = -struct.unpack_from("=i", reply, _NLMSGHDR.size)[0]
            if err and err != errno.EEXIST:
                raise OSError(err, f"RTM_NEWNSID: {os.strerror(err)}")
    finally:
        s.close()


def open_link_monitor(home_fd: int) -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link changes (RTMGRP_LINK) in the
    namespace home_fd refers to (-1: ours) and, through NETLINK_LISTEN_ALL_NSID, in every
    namespace with an id there.  Read it with link_events()."""
    kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    if home_fd >= 0:
        s = socket_in_netns(home_fd, socket.AF_NETLINK, kind, NETLINK_ROUTE)
    else:
        s = socket.socket(socket.AF_NETLINK, kind, NETLINK_ROUTE)
    try:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setsockopt(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)
        s.bind((0, RTMGRP_LINK))
    except BaseException:
        s.close()
        raise
    return s


def link_events(sock: socket.socket) -> set[int] | None:
    """Drain a link_monitor() socket: the interface indices that link messages named, or
    None when the kernel dropped messages for us (ENOBUFS): then anything may have changed."""
    seen: set[int] = set()
    overflow = False
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            overflow = True
            continue
        if not data:
            break
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, mtype = _NLMSGHDR.unpack_from(data, off)[:2]
            if length < _NLMSGHDR.size:
                break
            body = off + _NLMSGHDR.size
            if mtype in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFOMSG.size <= len(data):
                seen.add(_IFINFOMSG.unpack_from(data, body)[2])
            off += (length + 3) & ~3
    return None if overflow else seen
