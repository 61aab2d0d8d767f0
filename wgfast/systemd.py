"""sd_notify(3) without libsystemd: one datagram to the unix socket named in $NOTIFY_SOCKET.

A path names a socket in the file system; a leading '@' names one in the abstract namespace
(the '@' stands for the leading NUL byte).  Without $NOTIFY_SOCKET (not started by systemd, or
not Type=notify) every call is a no-op that returns False.
"""

from __future__ import annotations

import os
import socket


def notify_address(value: str | None = None) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET (or value) names, as socket.sendto takes it."""
    value = os.environ.get("NOTIFY_SOCKET") if value is None else value
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None         # vsock addresses (vsock:CID:PORT) and relative paths: not supported


def notify(*fields: str, address: str | bytes | None = None) -> bool:
    """Send "KEY=value" fields (READY=1, STOPPING=1, STATUS=...) in one datagram; True if it
    was sent.  Never raises: a supervisor that went away must not take the daemon down."""
    addr = notify_address() if address is None else address
    if addr is None or not fields:
        return False
    msg = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, addr)
        return True
    except OSError:
        return False
