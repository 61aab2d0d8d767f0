"""The UAPI's unix socket (wireguard-go ipc/uapi_unix.go): one request per connection, read
whole, handed to the device as a parsed SetRequest or answered with its get reply.

- The socket is /var/run/wireguard/<iface>.sock, made under umask 077 in a 0755 directory; a
  stale socket (nobody answers) is replaced, a live one is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import gc
import inspect
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable
from typing import Protocol, runtime_checkable

from wgfast.uapi import (
    IPC_ERROR_INVALID,
    IPC_ERROR_UNKNOWN,
    DeviceSnapshot,
    SetRequest,
    UapiError,
    format_get,
    parse_set,
)

__all__ = ["UapiHandler", "UapiServer", "UapiSocketInUse", "socket_path", "SOCKET_DIR"]

log = logging.getLogger("wgfast.uapi")

SOCKET_DIR = "/var/run/wireguard"


class UapiSocketInUse(OSError):
    """Another live process is serving this interface's UAPI socket."""


# ---- the server --------------------------------------------------------------------------

@runtime_checkable
class UapiHandler(Protocol):
    """What the server drives: the device.  Either method may also be a coroutine."""

    def uapi_get(self) -> DeviceSnapshot | Awaitable[DeviceSnapshot]: ...

    def uapi_set(self, req: SetRequest) -> Awaitable[None] | None: ...

# A handler may also offer uapi_get_chunks() -> Iterable[str]: the get reply (ending with
# errno=0 and the blank line) in pieces, which the server then streams.


def socket_path(iface: str) -> str:
    return os.path.join(SOCKET_DIR, f"{iface}.sock")


def _bind_uapi_socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    for attempt in range(2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            sock.bind(path)
            return sock
        except OSError as e:
            sock.close()
            if e.errno != _errno.EADDRINUSE or attempt:
                raise
        finally:
            os.umask(old)
        # Something is there: a live server answers, a stale socket refuses.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            pass
        else:
            raise UapiSocketInUse(_errno.EADDRINUSE, f"UAPI socket {path} is in use")
        finally:
            probe.close()
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UapiSocketInUse(_errno.EEXIST, f"{path} exists and is not a socket")
        os.unlink(path)
    raise AssertionError("unreachable")


class UapiServer:
    """Serves the UAPI for one interface on an asyncio loop."""

    MAX_REQUEST_LINES = 1 << 24
    MAX_REQUEST_BYTES = 1 << 30     # a million peers' worth, with room to spare
    # A live socket may belong to a daemon that is shutting down (its interface was just
    # deleted, and `ip link del wg0; wgfast-daemon wg0` starts the next one at once): wait
    # this long for it to let go before refusing.
    BUSY_WAIT = 3.0

    def __init__(self, iface: str, handler: UapiHandler, path: str | None = None,
                 busy_wait: float | None = None) -> None:
        self.iface = iface
        self.handler = handler
        self.path = path or socket_path(iface)
        self.busy_wait = self.BUSY_WAIT if busy_wait is None else busy_wait
        self._server: asyncio.AbstractServer | None = None
        self._ino: int | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        deadline = time.monotonic() + self.busy_wait
        while True:
            try:
                sock = _bind_uapi_socket(self.path)
                break
            except UapiSocketInUse as e:
                if e.errno != _errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)
        self._ino = os.stat(self.path).st_ino
        self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                       limit=self.MAX_REQUEST_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()
            self._server = None
        # Remove our socket file, not one a successor put there.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    async def __aenter__(self) -> UapiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            while True:
                op = await reader.readline()
                if op == b"get=1\n":
                    nxt = await reader.read(1)
                    if not nxt:
                        return
                    code = 0 if nxt == b"\n" else IPC_ERROR_INVALID
                    if code == 0:
                        if await self._stream_get(writer):
                            continue
                        code = IPC_ERROR_UNKNOWN
                    writer.write(f"errno={-code}\n\n".encode())
                elif op == b"set=1\n":
                    lines = await self._read_request(reader)
                    if lines is None:
                        return          # truncated: apply nothing
                    code = await self._set(lines)
                    writer.write(f"errno={-code}\n\n".encode())
                else:
                    return              # EOF or an unknown operation: hang up, as wireguard-go
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, UnicodeDecodeError):
            return
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> str | None:
        """The lines up to the blank one, read in bulk (a large set is a million lines)."""
        first = await reader.read(1)
        if not first:
            return None
        if first == b"\n":
            return ""
        try:
            # The first byte is not a newline, so the blank line ends in "\n\n" after it.
            raw = first + await reader.readuntil(b"\n\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        del first
        text = raw[:-2].decode()
        del raw
        return text if text.count("\n") < self.MAX_REQUEST_LINES else None

    async def _stream_get(self, writer: asyncio.StreamWriter) -> bool:
        """Write the get reply.  A handler with uapi_get_chunks() is streamed: each chunk is
        written as it is made, so a large device never becomes one giant string.  False =
        the handler failed before writing anything (the caller sends the errno)."""
        chunks_fn = getattr(self.handler, "uapi_get_chunks", None)
        if chunks_fn is None:
            reply = await self._get()
            if reply is None:
                return False
            writer.write(reply.encode())
            await writer.drain()
            return True
        try:
            it = iter(chunks_fn())
            first = next(it, None)
        except Exception:
            log.exception("UAPI get failed")
            return False
        try:
            while first is not None:
                writer.write(first.encode())
                await writer.drain()
                first = next(it, None)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # Half a reply is out: hang up rather than end it with a misleading errno.
            log.exception("UAPI get failed midway")
            raise ConnectionError("get failed") from None
        return True

    async def _get(self) -> str | None:
        try:
            snap = self.handler.uapi_get()
            if inspect.isawaitable(snap):
                snap = await snap
            return format_get(snap)
        except Exception:
            log.exception("UAPI get failed")
            return None

    LARGE_SET = 1 << 20     # characters: a set this large is parsed with the cyclic GC paused

    async def _set(self, lines: str) -> int:
        # The cyclic GC would walk every object so far, again and again, while a large request
        # makes millions of them (none in cycles): paused, a million peers parse in linear time.
        paused = len(lines) >= self.LARGE_SET and gc.isenabled()
        if paused:
            gc.disable()
        try:
            req = parse_set(lines)
            res = self.handler.uapi_set(req)
            if inspect.isawaitable(res):
                await res
            return 0
        except UapiError as e:
            log.info("UAPI set rejected: %s", e.message or e)
            return e.errno
        except Exception:
            log.exception("UAPI set failed")
            return IPC_ERROR_UNKNOWN
        finally:
            if paused:
                gc.enable()
