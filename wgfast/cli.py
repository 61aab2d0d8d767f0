"""The `wgfast` console script: `wgfast demo` and `wgfast bench`."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
the tunnel daemon itself is a separate command, a drop-in for wireguard-go:
  wgfast-daemon [-f] wg0
  WG_QUICK_USERSPACE_IMPLEMENTATION=wgfast-daemon wg-quick up wg0
micro-benchmarks: python3 -m pytest bench --benchmark-only (in the source tree)"""


def main(argv: list[str] | None = None) -> int:
    from wgfast import __version__, benchreport, demo

    p = argparse.ArgumentParser(
        prog="wgfast", description="Userspace WireGuard for Linux: demo and benchmark tools.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"wgfast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,bench}")
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
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
