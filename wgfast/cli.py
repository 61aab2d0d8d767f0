"""The `wgfast` console script: `wgfast demo` and `wgfast bench`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from wgfast import benchreport, demo

    p = argparse.ArgumentParser(prog="wgfast", description="Userspace WireGuard tools")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="bring up a tunnel between two namespaces and show it working")
    demo.add_arguments(d)
    d.set_defaults(func=demo.run)
    b = sub.add_parser("bench", help="compare userspace WireGuard implementations over veth")
    benchreport.add_arguments(b)
    b.set_defaults(func=benchreport.run)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
