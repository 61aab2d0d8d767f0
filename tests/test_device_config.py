"""wgfast.device_config: UAPI set semantics on a device (all or nothing, allowed IPs moving
between peers, replace_peers, update_only, our own key), on a SocketTun over loopback, so
without root."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest
from support.device import LoopSide, loop_device

from wgfast.noise import StaticIdentity
from wgfast.uapi import UapiError


@pytest.fixture
def one(tmp_path: object) -> Iterator[LoopSide]:
    with loop_device(str(tmp_path), "cfg") as side:
        yield side


def test_set_is_all_or_nothing(one: LoopSide) -> None:
    dev = one.dev
    peer = StaticIdentity.generate().public
    dev.add_peer(peer, allowed_ips=["10.9.0.0/16"])
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("0.0.0.0", 0))
    port = taken.getsockname()[1]
    before = dev.uapi_get()
    new_key = StaticIdentity.generate()
    try:
        with pytest.raises(UapiError) as e:
            dev.configure(f"private_key={new_key.private.hex()}\nlisten_port={port}\n"
                          f"replace_peers=true\n"
                          f"public_key={StaticIdentity.generate().public.hex()}\n")
        assert e.value.errno == 98          # EADDRINUSE, as wg reports it
    finally:
        taken.close()
    after = dev.uapi_get()
    assert after.private_key == one.me.private == before.private_key
    assert after.listen_port == before.listen_port != port
    assert [p.public_key for p in after.peers] == [peer]
    # The device still works: the port is free now and the same request goes through.
    dev.configure(listen_port=port)
    assert dev.uapi_get().listen_port == port == dev.listen_port


def test_allowed_ip_moves_between_peers(one: LoopSide) -> None:
    dev = one.dev
    p1, p2 = StaticIdentity.generate().public, StaticIdentity.generate().public
    dev.add_peer(p1, allowed_ips=["10.9.0.0/16", "10.10.0.1/32"])
    dev.add_peer(p2, allowed_ips=["10.9.0.0/16"])
    ips = {s.public_key: s.allowed_ips for s in dev.stats()}
    assert ips[p1] == [ipaddress.ip_network("10.10.0.1/32")]
    assert ips[p2] == [ipaddress.ip_network("10.9.0.0/16")]
    assert dev.dp.aip_lookup(ipaddress.ip_address("10.9.3.4")) == dev.peers[p2].peer_id
    # Removing it from p2 leaves nobody owning it.
    dev.configure(f"public_key={p2.hex()}\nreplace_allowed_ips=true\n")
    assert dev.dp.aip_lookup(ipaddress.ip_address("10.9.3.4")) is None
    assert dev.dp.aip_lookup(ipaddress.ip_address("10.10.0.1")) == dev.peers[p1].peer_id


def test_replace_peers_update_only_and_own_key(one: LoopSide) -> None:
    dev = one.dev
    p1, p2, p3 = (StaticIdentity.generate().public for _ in range(3))
    dev.add_peer(p1)
    dev.add_peer(p2)
    dev.configure(f"replace_peers=true\npublic_key={p3.hex()}\n")
    assert [s.public_key for s in dev.stats()] == [p3]
    assert len(dev.by_id) == 1
    # update_only never creates a peer, but updates an existing one.
    dev.configure(f"public_key={p1.hex()}\nupdate_only=true\nallowed_ip=10.1.0.0/16\n"
                  f"public_key={p3.hex()}\nupdate_only=true\nallowed_ip=10.3.0.0/16\n")
    [s] = dev.stats()
    assert s.public_key == p3 and s.allowed_ips == [ipaddress.ip_network("10.3.0.0/16")]
    # Our own public key is not a peer.
    dev.add_peer(one.me.public, allowed_ips=["10.4.0.0/16"])
    assert [s.public_key for s in dev.stats()] == [p3]
    assert dev.dp.aip_lookup(ipaddress.ip_address("10.4.0.1")) is None
    # Taking a private key whose public key is a peer drops that peer.
    other = StaticIdentity.generate()
    dev.add_peer(other.public)
    dev.configure(private_key=other.private)
    assert [s.public_key for s in dev.stats()] == [p3]
    # Removal frees the id and the data plane slot.
    pid = dev.peers[p3].peer_id
    dev.remove_peer(p3)
    assert dev.stats() == [] and dev.dp.active[pid] == 0
