"""wgfast-daemon: the wireguard-go compatible command line.

    wgfast-daemon [-f|--foreground] INTERFACE

It creates the TUN interface INTERFACE and the UAPI socket /var/run/wireguard/INTERFACE.sock,
then runs the tunnel until SIGINT/SIGTERM or until the interface is deleted.  Without -f (and
without WG_PROCESS_FOREGROUND=1) it detaches, and the parent exits only once the interface and
the socket are ready, so `wg-quick` can configure it the moment the command returns.  LOG_LEVEL
is verbose (or debug), error, or silent, as for wireguard-go.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from wgfast import __version__

USAGE = "Usage: wgfast-daemon [-f/--foreground] INTERFACE-NAME"


def _log_level() -> int:
    level = os.environ.get("LOG_LEVEL", "error").lower()
    return {
        "verbose": logging.DEBUG,
        "debug": logging.DEBUG,
        "error": logging.ERROR,
        "silent": logging.CRITICAL + 10,
    }.get(level, logging.ERROR)


def _max_peers() -> int:
    """An optional upper bound on peers (WGFAST_MAX_PEERS); 0, the default, is none: every
    table grows as peers are added."""
    try:
        n = int(os.environ.get("WGFAST_MAX_PEERS", "0"))
    except ValueError:
        n = 0
    return max(n, 0)


def _parse(argv: list[str]) -> tuple[bool, str] | None:
    foreground = False
    names = []
    for a in argv:
        if a in ("-f", "--foreground"):
            foreground = True
        elif a.startswith("-"):
            return None
        else:
            names.append(a)
    if len(names) != 1:
        return None
    if os.environ.get("WG_PROCESS_FOREGROUND") == "1":
        foreground = True
    return foreground, names[0]


def _run(name: str, ready_fd: int | None) -> int:
    from wgfast.device import Device, DeviceError

    log = logging.getLogger("wgfast")
    started = False

    def fail(e: BaseException) -> int:
        log.error("cannot start %s: %s", name, e)
        if ready_fd is not None:
            os.write(ready_fd, f"E{e}".encode())
            os.close(ready_fd)
        else:
            print(f"wgfast-daemon: {e}", file=sys.stderr)
        return 1

    def ready() -> None:
        # Only now can wg-quick configure the interface: the UAPI socket answers.
        nonlocal started
        started = True
        if ready_fd is not None:
            os.write(ready_fd, b"K")
            os.close(ready_fd)
        log.info("interface %s is up (AEAD %s, offloads %s)", dev.name, dev.aead_in_use,
                 "on" if dev.offloads else "off")

    try:
        dev = Device(name, max_peers=_max_peers(), aead=os.environ.get("WGFAST_AEAD") or None)
        dev.open()
    except (DeviceError, OSError) as e:
        return fail(e)
    try:
        dev.run_forever(stop_signals=(signal.SIGINT, signal.SIGTERM), on_ready=ready)
    except (DeviceError, OSError) as e:
        if started:
            raise
        # E.g. another daemon serves this interface's UAPI socket.  Remove our interface
        # before saying so: whoever waits for the answer finds nothing of ours left.
        dev.close()
        return fail(e)
    finally:
        dev.close()
    log.info("interface %s shut down", name)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--version"], ["-v"]):
        print(f"wgfast-daemon v{__version__}\n\nUserspace WireGuard daemon for Linux "
              "(Python control plane, C data plane).")
        return 0
    parsed = _parse(argv)
    if parsed is None:
        # As wireguard-go: the usage line on stdout, and exit status 0.
        print(USAGE)
        return 0
    foreground, name = parsed
    if os.geteuid() != 0:
        print("wgfast-daemon: must run as root (it creates a TUN interface)", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=_log_level(),
        format=f"%(levelname)s: ({name}) %(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if foreground:
        return _run(name, None)

    # Detach before anything starts a thread: fork, new session, and the parent waits for the
    # child to report that the interface and the UAPI socket exist.
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        msg = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            msg += chunk
        if msg.startswith(b"K"):
            return 0
        os.waitpid(pid, 0)      # the failed child is gone when we return
        err = msg[1:].decode(errors="replace") or "the daemon exited during start-up"
        print(f"wgfast-daemon: {err}", file=sys.stderr)
        return 1
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    # As wireguard-go: the detached daemon keeps the caller's output only when LOG_LEVEL asks
    # for logs, so that `wg-quick up` (which waits for its pipes to close) returns.
    if not os.environ.get("LOG_LEVEL") or _log_level() > logging.ERROR:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os._exit(_run(name, w))


if __name__ == "__main__":
    sys.exit(main())
