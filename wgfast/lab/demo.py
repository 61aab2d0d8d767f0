"""`wgfast demo`: two network namespaces, two peers, a ping and a throughput run, then cleanup."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from wgfast.lab.netns import (
    INNER4,
    INNER6,
    WGFAST,
    WIREGUARD_GO,
    Implementation,
    NetnsError,
    Topology,
    implementation_for_binary,
    iperf3_available,
    make_tunnel,
    run_iperf3,
)


def resolve_impl(name: str) -> Implementation:
    if name == "wgfast":
        return WGFAST
    if name == "wireguard-go":
        return WIREGUARD_GO
    return implementation_for_binary(name)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--impl", default="wgfast",
                   help="daemon for both peers: wgfast (default), wireguard-go, or a path to a "
                        "wireguard-go compatible binary")
    p.add_argument("--peer-impl", default=None,
                   help="daemon for the second peer (default: same as --impl)")
    p.add_argument("--seconds", type=float, default=3.0, help="iperf3 duration (default 3)")
    p.add_argument("--prefix", default="wgd", help="name prefix for namespaces and interfaces")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    import os

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    if os.geteuid() != 0:
        say("wgfast demo needs root (it creates network namespaces).")
        return 2
    impl_a = resolve_impl(args.impl)
    impl_b = resolve_impl(args.peer_impl or args.impl)
    for impl in (impl_a, impl_b):
        reason = impl.unavailable_reason()
        if reason:
            say(f"cannot run the demo: {reason}")
            return 2
    ok = True
    try:
        with Topology(args.prefix) as topo:
            say(f"namespaces {topo.a.name} and {topo.b.name}, joined by veth "
                f"({topo.a.addr4} <-> {topo.b.addr4})")
            t0 = time.monotonic()
            tun = make_tunnel(topo, impl_a, impl_b)
            assert tun.b.public_key     # make_tunnel keys both ends
            say(f"peer A: {impl_a.name} on {tun.a.iface} ({INNER4[0]}, {INNER6[0]}), "
                f"pid {tun.a.pid}")
            say(f"peer B: {impl_b.name} on {tun.b.iface} ({INNER4[1]}, {INNER6[1]}), "
                f"pid {tun.b.pid}")
            say(f"both daemons up and configured in {time.monotonic() - t0:.2f} s")
            if not topo.a.wait_ping(INNER4[1], deadline=10):
                say("FAILED: no reply through the tunnel")
                return 1
            hs = tun.a.dump().peers[tun.b.public_key].latest_handshake
            say(f"handshake completed ({time.strftime('%H:%M:%S', time.localtime(hs))})")
            for dest in (INNER4[1], INNER6[1]):
                r = topo.a.ping(dest, count=5, interval=0.1)
                if r.received == 0:
                    say(f"FAILED: ping {dest}: no reply")
                    ok = False
                else:
                    say(f"ping {dest}: {r.received}/{r.transmitted} replies, rtt min/avg/max "
                        f"{r.rtt_min_ms:.3f}/{r.rtt_avg_ms:.3f}/{r.rtt_max_ms:.3f} ms")
            if iperf3_available():
                say(f"iperf3 TCP through the tunnel for {args.seconds:g} s ...")
                data = run_iperf3(topo.b, topo.a, INNER4[1], duration=args.seconds)
                bps = data["end"]["sum_received"]["bits_per_second"]
                say(f"throughput: {bps / 1e9:.2f} Gbit/s")
                if bps <= 0:
                    ok = False
            else:
                say("iperf3 is not installed: skipping the throughput run")
            say("")
            say(f"$ wg show {tun.a.iface}    (in namespace {topo.a.name})")
            say(tun.a.wg("show", tun.a.iface).rstrip())
            say("")
            for d in tun.pair:
                if not d.alive():
                    say(f"FAILED: {d.impl.name} died:\n{d.log()}")
                    ok = False
            say("removing namespaces and daemons ...")
    except KeyboardInterrupt:
        say("interrupted: everything was removed")
        return 130
    except NetnsError as e:
        say(f"FAILED: {e}")
        return 1
    say("done: tunnel works" if ok else "done: tunnel did NOT work")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wgfast demo", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
