"""`wgfast bench`: raw veth vs wgfast vs other userspace WireGuards, as a Markdown report + PNGs.

Everything runs between two fresh network namespaces joined by veth; each implementation gets
a fresh tunnel (both ends the same implementation).  Per repetition it measures iperf3 TCP with
1 and 4 streams, the highest 64-byte UDP rate with < 1 % loss (an offered-rate ladder), ping
latency, and the daemons' CPU time per GB moved (utime+stime of both daemons, from
/proc/PID/stat, over the single-stream TCP run).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from wgfast.lab.measure import RAW, Progress, Results, Settings, measure_target
from wgfast.lab.netns import (
    WGFAST,
    WGFAST_NO_OFFLOADS,
    WIREGUARD_GO,
    Implementation,
    Topology,
    implementation_for_binary,
)
from wgfast.lab.report import impl_version, write_charts, write_report

# The command line; the measurements are in measure.py, the report in report.py.


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="report folder (default: ./wgfast-bench-DATE)")
    p.add_argument("--against", metavar="BIN", action="extend", nargs="+", default=None,
                   help="other wireguard-go compatible daemons to compare (default: "
                        "wireguard-go if installed)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="1 repetition, 2 s tests")
    p.add_argument("--no-wgfast", action="store_true", help="leave wgfast out")
    p.add_argument("--offloads-off-too", action="store_true",
                   help="also measure wgfast with TUN/UDP offloads forced off (wgfast-nooff)")
    p.add_argument("--prefix", default="wgb", help="name prefix for namespaces and interfaces")


def run(args: argparse.Namespace, out: TextIO = sys.stderr) -> int:
    if os.geteuid() != 0:
        print("wgfast bench needs root (it creates network namespaces).", file=out)
        return 2
    if shutil.which("iperf3") is None:
        print("wgfast bench needs iperf3.", file=out)
        return 2
    settings = Settings.quick() if args.quick else Settings()
    if args.reps is not None:
        settings.reps = max(1, args.reps)
    started = _dt.datetime.now().astimezone()
    out_dir: Path = args.out or Path(f"wgfast-bench-{started.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Results(settings)

    impls: list[Implementation] = []
    if not args.no_wgfast:
        impls.append(WGFAST)
        if getattr(args, "offloads_off_too", False):
            impls.append(WGFAST_NO_OFFLOADS)
    if args.against is None:
        if WIREGUARD_GO.unavailable_reason() is None:
            impls.append(WIREGUARD_GO)
    else:
        impls += [WIREGUARD_GO if b == "wireguard-go" else implementation_for_binary(b)
                  for b in args.against]
    targets: list[tuple[str, Implementation | None]] = [(RAW, None)]
    for impl in impls:
        reason = impl.unavailable_reason()
        if reason:
            results.notes.append(f"skipped {reason}")
            print(f"skipping {reason}", file=out)
            continue
        targets.append((impl.name, impl))
        results.versions[impl.name] = impl_version(impl)

    progress = Progress(4 * settings.reps * len(targets), out)
    t0 = time.monotonic()
    try:
        with Topology(args.prefix) as topo:
            for name, target in targets:
                try:
                    measure_target(topo, name, target, settings, results, progress)
                    results.targets.append(name)
                except Exception as e:  # noqa: BLE001 - one broken daemon must not sink the rest
                    results.notes.append(f"{name} failed: {e}")
                    print(f"{name} failed: {e}", file=out)
                    if results.values.get(name):
                        results.targets.append(name)
    except KeyboardInterrupt:
        print("interrupted: namespaces removed, partial report written", file=out)
        results.notes.append("interrupted before the end")
    elapsed = time.monotonic() - t0
    write_charts(results, out_dir)
    report = write_report(results, out_dir, started, elapsed)
    (out_dir / "results.json").write_text(json.dumps({
        "date": started.isoformat(),
        "settings": settings.__dict__,
        "targets": results.targets,
        "values": results.values,
        "versions": results.versions,
        "notes": results.notes,
    }, indent=2, default=list))
    print(f"report: {report}", file=out)
    print(report.read_text(), file=out)
    return 0 if results.targets else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wgfast bench", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
