"""Large configurations end to end: `wg setconf` of N peers (each with a /32, a /128 and an
endpoint) into a daemon in a namespace, `wg show dump`, `wg syncconf` of a one-peer change, and
the daemon's memory, for wgfast and wireguard-go (Debian's /usr/bin/wireguard-go) in the same
run.  wireguard-go refuses more than 65,536 peers, so it is left out above that.

    sudo python3 bench/bench_scale.py                 # 1,000 10,000 100,000
    sudo python3 bench/bench_scale.py 1000 1000000    # any sizes

Prints one line per (implementation, size): seconds for each step and RSS (empty daemon and
configured, MB, and KB per peer).  Not a pytest file: the sizes take minutes (pytest-benchmark
pieces are bench/bench_allowedips.py, bench_timers.py, bench_handshake.py).
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgfast.lab.netns import WGFAST, WIREGUARD_GO, Implementation, Topology, start_wireguard  # noqa: E402

WG_GO_MAX = 65536
SIZES = (1000, 10000, 100000)


def b64(n: int) -> list[str]:
    raw = os.urandom(32 * n)
    return [base64.b64encode(raw[32 * i:32 * i + 32]).decode() for i in range(n)]


def config(private: str, keys: list[str], change: int | None = None) -> str:
    """The [Interface] with a private key and N [Peer]s; `change` gives that peer another /32."""
    out = [f"[Interface]\nPrivateKey = {private}\nListenPort = 51820\n"]
    for i, k in enumerate(keys):
        j = i if change != i else i + (1 << 23)
        out.append(f"[Peer]\nPublicKey = {k}\n"
                   f"AllowedIPs = 10.{j >> 16 & 255}.{j >> 8 & 255}.{j & 255}/32, "
                   f"fd00::{j >> 16:x}:{j & 0xffff:x}/128\n"
                   f"Endpoint = 192.0.2.{i % 250 + 1}:{1024 + i % 60000}\n")
    return "".join(out)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run(impl: Implementation, n: int, keys: list[str], tmp: Path) -> dict[str, float]:
    private = b64(1)[0]
    full = tmp / "full.conf"
    changed = tmp / "changed.conf"
    full.write_text(config(private, keys))
    changed.write_text(config(private, keys, change=n // 2))
    res: dict[str, float] = {}
    with Topology("sc") as topo:
        wg = start_wireguard(topo.a, impl, conf=None, timeout=30)
        time.sleep(0.5)
        empty = rss_kb(wg.pid)
        t = time.perf_counter()
        topo.a.run(["wg", "setconf", wg.iface, str(full)], timeout=3600)
        res["setconf_s"] = time.perf_counter() - t
        t = time.perf_counter()
        dump = topo.a.run(["wg", "show", wg.iface, "dump"], timeout=3600).stdout
        res["dump_s"] = time.perf_counter() - t
        res["peers_listed"] = dump.count("\n") - 1
        t = time.perf_counter()
        topo.a.run(["wg", "syncconf", wg.iface, str(changed)], timeout=3600)
        res["syncconf_s"] = time.perf_counter() - t
        full_rss = rss_kb(wg.pid)
        res["rss_empty_mb"] = empty / 1024
        res["rss_mb"] = full_rss / 1024
        res["kb_per_peer"] = (full_rss - empty) / n
    return res


def main(argv: list[str]) -> int:
    import argparse

    def size(text: str) -> int:
        n = int(text.replace(",", "").replace("_", ""))
        if n < 1:
            raise ValueError(text)
        return n

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=size, metavar="PEERS",
                    help="peer counts to measure (default: 1,000 10,000 100,000)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (namespaces)", file=sys.stderr)
        return 2
    sizes = args.sizes or list(SIZES)
    impls = [WGFAST]
    if shutil.which("wireguard-go"):
        impls.append(WIREGUARD_GO)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"wgfast-scale-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for n in sizes:
            keys = b64(n)
            for impl in impls:
                if impl is WIREGUARD_GO and n > WG_GO_MAX:
                    print(f"{impl.name:13} {n:>9,} peers: skipped (wireguard-go takes at most "
                          f"{WG_GO_MAX:,})", flush=True)
                    continue
                r = run(impl, n, keys, tmp)
                print(f"{impl.name:13} {n:>9,} peers: setconf {r['setconf_s']:8.2f} s  "
                      f"dump {r['dump_s']:6.2f} s ({int(r['peers_listed']):,} listed)  "
                      f"syncconf(1 change) {r['syncconf_s']:6.3f} s  "
                      f"RSS {r['rss_empty_mb']:.0f} -> {r['rss_mb']:.0f} MB "
                      f"({r['kb_per_peer']:.2f} KB/peer)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
