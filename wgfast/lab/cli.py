"""The `wgfast` console script: `wgfast demo`, `wgfast bench` and `wgfast top`."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
the tunnel daemon itself is a separate command, a drop-in for wireguard-go:
  wgfast-daemon [-f] wg0
  WG_QUICK_USERSPACE_IMPLEMENTATION=wgfast-daemon wg-quick up wg0
micro-benchmarks: python3 -m pytest bench --benchmark-only (in the source tree)"""


def main(argv: list[str] | None = None) -> int:
    from wgfast import __version__, top
    from wgfast.lab import benchreport, demo

    p = argparse.ArgumentParser(
        prog="wgfast", description="Userspace WireGuard for Linux: demo and benchmark tools.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"wgfast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,bench,top}")
    d = sub.add_parser(
        "demo", help="bring up a tunnel between two namespaces and show it working",
        description="Create two network namespaces joined by veth, start a WireGuard daemon in "
                    "each, configure them with wg, ping through the tunnel (IPv4 and IPv6), run "
                    "iperf3 through it, print `wg show`, and remove everything again. "
                    "Needs root.")
    demo.add_arguments(d)
    d.set_defaults(func=demo.run)
    b = sub.add_parser(
        "bench", help="compare userspace WireGuard implementations over veth",
        description="Measure raw veth, wgfast and other wireguard-go compatible daemons between "
                    "two network namespaces (iperf3 TCP 1 and 4 streams, 64-byte UDP rate, ping, "
                    "CPU per GB) and write report.md, results.json and PNG charts. "
                    "Needs root and iperf3.")
    benchreport.add_arguments(b)
    b.set_defaults(func=benchreport.run)
    t = sub.add_parser(
        "top", help="live view of a daemon's peers: rates, handshakes, endpoints, drops",
        description="Refresh every second a table of each peer of a running wgfast-daemon (or "
                    "any wireguard-go compatible daemon): rx/tx rate and totals, handshake age, "
                    "endpoint, allowed IPs; with --metrics URL also drops by reason. Reads the "
                    "UAPI socket (root) or the daemon's metrics endpoint (no root). Ctrl-C quits.")
    top.add_arguments(t)
    t.set_defaults(func=top.run)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
