"""wgfast.metrics: a real HTTP GET against wgfast-daemon --metrics while traffic flows through a
tunnel between two namespaces; the counters move by exactly the bytes sent; every drop reason
and handshake outcome is there; no private or preshared key ever appears.  Address parsing."""

from __future__ import annotations

import base64
import os
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import needs_netns
from support.daemon import scrape, send_udp, value

from wgfast.dataplane import DROP_REASONS, lib
from wgfast.lab.netns import INNER4, Topology, inside, key_to_hex
from wgfast.metrics import HANDSHAKE_OUTCOMES, LatencyHistogram, parse_address


def test_scrape_counts_the_bytes_sent(metrics_tunnel, topo: Topology) -> None:
    a, b = metrics_tunnel.pair
    pub_a = a.public_key
    pub_b = b.public_key
    before_a, before_b = scrape(topo.a.name), scrape(topo.b.name)
    lab_b = {"interface": a.iface, "public_key": pub_b}
    lab_a = {"interface": b.iface, "public_key": pub_a}
    assert value(before_a, "wireguard_latest_handshake_seconds", **lab_b) > 0
    assert value(before_a, "wgfast_peer_handshakes_total", **lab_b) >= 1
    tx0 = value(before_a, "wireguard_sent_bytes_total", **lab_b)
    rx0 = value(before_b, "wireguard_received_bytes_total", **lab_a)

    n, size = 20, 1000
    send_udp(topo.a.name, INNER4[1], n, size)
    # The receiver has counted them all once its TUN shows them (a ping after the burst is
    # answered only after the burst went through in order).
    assert topo.a.wait_ping(INNER4[1])
    after_a, after_b = scrape(topo.a.name), scrape(topo.b.name)
    # Each datagram: 20 + 8 + 1000 bytes of IP, padded to 16, + 16 header + 16 tag.
    per = 16 + (20 + 8 + size + 15) // 16 * 16 + 16
    ping = 16 + (20 + 8 + 56 + 15) // 16 * 16 + 16      # the request that followed
    dtx = value(after_a, "wireguard_sent_bytes_total", **lab_b) - tx0
    drx = value(after_b, "wireguard_received_bytes_total", **lab_a) - rx0
    for d in (dtx, drx):
        # Anything else on the wire since the first scrape is a 32-byte keepalive.
        assert d >= n * per + ping and (d - n * per - ping) % 32 == 0, (d, n * per)
    assert value(after_a, "wireguard_received_bytes_total", **lab_b) > \
        value(before_a, "wireguard_received_bytes_total", **lab_b)
    # The same numbers `wg` reads through the UAPI socket (the sender is quiet now).
    dump = a.dump()
    assert value(after_a, "wireguard_sent_bytes_total", **lab_b) <= \
        dump.peers[pub_b].tx_bytes

    # allowed_ips as the exporter labels them.
    allowed = [lab["allowed_ips"] for lab, _ in after_a["wireguard_sent_bytes_total"]]
    assert allowed == ["10.201.0.2/32,fd00:201::2/128"]
    # Batch histograms moved; every batch holds at least one packet.
    assert value(after_a, "wgfast_tun_batch_packets_count", interface=a.iface) >= 1
    assert value(after_a, "wgfast_tun_batch_packets_sum", interface=a.iface) >= n
    assert value(after_b, "wgfast_udp_batch_datagrams_count", interface=b.iface) >= 1
    assert value(after_b, "wgfast_udp_batch_datagrams_sum", interface=b.iface) >= n
    assert value(after_a, "wgfast_tun_batch_packets_bucket", interface=a.iface, le="+Inf") == \
        value(after_a, "wgfast_tun_batch_packets_count", interface=a.iface)
    # Cumulative buckets; the lone ping requests were batches of one.
    les = [v for lab, v in after_a["wgfast_tun_batch_packets_bucket"]]
    assert les == sorted(les) and les[0] >= 1
    assert [lab["le"] for lab, _ in after_a["wgfast_tun_batch_packets_bucket"]] == \
        ["1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "+Inf"]
    # The initiator timed a round trip; the responder accepted an initiation.
    assert value(after_a, "wgfast_handshake_rtt_seconds_count", interface=a.iface) >= 1
    assert value(after_b, "wgfast_handshake_messages_total", interface=b.iface,
                 outcome="accepted") >= 1
    info = [lab for lab, _ in after_a["wgfast_device_info"]]
    assert info[0]["aead"] and info[0]["interface"] == a.iface


def test_every_reason_and_outcome_and_no_secret(metrics_tunnel, topo: Topology) -> None:
    a, _ = metrics_tunnel.pair
    m = scrape(topo.a.name)
    reasons = {lab["reason"] for lab, _ in m["wgfast_drops_total"]}
    assert reasons == set(DROP_REASONS.values()) and len(reasons) == lib.WG_DROP_NREASONS - 1
    outcomes = {lab["outcome"] for lab, _ in m["wgfast_handshake_messages_total"]}
    assert outcomes == set(HANDSHAKE_OUTCOMES)
    for name in ("wgfast_events_pending", "wgfast_staged_packets", "wgfast_under_load",
                 "wgfast_peers"):
        assert value(m, name, interface=a.iface) >= 0
    assert value(m, "wgfast_under_load", interface=a.iface) == 0
    text = m["__text__"][0][0]["text"]
    conf = a.showconf()
    secrets = [line.split("=", 1)[1].strip() for line in conf.splitlines()
               if line.startswith(("PrivateKey", "PresharedKey"))]
    assert len(secrets) == 2
    for k in secrets:
        assert k not in text and key_to_hex(k) not in text
        assert base64.b64decode(k).hex() not in text


def test_garbage_shows_up_as_a_drop(metrics_tunnel, topo: Topology) -> None:
    a, b = metrics_tunnel.pair
    before = value(scrape(topo.b.name), "wgfast_drops_total", interface=b.iface, reason="type")
    with inside(topo.a.name):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(5):
                s.sendto(b"\x09" + bytes(40), (topo.b.addr4, 51821))
    assert topo.a.wait_ping(INNER4[1])
    after = value(scrape(topo.b.name), "wgfast_drops_total", interface=b.iface, reason="type")
    assert after - before == 5
    # Initiations (type 1, 148 bytes) whose mac1 is wrong: counted by outcome.
    m = scrape(topo.b.name)
    bad0 = value(m, "wgfast_handshake_messages_total", interface=b.iface, outcome="bad_mac1")
    with inside(topo.a.name):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(b"\x01\0\0\0" + os.urandom(144), (topo.b.addr4, 51821))
    assert topo.a.wait_ping(INNER4[1])
    m = scrape(topo.b.name)
    assert value(m, "wgfast_handshake_messages_total", interface=b.iface,
                 outcome="bad_mac1") - bad0 == 3
    assert value(m, "wgfast_handshake_messages_total", interface=b.iface,
                 outcome="rejected") == 0


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("[::1]:9100", ("::1", 9100)),
    ("0.0.0.0", ("0.0.0.0", 9586)),
    ("[::]", ("::", 9586)),
    ("::1", ("::1", 9586)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", [":9586", "", "example.com:80", "1.2.3.4:99999", "[::1",
                                  "[::1]x", "1.2.3.4:port"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_latency_histogram_buckets() -> None:
    h = LatencyHistogram((0.01, 0.1))
    for s in (0.005, 0.05, 0.05, 3.0, -1.0):
        h.observe(s)
    assert h.cumulative() == [("0.01", 1.0), ("0.1", 3.0), ("+Inf", 4.0)]
    assert h.sum == pytest.approx(3.105)


@needs_netns
def test_python_api_metrics_and_serve_metrics() -> None:
    """Device.metrics() and Device.serve_metrics() on in-process devices: the HTTP thread
    scrapes while the control loop runs in its own."""
    from support.device import UNDER, pair, ping

    with pair() as (a, b):
        a.dev.add_peer(b.me.public, endpoint=f"{UNDER[1]}:{b.dev.listen_port}",
                       allowed_ips=["10.66.2.2/32"])
        b.dev.add_peer(a.me.public, allowed_ips=["10.66.2.1/32"])
        assert ping(a.ns, "10.66.2.2").returncode == 0
        pub = base64.b64encode(b.me.public).decode()
        text = a.dev.metrics()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        [sent] = families["wireguard_sent_bytes"].samples
        assert sent.labels == {"interface": a.dev.name, "public_key": pub,
                               "allowed_ips": "10.66.2.2/32"}
        assert 0 < sent.value <= a.dev.stats()[0].tx_bytes
        url = a.dev.serve_metrics("127.0.0.1:0")
        with urllib.request.urlopen(url, timeout=10) as r:
            served = r.read().decode()
        assert f'public_key="{pub}"' in served and "wgfast_drops_total" in served
        assert a.me.private.hex() not in served
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    # close() took the endpoint down with the device.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_loopback_metrics_without_root(tmp_path: object) -> None:
    """The same exposition from devices on SocketTuns over loopback (no root): a peer's
    sent bytes and endpoint, its handshake counted, served over HTTP."""
    from support import until
    from support.device import LOOP_INNER, inner_udp, join, loop_device

    with loop_device(str(tmp_path), "mta") as a, loop_device(str(tmp_path), "mtb") as b:
        join(a, b)
        p = inner_udp(LOOP_INNER[0], LOOP_INNER[1], b"counted")
        a.tun.send(p)
        assert b.tun.recv() == p
        pub = base64.b64encode(b.me.public).decode()
        assert until(lambda: int(a.dev.handshakes_completed[0]) == 1)
        families = {f.name: f for f in text_string_to_metric_families(a.dev.metrics())}
        [sent] = families["wireguard_sent_bytes"].samples
        assert sent.labels == {"interface": a.dev.name, "public_key": pub,
                               "allowed_ips": f"{LOOP_INNER[1]}/32"}
        assert 0 < sent.value <= a.dev.stats()[0].tx_bytes
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for fam in families.values():
            for smp in fam.samples:
                samples.setdefault(smp.name, []).append((smp.labels, smp.value))
        on_a = {"interface": a.dev.name, "public_key": pub}
        assert value(samples, "wgfast_peer_handshakes_total", **on_a) == 1
        url = a.dev.serve_metrics("127.0.0.1:0")
        with urllib.request.urlopen(url, timeout=10) as r:
            served = r.read().decode()
        assert f'endpoint="127.0.0.1:{b.dev.listen_port}"' in served


def test_roaming_and_handshake_timeouts(metrics_tunnel, topo: Topology) -> None:
    from support import until

    from wgfast.lab.netns import genkey, pubkey

    a, b = metrics_tunnel.pair
    on_b = {"interface": b.iface, "public_key": a.public_key}
    assert value(scrape(topo.b.name), "wgfast_peer_endpoint_changes_total", **on_b) == 0
    a.set("listen-port", "51830")            # a NAT rebinding: same session, new source port
    assert topo.a.wait_ping(INNER4[1])
    m = scrape(topo.b.name)
    assert value(m, "wgfast_peer_endpoint_changes_total", **on_b) == 1
    assert value(m, "wgfast_peer_handshakes_total", **on_b) == 1       # no new handshake
    assert b.endpoints()[a.public_key] == "10.200.0.1:51830"

    # A peer that never answers: each initiation without a response counts, once.
    ghost = pubkey(genkey())
    a.set("peer", ghost, "endpoint", f"{topo.b.addr4}:9", "allowed-ips", "10.99.0.0/24")
    topo.a.run(["ip", "route", "add", "10.99.0.0/24", "dev", a.iface])
    topo.a.ping("10.99.0.1", count=1, wait=1)
    on_a = {"interface": a.iface, "public_key": ghost}
    assert until(lambda: value(scrape(topo.a.name), "wgfast_peer_handshake_timeouts_total",
                               **on_a) >= 1, 20)
    m = scrape(topo.a.name)
    assert value(m, "wgfast_peer_handshakes_total", **on_a) == 0
    assert value(m, "wireguard_latest_handshake_seconds", **on_a) == 0
    assert value(m, "wgfast_peer_handshake_timeouts_total", interface=a.iface,
                 public_key=b.public_key) == 0


def test_scrapes_during_traffic_only_ever_rise(metrics_tunnel, topo: Topology) -> None:
    """Scrapes from another thread while the data plane is busy: consistent, monotonic."""
    import threading

    a, b = metrics_tunnel.pair
    lab = {"interface": a.iface, "public_key": b.public_key}
    stop = threading.Event()

    def flood() -> None:
        with inside(topo.a.name):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                while not stop.is_set():
                    for _ in range(200):
                        s.sendto(b"f" * 1200, (INNER4[1], 9))

    t = threading.Thread(target=flood)
    t.start()
    try:
        seen = [value(scrape(topo.a.name), "wireguard_sent_bytes_total", **lab)
                for _ in range(15)]
    finally:
        stop.set()
        t.join(10)
    assert seen == sorted(seen) and seen[-1] > seen[0]
