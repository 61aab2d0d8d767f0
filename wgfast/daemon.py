"""wgfast-daemon: the wireguard-go compatible command line.

    wgfast-daemon [-f|--foreground] [--metrics ADDR:PORT] INTERFACE

It creates the TUN interface INTERFACE and the UAPI socket /var/run/wireguard/INTERFACE.sock,
then runs the tunnel until SIGINT/SIGTERM or until the interface is deleted.  Without -f (and
without WG_PROCESS_FOREGROUND=1) it detaches, and the parent exits only once the interface and
the socket are ready, so `wg-quick` can configure it the moment the command returns.  LOG_LEVEL
is verbose (or debug), error, or silent, as for wireguard-go.

--metrics ADDR:PORT (or WGFAST_METRICS=ADDR:PORT, which passes through wg-quick) serves
Prometheus metrics over HTTP there; off unless asked.  Under systemd (Type=notify) the process
that serves the interface sends READY=1 once the UAPI socket answers, a STATUS= line with the
peers and their handshakes every few seconds, and STOPPING=1 on its way out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from wgfast import __version__, systemd

if TYPE_CHECKING:
    from wgfast.device import Device

USAGE = ("Usage: wgfast-daemon [-f/--foreground] INTERFACE-NAME\n"
         "       wgfast-daemon [-f/--foreground] --metrics ADDR:PORT INTERFACE-NAME")
STATUS_EVERY = 5.0          # seconds between STATUS= updates to systemd
RECENT_HANDSHAKE = 180.0    # a handshake younger than this counts as "up" in STATUS=


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


def _parse(argv: list[str]) -> tuple[bool, str, str | None] | None:
    foreground = False
    metrics = os.environ.get("WGFAST_METRICS") or None
    names = []
    args = iter(argv)
    for a in args:
        if a in ("-f", "--foreground"):
            foreground = True
        elif a == "--metrics":
            metrics = next(args, None)
            if metrics is None:
                return None
        elif a.startswith("--metrics="):
            metrics = a.partition("=")[2]
        elif a.startswith("-"):
            return None
        else:
            names.append(a)
    if len(names) != 1:
        return None
    if os.environ.get("WG_PROCESS_FOREGROUND") == "1":
        foreground = True
    return foreground, names[0], metrics


def status_line(dev: Device) -> str:
    """STATUS= for systemd: peers, how many had a recent handshake, and the byte counters."""
    assert dev.dp is not None
    ids = [p.peer_id for p in dev.peers.values()]
    now = time.time()
    recent = sum(1 for i in ids if now - float(dev.last_handshake_wall[i]) < RECENT_HANDSHAKE)
    rx = int(sum(int(dev.dp.rx_bytes[i]) for i in ids))
    tx = int(sum(int(dev.dp.tx_bytes[i]) for i in ids))
    return (f"{len(ids)} peer{'s' if len(ids) != 1 else ''}, {recent} with a handshake in the "
            f"last {int(RECENT_HANDSHAKE // 60)} min, rx {rx} B, tx {tx} B")


def _run(name: str, ready_fd: int | None, metrics: str | None = None) -> int:
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
        systemd.notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status_line(dev)}")
        _status_every(asyncio.get_running_loop(), dev, "")
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
    if metrics:
        # Bound before the UAPI socket answers, so a taken port fails the start.
        try:
            log.info("metrics at %s", dev.serve_metrics(metrics))
        except (OSError, ValueError) as e:
            dev.close()
            return fail(OSError(f"cannot serve metrics at {metrics}: {e}"))
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
        if started:
            systemd.notify("STOPPING=1")
        dev.close()
    log.info("interface %s shut down", name)
    return 0


def _status_every(loop: asyncio.AbstractEventLoop, dev: Device, last: str) -> None:
    """Tell systemd the status when it changed, then again in STATUS_EVERY seconds (runs in
    the control loop: reads the counters in place)."""
    if systemd.notify_address() is None:
        return
    line = status_line(dev)
    if line != last:
        systemd.notify(f"STATUS={line}")
    loop.call_later(STATUS_EVERY, _status_every, loop, dev, line)


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
    foreground, name, metrics = parsed
    if metrics:
        from wgfast.metrics import parse_address

        try:
            parse_address(metrics)
        except ValueError as e:
            print(f"wgfast-daemon: --metrics {e}", file=sys.stderr)
            return 1
    if os.geteuid() != 0:
        print("wgfast-daemon: must run as root (it creates a TUN interface)", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=_log_level(),
        format=f"%(levelname)s: ({name}) %(asctime)s %(message)s",
        stream=sys.stderr,
    )
    if foreground:
        return _run(name, None, metrics)

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
    os._exit(_run(name, w, metrics))


if __name__ == "__main__":
    sys.exit(main())
