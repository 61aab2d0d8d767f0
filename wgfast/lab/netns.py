"""The namespace harness in one import: two network namespaces joined by a veth pair
(topology.py), userspace WireGuard daemons inside them (daemons.py) and the tools around them
(tools.py).  The end-to-end tests, bench/, `wgfast demo` and `wgfast bench` import these names
from here; the code lives in the three modules, one concept each.
"""

from __future__ import annotations

from wgfast.lab.daemons import (
    SOCKET_DIR,
    WGFAST,
    WGFAST_NO_OFFLOADS,
    WIREGUARD_GO,
    DeviceDump,
    Implementation,
    PeerDump,
    Tunnel,
    WireGuard,
    implementation_for_binary,
    make_tunnel,
    render_config,
    start_wireguard,
    wrapper_script,
)
from wgfast.lab.tools import (
    IPERF_PORT,
    genkey,
    genpsk,
    hex_to_key,
    iperf3_available,
    key_to_hex,
    proc_cpu_seconds,
    pubkey,
    run_iperf3,
)
from wgfast.lab.topology import (
    INNER4,
    INNER6,
    UNDERLAY4,
    UNDERLAY6,
    Host,
    NetnsError,
    PingResult,
    Topology,
    inside,
    terminate,
)

__all__ = [
    "INNER4", "INNER6", "IPERF_PORT", "SOCKET_DIR", "UNDERLAY4", "UNDERLAY6", "WGFAST",
    "WGFAST_NO_OFFLOADS", "WIREGUARD_GO", "DeviceDump", "Host", "Implementation", "NetnsError",
    "PeerDump", "PingResult", "Topology", "Tunnel", "WireGuard", "genkey", "genpsk",
    "hex_to_key", "implementation_for_binary", "inside", "iperf3_available", "key_to_hex",
    "make_tunnel", "proc_cpu_seconds", "pubkey", "render_config", "run_iperf3",
    "start_wireguard", "terminate", "wrapper_script",
]
