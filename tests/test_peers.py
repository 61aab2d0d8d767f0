"""wgfast/peers.py, the peer table, and what it must do at scale: tables that grow by
themselves (C and Python), peer ids reused safely, and large configurations through the real
UAPI (`wg setconf`, `wg show`, `wg showconf`) of a daemon in a namespace.

The large tests are not timed (speed is in bench/bench_scale.py): they check that every peer
and every prefix arrives, and that traffic flows to the first and the last of 100,000 peers.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import numpy as np
import pytest
from support import needs_tun

from wgfast.dataplane import DataPlane, Ring, lib
from wgfast.lab.netns import WGFAST, Topology, genkey, pubkey, start_wireguard
from wgfast.peers import PeerTable, format_key, key_of_network, network_of_key, prefix_key

# ---- prefix keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, canon", [
    ("10.1.2.3/8", "10.0.0.0/8"),
    ("10.1.2.3/32", "10.1.2.3/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("fd00::1/64", "fd00::/64"),
    ("::/0", "::/0"),
    ("::ffff:1.2.3.4/128", "::ffff:1.2.3.4/128"),     # Go writes mapped IPv6 dotted
    ("::2:3/128", "::2:3/128"),                       # but IPv4-compatible in hex
    ("2001:db8::ff/127", "2001:db8::fe/127"),
])
def test_prefix_keys_mask_and_format_as_wireguard_go(text: str, canon: str) -> None:
    k = prefix_key(text)
    assert format_key(k) == canon
    net = ipaddress.ip_network(text, strict=False)
    assert network_of_key(k) == net and key_of_network(net) == k


@pytest.mark.parametrize("bad", ["10.0.0.1", "10.0.0.1/33", "10.0.0.01/32", "10.0.0.1/08",
                                 "fe80::1%eth0/64", "::/129", "x/1", "/8", "1.2.3.4/ 8",
                                 "1.2.3/24", "10.0.0.1/٣"])
def test_bad_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        prefix_key(bad)


# ---- the table -----------------------------------------------------------------------------

def test_ids_reused_last_in_first_out_with_a_new_generation() -> None:
    t = PeerTable(limit=3)
    t.grow(4)
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    ia, ib = t.add(a), t.add(b)
    assert (ia, ib) == (0, 1) and t.id_of(b) == 1 and len(t) == 2
    g = int(t.gen[ia])
    t.allowed(ia)[prefix_key("10.0.0.0/8")] = None
    t.set_preshared_key(ia, b"k" * 32)
    assert t.peer(ia) is not None and t.peer(ia).psk == b"k" * 32
    assert t.remove(a) == ia and a not in t
    assert not t.valid(ia, g)               # a stale (id, generation) is told apart
    assert t.add(c) == ia                   # the id comes back first
    assert t.valid(ia, int(t.gen[ia])) and int(t.gen[ia]) == g + 1
    assert t.allowed(ia) == {} and t.preshared_key(ia) == bytes(32)   # nothing carried over
    assert t.peer(ia).public_key == c
    t.add(a)
    with pytest.raises(OverflowError):
        t.add(bytes(32))
    assert list(t.by_key) == [b, c, a] and sorted(t.by_id) == [0, 1, 2]


def test_columns_grow_and_keep_values() -> None:
    t = PeerTable(limit=1000)
    t.grow(2)
    t.add(b"a" * 32)
    t.keepalive[0] = 25
    t.timer_state.retry_at[0] = 7.5
    t.grow(300)
    assert t.capacity == 300 and t.keepalive[0] == 25 and t.timer_state.retry_at[0] == 7.5
    assert len(t.timer_state.retry_at) == 300 and t.timer_state.max_peers == 300


# ---- the C tables grow -----------------------------------------------------------------------

def test_data_plane_tables_grow_keeping_state() -> None:
    dp = DataPlane()
    start = dp.capacity
    dp.peer_add(0)
    dp.set_endpoint(0, ("192.0.2.1", 51820))
    dp.add_bytes(0, tx=5)
    dp.clocks["last_auth_sent"][0] = 3.0
    key = os.urandom(32)
    dp.keypair_install(0, 42, 43, key, key, lib.wg_now(), True, True)
    grown: list[int] = []
    dp.on_grow.append(lambda: grown.append(dp.capacity))
    far = start * 8 + 3
    dp.peer_add(far)
    assert grown and dp.capacity > far and len(dp.active) == dp.capacity
    assert dp.get_endpoint(0) == ("192.0.2.1", 51820) and int(dp.tx_bytes[0]) == 5
    assert dp.clocks["last_auth_sent"][0] == 3.0 and dp.active[far] == 1
    assert dp.keypair_current(0) == 42
    # Keypair slots grow too: far more than the initial table holds.
    for i in range(1000):
        dp.keypair_install(far, 1000 + i, i, key, key, lib.wg_now(), True, True)
    assert dp.keypair_current(far) == 1999 and dp.keypair_current(0) == 42
    dp.peer_remove(far)          # its 1000 keypairs go with it
    assert dp.keypair_current(far) is None
    dp.keypair_install(far, 1000, 0, key, key, lib.wg_now(), True, True)   # indices free again


def test_batch_insert_reports_previous_owners() -> None:
    from wgfast.peers import pack_keys

    dp = DataPlane()
    for p in range(3):
        dp.peer_add(p)
    keys = [prefix_key(s) for s in ("10.0.0.0/8", "fd00::/64", "10.1.0.0/16")]
    fams, recs = pack_keys(keys)
    assert dp.aip_insert_many(fams, recs, [0, 0, 1]) == [-1, -1, -1]
    assert dp.aip_insert_many(fams[:1], recs[:17], [2]) == [0]      # moved from peer 0
    assert dp.aip_lookup(ipaddress.ip_address("10.9.9.9")) == 2
    # A remove names the peer: someone else's prefix stays.
    assert dp.aip_remove_many(fams, recs, [0, 0, 0]) == [2, 0, 1]
    assert dp.aip_lookup(ipaddress.ip_address("10.9.9.9")) == 2
    assert dp.aip_lookup(ipaddress.ip_address("fd00::1")) is None
    with pytest.raises(OSError):
        dp.aip_insert_many(b"\x07", recs[:17], [0])           # bad family: nothing done


# ---- peer ids reused while events are in flight (issue 10.4c) --------------------------------

def _confirm_event_pending(dp: DataPlane, peer: int) -> None:
    """Leave a WG_EV_CONFIRMED for `peer` queued in dp: a responder's keypair confirmed by a
    first message that another data plane sealed."""
    k1, k2 = os.urandom(32), os.urandom(32)
    src = DataPlane()
    src.peer_add(0)
    src.keypair_install(0, 7, 9, k1, k2, lib.wg_now(), True, True)
    dp.keypair_install(peer, 9, 7, k2, k1, lib.wg_now(), False, False)
    ring = Ring(1, 1500)
    ring.put_plaintext(0, b"", 0)
    assert lib.wg_seal_batch(src.handle, ring.ptr, 0, 1, lib.wg_now()) == 1
    rx = Ring(1, 1500)
    rx.put_message(0, ring.message(0))
    assert lib.wg_open_batch(dp.handle, rx.ptr, 0, 1, lib.wg_now()) == 1


def test_events_of_a_removed_peer_do_not_reach_the_peer_that_gets_its_id() -> None:
    dp = DataPlane()
    dp.peer_add(0)
    _confirm_event_pending(dp, 0)
    # A configuration change releases id 0 and hands it to another peer before Python has
    # read the event: the event was about the old peer and must not be taken for the new one.
    dp.peer_remove(0)
    dp.peer_add(0)
    assert [e for e in dp.pop_events() if e[1] == 0] == []
    # Events of peers that stay are kept.
    _confirm_event_pending(dp, 0)
    assert [(e[0], e[1]) for e in dp.pop_events()] == [(lib.WG_EV_CONFIRMED, 0)]


# ---- large configurations through the real UAPI ---------------------------------------------

def _b64keys(n: int) -> list[str]:
    import base64

    raw = os.urandom(32 * n)
    return [base64.b64encode(raw[32 * i:32 * i + 32]).decode() for i in range(n)]


def _v4(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def _v6(i: int) -> str:
    return str(ipaddress.IPv6Address(0xfd00 << 112 | i))


def _setconf(topo: Topology, iface: str, text: str, tmp: Path) -> None:
    path = tmp / f"{iface}.conf"
    path.write_text(text)
    topo.a.run(["wg", "setconf", iface, str(path)], timeout=600)


def _allowed_ips(topo: Topology, iface: str) -> dict[str, list[str]]:
    out = topo.a.run(["wg", "show", iface, "allowed-ips"], timeout=600).stdout
    res = {}
    for line in out.splitlines():
        key, _, rest = line.partition("\t")
        res[key] = [] if rest == "(none)" else rest.split()
    return res


@needs_tun("wg")
def test_100000_peers_every_prefix_there_and_first_and_last_peer_reachable(
        tmp_path: Path) -> None:
    n = 100_000
    keys = _b64keys(n)
    with Topology("pe") as topo:
        a_priv, first_priv, last_priv = genkey(), genkey(), genkey()
        keys[0], keys[-1] = pubkey(first_priv), pubkey(last_priv)
        a = start_wireguard(topo.a, WGFAST, address4="10.250.0.1/32", routes=["10.0.0.0/8"])
        topo.a.run(["ip", "addr", "add", "10.250.0.2/32", "dev", a.iface])
        # The first and the last peer are real: two daemons in the other namespace, each
        # answering one of a's two inner addresses.
        peers_b = []
        for priv, idx, port, mine in ((first_priv, 0, 51001, "10.250.0.1"),
                                      (last_priv, n - 1, 51002, "10.250.0.2")):
            peers_b.append(start_wireguard(
                topo.b, WGFAST, conf={"private_key": priv, "listen_port": port, "peers": [
                    {"public_key": pubkey(a_priv), "allowed_ips": [f"{mine}/32"]}]},
                address4=f"{_v4(idx)}/32", routes=[f"{mine}/32"]))
        lines = [f"[Interface]\nPrivateKey = {a_priv}\nListenPort = 51000\n"]
        for i, k in enumerate(keys):
            ep = (f"10.200.0.2:{51001 if i == 0 else 51002}" if i in (0, n - 1)
                  else f"192.0.2.{i % 250 + 1}:{1024 + i % 60000}")
            lines.append(f"[Peer]\nPublicKey = {k}\nAllowedIPs = {_v4(i)}/32, {_v6(i)}/128\n"
                         f"Endpoint = {ep}\n")
        _setconf(topo, a.iface, "".join(lines), tmp_path)

        got = _allowed_ips(topo, a.iface)
        assert len(got) == n
        want = {k: [f"{_v4(i)}/32", f"{_v6(i)}/128"] for i, k in enumerate(keys)}
        assert got == want
        for dest, src in ((_v4(0), "10.250.0.1"), (_v4(n - 1), "10.250.0.2")):
            r = topo.a.run(["ping", "-c", "3", "-i", "0.2", "-W", "5", "-I", src, dest],
                           check=False, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        for b in peers_b:
            b.stop(check=False)


@pytest.fixture
def daemon():
    with Topology("pf") as topo:
        wg = start_wireguard(topo.a, WGFAST, conf={"private_key": genkey()})
        yield topo, wg


@needs_tun("wg")
def test_one_peer_with_130560_allowed_ips(daemon, tmp_path: Path) -> None:
    topo, wg = daemon
    pk = _b64keys(1)[0]
    v4 = [f"{i}.{j}.0.0/16" for i in range(1, 256) for j in range(256)]
    v6 = [f"fd00::{i:x}:{j:x}/128" for i in range(1, 256) for j in range(256)]
    assert len(v4) + len(v6) == 130_560
    text = f"[Peer]\nPublicKey = {pk}\nAllowedIPs = {', '.join(v4 + v6)}\n"
    _setconf(topo, wg.iface, text, tmp_path)
    got = _allowed_ips(topo, wg.iface)
    assert list(got) == [pk] and got[pk] == v4 + v6     # every prefix, in order


@needs_tun("wg")
def test_40_peers_with_52_allowed_ips_each(daemon, tmp_path: Path) -> None:
    topo, wg = daemon
    keys = _b64keys(40)
    want = {k: [f"10.{p}.{j}.0/24" for j in range(26)] + [
        f"{ipaddress.IPv6Address((0xfd00 + p) << 112 | j)}/128" for j in range(26)]
        for p, k in enumerate(keys)}
    text = "".join(f"[Peer]\nPublicKey = {k}\nAllowedIPs = {', '.join(v)}\n"
                   for k, v in want.items())
    _setconf(topo, wg.iface, text, tmp_path)
    assert _allowed_ips(topo, wg.iface) == want
    # Moving one prefix to another peer moves it, once.
    topo.a.run(["wg", "set", wg.iface, "peer", keys[1], "allowed-ips",
                ",".join(want[keys[1]] + [want[keys[0]][0]])])
    got = _allowed_ips(topo, wg.iface)
    assert got[keys[0]] == want[keys[0]][1:]
    assert got[keys[1]] == want[keys[1]] + [want[keys[0]][0]]


@needs_tun("wg")
def test_showconf_round_trip_of_peers_without_allowed_ips(daemon, tmp_path: Path) -> None:
    topo, wg = daemon
    keys = _b64keys(31)
    text = "".join(f"[Peer]\nPublicKey = {k}\n" for k in keys[:30])
    text += f"[Peer]\nPublicKey = {keys[30]}\nAllowedIPs = 10.9.0.0/16, fd09::/64\n"
    _setconf(topo, wg.iface, text, tmp_path)
    shown = topo.a.run(["wg", "showconf", wg.iface]).stdout
    _setconf(topo, wg.iface, shown, tmp_path)
    again = topo.a.run(["wg", "showconf", wg.iface]).stdout
    assert again == shown
    got = _allowed_ips(topo, wg.iface)
    assert list(got) == keys
    assert all(got[k] == [] for k in keys[:30]) and got[keys[30]] == ["10.9.0.0/16", "fd09::/64"]


@needs_tun("wg")
def test_syncconf_of_one_change_leaves_other_sessions_alone(daemon, tmp_path: Path) -> None:
    """`wg syncconf` of a large file with one peer changed: that peer's prefixes change, every
    other peer (its id, its prefixes) stays as it was."""
    topo, wg = daemon
    n = 2000
    keys = _b64keys(n)

    def conf(moved: int | None) -> str:
        return "".join(
            f"[Peer]\nPublicKey = {k}\nAllowedIPs = {_v4(i + (1 << 20) if i == moved else i)}/32"
            f"\n" for i, k in enumerate(keys))
    _setconf(topo, wg.iface, conf(None), tmp_path)
    before = _allowed_ips(topo, wg.iface)
    path = tmp_path / "sync.conf"
    path.write_text(conf(7))
    topo.a.run(["wg", "syncconf", wg.iface, str(path)])
    after = _allowed_ips(topo, wg.iface)
    assert after[keys[7]] == [f"{_v4(7 + (1 << 20))}/32"]
    del before[keys[7]], after[keys[7]]
    assert after == before and list(after) == list(before)


def test_get_reply_is_streamed_in_pieces() -> None:
    """The daemon writes a large get reply piece by piece (never one giant string)."""
    from wgfast.device import Device

    dev = Device("unused")
    dev.dp = DataPlane()
    dev.dp.on_grow.append(dev._tables_grew)
    dev._tables_grew()
    keys = [os.urandom(32) for _ in range(3 * Device.GET_BLOCK)]
    dev.configure("\n".join(f"public_key={k.hex()}\nallowed_ip=10.0.{i >> 8}.{i & 255}/32"
                            for i, k in enumerate(keys)))
    pieces = list(dev.uapi_get_chunks())
    assert len(pieces) >= 3
    text = "".join(pieces)
    assert text.endswith("errno=0\n\n")
    assert [line[len("public_key="):] for line in text.splitlines()
            if line.startswith("public_key=")] == [k.hex() for k in keys]
    assert np.count_nonzero(dev.dp.active) == len(keys)

