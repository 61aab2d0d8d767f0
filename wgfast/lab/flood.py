"""A bounded handshake flood against a daemon in a Topology, and the first legitimate
handshake measured through it (tests/test_flood.py asserts, bench/bench_flood.py reports).

The flooder is a small C program (wgfast/lab/flooder.c, compiled here with the system compiler)
that sends precomputed datagrams with sendmmsg at a paced rate from many source ports of one
address that this module adds to host a's veth, so the flood only ever travels inside the
topology's namespaces, and never sends more than rate x seconds datagrams.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from wgfast.cookie import CookieState
from wgfast.lab.netns import INNER4, UNDERLAY4, Implementation, Topology, WireGuard, make_tunnel

FLOOD_SRC = "10.200.0.3"             # a second address on host a's veth
SOURCE = Path(__file__).with_name("flooder.c")


def build_flooder(directory: Path) -> Path:
    """Compile flooder.c into directory; returns the binary's path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler to build the flooder")
    out = directory / "flooder"
    subprocess.run([cc, "-O2", "-std=gnu99", "-Wall", "-o", str(out), str(SOURCE)], check=True,
                   capture_output=True, timeout=60)
    return out


def garbage_initiations(n: int = 256) -> list[bytes]:
    """148-byte type-1 messages with a random body: mac1 is invalid."""
    return [bytes([1, 0, 0, 0]) + os.urandom(144) for _ in range(n)]


def mac1_initiations(victim_public: bytes, n: int = 1024) -> list[bytes]:
    """Initiations with a valid mac1 for victim_public (the cookie path under load), random
    otherwise: they pass the intake and cost the victim a Noise attempt each."""
    st = CookieState(victim_public)
    return [st.add_macs(bytes([1, 0, 0, 0]) + os.urandom(144), 0.0) for _ in range(n)]


def write_messages(path: Path, msgs: list[bytes]) -> None:
    with open(path, "wb") as f:
        for m in msgs:
            f.write(len(m).to_bytes(2, "little") + m)


@dataclass
class FloodResult:
    mode: str
    rate: float                  # asked for, datagrams/s
    sent: int = 0
    seconds: float = 0.0
    first_handshake: float | None = None   # s from the first ping to its reply; None = never
    confirmed: bool = False      # the victim (responder) saw the session confirmed
    rss_growth_kb: int = 0
    flood_alive: bool = False    # the flood was still going when the ping returned

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)
    return int(m.group(1)) if m else 0


def first_ping(topo: Topology, timeout: float) -> float | None:
    """Seconds until the first ping through the tunnel is answered (it waits for the
    handshake), or None."""
    t = time.monotonic()
    r = topo.a.run(["ping", "-c", "1", "-W", str(int(timeout)), INNER4[1]], check=False,
                   timeout=timeout + 10)
    if r.returncode != 0:
        return None
    m = re.search(r"time=([\d.]+) ms", r.stdout)
    return float(m.group(1)) / 1000 if m else time.monotonic() - t


def run_flood(topo: Topology, impl: Implementation, mode: str, rate: float,
              wait: float = 20.0, nsocks: int = 64, settle: float = 0.5,
              hold: float = 0.0) -> FloodResult:
    """A fresh tunnel (a initiates to b), a flood of `mode` ("garbage", "mac1" or "none") at
    b's port from FLOOD_SRC, and after `settle` seconds a's first ping, which waits `wait`
    seconds at most.  The flood lasts until the ping is answered or given up (so a handshake
    cannot simply wait for it to end) plus `hold` seconds, after which the victim's RSS growth
    is taken; at most settle + wait + hold + 5 seconds in all."""
    seconds = settle + wait + hold + 5
    tun = make_tunnel(topo, impl, impl, psk=False)
    a, b = tun.a, tun.b
    assert a.public_key and b.public_key    # make_tunnel keys both ends
    res = FloodResult(mode, rate)
    proc = None
    try:
        if mode != "none":
            topo.a.run(["ip", "addr", "add", f"{FLOOD_SRC}/24", "dev", topo.a.veth],
                       check=False)
            binary = build_flooder(topo.tmpdir)
            msgs = (garbage_initiations() if mode == "garbage"
                    else mac1_initiations(base64.b64decode(b.public_key)))
            path = topo.tmpdir / f"flood-{mode}.bin"
            write_messages(path, msgs)
            proc = topo.a.popen([str(binary), FLOOD_SRC, UNDERLAY4[1], str(b.listen_port),
                                 str(rate), str(seconds), str(nsocks), str(path)],
                                stdout=subprocess.PIPE, text=True)
            time.sleep(settle)
        before = rss_kb(b.pid)
        res.first_handshake = first_ping(topo, wait)
        if proc is not None:
            res.flood_alive = proc.poll() is None
            time.sleep(hold)
            res.rss_growth_kb = max(0, rss_kb(b.pid) - before)
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
            parts = out.split()
            if len(parts) == 2:
                res.sent, res.seconds = int(parts[0]), float(parts[1])
            proc = None
        else:
            res.rss_growth_kb = max(0, rss_kb(b.pid) - before)
        res.confirmed = _confirmed(b, a)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        tun.stop()
    return res


def _confirmed(victim: WireGuard, peer: WireGuard, timeout: float = 10.0) -> bool:
    """The victim recorded a handshake with peer: as responder it does so only when its
    keypair is confirmed by data, so the control flag made it through."""
    assert peer.public_key
    return victim.wait_handshake(peer.public_key, timeout) > 0
