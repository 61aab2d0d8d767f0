"""The tools the lab drives besides the daemons: wg(8)'s key commands, iperf3, and a process's
CPU time."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from wgfast.lab.topology import Host, NetnsError, terminate


def genkey() -> str:
    return _tool(["wg", "genkey"])


def pubkey(private_key: str) -> str:
    return _tool(["wg", "pubkey"], private_key + "\n")


def genpsk() -> str:
    return _tool(["wg", "genpsk"])


def key_to_hex(key_b64: str) -> str:
    return base64.b64decode(key_b64).hex()


def hex_to_key(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


def _tool(argv: list[str], stdin: str | None = None) -> str:
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.strip()


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces; fields after the closing parenthesis are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def iperf3_available() -> bool:
    return shutil.which("iperf3") is not None


IPERF_PORT = 5201


def run_iperf3(
    server: Host, client: Host, dest: str, args: Sequence[str] = (), duration: float = 2.0,
    port: int = IPERF_PORT, on_start: Any = None,
) -> dict[str, Any]:
    """One iperf3 run (server in `server`, client in `client` towards `dest`); the parsed -J
    output.  `on_start()` is called once the server listens, just before the client starts."""
    import json

    srv = server.popen(["iperf3", "-s", "-1", "-p", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            ss = server.run(["ss", "-Hltn", f"sport = :{port}"], check=False)
            if ss.stdout.strip():
                break
            if srv.poll() is not None or time.monotonic() > deadline:
                raise NetnsError("iperf3 server did not start")
            time.sleep(0.02)
        if on_start is not None:
            on_start()
        res = client.run(
            ["iperf3", "-c", dest, "-p", str(port), "-J", "-t", str(duration), *args],
            check=False, timeout=duration + 30)
        try:
            data: dict[str, Any] = json.loads(res.stdout)
        except ValueError as e:
            raise NetnsError(f"iperf3 gave no JSON: {res.stderr.strip()}") from e
        if "error" in data:
            raise NetnsError(f"iperf3: {data['error']}")
        return data
    finally:
        terminate(srv, grace=2)
        if srv in server._procs:
            server._procs.remove(srv)
