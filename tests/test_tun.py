"""wgfast.tun: a real TUN device inside a network namespace of our own (h3tst*), end to end:
the kernel's ICMP echo request is read from the descriptor and our reply makes ping succeed."""

from __future__ import annotations

import json
import select
import shutil
import struct
import subprocess
from collections.abc import Iterator

import pytest
from support import inet_csum, needs_tun, sh

from wgfast.lab.netns import inside
from wgfast.rtnetlink import link_events
from wgfast.tun import Tun, TunError, TunGone

NS = "h3tst0"

pytestmark = needs_tun()


@pytest.fixture
def netns() -> Iterator[str]:
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        yield NS
    finally:
        sh("ip", "netns", "del", NS, check=False)


def link(ns: str, name: str) -> dict | None:
    r = sh("ip", "-n", ns, "-j", "link", "show", "dev", name, check=False)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def test_create_mtu_up_down_close(netns: str) -> None:
    with inside(netns):
        tun = Tun("h3tun%d", mtu=1380)
    try:
        assert tun.name.startswith("h3tun") and tun.name != "h3tun%d"
        info = link(netns, tun.name)
        assert info is not None and info["mtu"] == 1380
        assert "UP" not in info["flags"] and not tun.is_up
        tun.up()
        assert tun.is_up and "UP" in link(netns, tun.name)["flags"]
        tun.mtu = 1280
        assert tun.mtu == 1280 and link(netns, tun.name)["mtu"] == 1280
        tun.down()
        assert not tun.is_up
        # The root namespace never saw it.
        assert sh("ip", "link", "show", "dev", tun.name, check=False).returncode != 0
        assert tun.fileno() >= 0 and f"fd={tun.fileno()}" in repr(tun)
    finally:
        tun.close()
    assert tun.closed and link(netns, tun.name) is None
    with pytest.raises(ValueError):
        tun.fileno()
    tun.close()                     # idempotent


def test_bad_names_and_options(netns: str) -> None:
    with inside(netns):
        with pytest.raises(TunError):
            Tun("h3" + "x" * 20)
        with pytest.raises(TunError):
            Tun("h3tun0", mtu=10)               # below the minimum MTU: refused, cleaned up
        assert link(netns, "h3tun0") is None
        with Tun("h3tun1", mtu=None) as t:
            with pytest.raises(TunError):
                t.open_queue()
            with pytest.raises(TunError):
                Tun("h3tun1")                   # busy: a single-queue device is taken


def test_multi_queue_and_vnet_hdr(netns: str) -> None:
    with inside(netns):
        with Tun("h3mq0", multi_queue=True, vnet_hdr=True, nonblocking=True) as t:
            fd2 = t.open_queue(nonblocking=True)
            assert len(t.queues) == 2 and fd2 in t.queues
            with pytest.raises(BlockingIOError):
                t.read()
            t.set_vnet_hdr_size(12)
            t.set_offload(0)
        assert link(netns, "h3mq0") is None


def echo_reply(req: bytes) -> bytes:
    """The reply a host at the request's destination would send."""
    ihl = (req[0] & 0x0F) * 4
    icmp = bytearray(req[ihl:])
    icmp[0] = 0                                 # echo reply
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", inet_csum(bytes(icmp)))
    hdr = bytearray(req[:ihl])
    hdr[12:16], hdr[16:20] = req[16:20], req[12:16]
    hdr[8] = 64
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", inet_csum(bytes(hdr)))
    return bytes(hdr) + bytes(icmp)


@pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping")
def test_ping_end_to_end(netns: str) -> None:
    with inside(netns):
        tun = Tun("h3tun0", mtu=1420, up=True)
    try:
        sh("ip", "-n", netns, "addr", "add", "10.213.0.1/24", "dev", "h3tun0")
        ping = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "5",
                                 "-s", "200", "10.213.0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            request = None
            for _ in range(50):                 # skip anything else the kernel sends
                ready, _, _ = select.select([tun], [], [], 5)
                assert ready, "no packet from the TUN"
                pkt = tun.read()
                if (pkt[0] >> 4 == 4 and pkt[9] == 1 and pkt[20] == 8
                        and pkt[16:20] == bytes([10, 213, 0, 2])):
                    request = pkt
                    break
            assert request is not None
            assert request[12:16] == bytes([10, 213, 0, 1])
            assert len(request) == 20 + 8 + 200
            assert inet_csum(request[:20]) == 0
            assert tun.write(echo_reply(request)) == len(request)
            out, err = ping.communicate(timeout=10)
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.wait()
        assert ping.returncode == 0, out + err
        assert "1 received" in out
    finally:
        tun.close()
    assert link(netns, "h3tun0") is None



# ---- the device in another namespace --------------------------------------------------------

NS2 = "h3tst1"


@pytest.fixture
def netns2() -> Iterator[str]:
    sh("ip", "netns", "del", NS2, check=False)
    sh("ip", "netns", "add", NS2)
    try:
        yield NS2
    finally:
        sh("ip", "netns", "del", NS2, check=False)


def test_follows_a_move_rename_and_deletion(netns: str, netns2: str) -> None:
    """Moved and renamed, the device is still found through its descriptor: link settings
    apply where it is now; deleted there, the descriptor says so (TunGone)."""
    with inside(netns):
        tun = Tun("h3mv0", mtu=1420)
    try:
        home = tun.netns_ino
        assert tun.follow() is False
        sh("ip", "-n", netns, "link", "set", "h3mv0", "netns", netns2)
        assert tun.follow() is True and tun.netns_ino != home
        assert tun.follow() is False            # nothing changed since
        tun.mtu = 1300
        tun.up()
        info = link(netns2, "h3mv0")
        assert info is not None and info["mtu"] == 1300 and "UP" in info["flags"]
        assert tun.link_state() == (info["ifindex"], True, 1300)
        sh("ip", "-n", netns2, "link", "set", "h3mv0", "down")
        sh("ip", "-n", netns2, "link", "set", "h3mv0", "name", "h3mv1")
        assert tun.follow() is False and tun.name == "h3mv1"
        assert not tun.is_up and tun.mtu == 1300
        sh("ip", "-n", netns2, "link", "del", "h3mv1")
        with pytest.raises(TunGone):
            tun.follow()
    finally:
        tun.close()


def test_moved_device_does_not_keep_its_namespace_alive(netns: str, netns2: str) -> None:
    """`ip netns del` of the namespace it moved to deletes it: nothing of ours (socket,
    namespace descriptor) pins that namespace, and the link monitor heard it go."""
    with inside(netns):
        tun = Tun("h3mv0", mtu=1420)
        mon = tun.link_monitor()
    try:
        sh("ip", "-n", netns, "link", "set", "h3mv0", "netns", netns2)
        assert tun.follow() is True
        old_index = tun.ifindex
        assert tun.mtu == 1420                  # a control socket made for the call
        link_events(mon)
        sh("ip", "-n", netns2, "link", "set", "h3mv0", "mtu", "1280")
        assert select.select([mon], [], [], 5)[0], "no link message from the new namespace"
        seen = link_events(mon)
        assert seen is None or old_index in seen
        sh("ip", "netns", "del", netns2)
        deadline = 50
        while deadline:
            try:
                tun.follow()
            except TunGone:
                break
            select.select([mon], [], [], 0.1)
            deadline -= 1
        with pytest.raises(TunGone):
            tun.follow()
    finally:
        mon.close()
        tun.close()
