"""TUN offloads against the kernel itself: a TUN with IFF_VNET_HDR in a namespace of our own
hands us TSO super-packets that gso.c cuts, and takes the super-packets and UDP trains gro.c
made (root).  The unit tests of each side are test_gso.py and test_gro.py; csum.c is checked
through both.
"""

from __future__ import annotations

import fcntl
import os
import random
import select
import socket
import struct
import subprocess

import pytest
from support import needs_tun
from support.packets import (
    ACK,
    DST4,
    PSH,
    SRC4,
    SYN,
    UDP,
    coalesce,
    datagrams,
    parse_and_verify,
    segment,
    tcp_packet,
)

from wgfast.dataplane import lib
from wgfast.lab.netns import inside

# ---- the real thing: a TUN with IFF_VNET_HDR in a namespace of our own --------------------

IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0       # _IOW('T', 202/208, int)


@needs_tun()
def test_real_tun_tso_and_gro() -> None:
    """The kernel hands us a TSO super-packet that we cut into valid segments, and takes a
    super-packet we coalesced: its TCP socket receives the bytes intact."""
    ns, dev = f"h5off{os.getpid()}", "h5tun0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with inside(ns):
            _tun_conversation(ns, dev)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _tun_conversation(ns: str, dev: str) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    sock = None
    try:
        ifr = struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETOFFLOAD, lib.WG_TUN_F_CSUM | lib.WG_TUN_F_TSO4 | lib.WG_TUN_F_TSO6)
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", "10.0.0.1/24", "dev", dev],
                    ["link", "set", dev, "up", "mtu", "1420"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)

        def read_tcp(timeout: float = 3.0) -> bytes:
            """Next TUN packet of our flow (vnet header included)."""
            while True:
                r, _, _ = select.select([fd], [], [], timeout)
                assert r, "no packet from the kernel"
                b = os.read(fd, 70000)
                ip = b[10:]
                if len(ip) >= 40 and ip[0] == 0x45 and ip[9] == 6 and ip[12:20] == SRC4 + DST4:
                    return b

        def plain(b: bytes) -> list[bytes]:
            r = segment(b, cap=2048, max_out=64)
            assert isinstance(r, list), r
            return r

        sock = socket.socket()
        sock.setblocking(False)
        assert sock.connect_ex(("10.0.0.2", 5201)) in (115, 0)     # EINPROGRESS
        syn = parse_and_verify(plain(read_tcp())[0])
        assert syn.flags & SYN
        cport, kseq = syn.sport, syn.seq + 1
        pseq = 0x10000000
        mss_opt = struct.pack("!BBH", 2, 4, 1380)
        synack = tcp_packet(b"", pseq, SYN | ACK, sport=5201, dport=cport, ack=kseq,
                            options=mss_opt, rev=True)
        os.write(fd, bytes(10) + synack)
        pseq += 1
        select.select([], [sock], [], 3)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

        # GRO direction: 12 segments from the far end, coalesced into one TUN write.
        data = random.Random(5).randbytes(12 * 1000)
        segs = [tcp_packet(data[k * 1000:(k + 1) * 1000], pseq + k * 1000,
                           ACK | (PSH if k == 11 else 0), sport=5201, dport=cport, ack=kseq,
                           ident=50 + k, rev=True) for k in range(12)]
        writes = coalesce(segs)
        assert len(writes) == 1 and writes[0][1] == lib.WG_VNET_GSO_TCPV4
        os.write(fd, writes[0])
        got = b""
        while len(got) < len(data):
            r, _, _ = select.select([sock], [], [], 3)
            assert r, f"kernel socket got {len(got)} of {len(data)} bytes"
            got += sock.recv(65536)
        assert got == data
        pseq += len(data)

        # TSO direction: the kernel sends a burst; we must see a super-packet and cut it.
        sent = random.Random(6).randbytes(200_000)
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(sent[:60_000])
        stream = b""
        saw_gso = 0
        while len(stream) < 60_000:
            b = read_tcp()
            if b[1] != lib.WG_VNET_GSO_NONE:
                saw_gso += 1
            for s in plain(b):
                p = parse_and_verify(s)                 # every checksum verifies
                if p.payload and p.seq == kseq:
                    stream += p.payload
                    kseq += len(p.payload)
                    assert len(p.payload) <= 1380
            ack = tcp_packet(b"", pseq, ACK, sport=5201, dport=cport, ack=kseq, rev=True)
            os.write(fd, bytes(10) + ack)
        assert stream == sent[:60_000]
        assert saw_gso > 0, "the kernel never sent a TSO super-packet"
    finally:
        if sock is not None:
            sock.close()
        os.close(fd)


@needs_tun()
@pytest.mark.parametrize("v6", [False, True])
def test_real_tun_takes_udp_train(v6: bool) -> None:
    """A UDP train we coalesced, written to a TUN that took USO, reaches a plain UDP socket as
    the original datagrams, one by one and intact."""
    ns, dev = f"h5uso{os.getpid()}", "h5tun1"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with inside(ns):
            _udp_train(ns, dev, v6)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _udp_train(ns: str, dev: str, v6: bool) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    sock = None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(),
                                                IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, lib.WG_TUN_F_CSUM | lib.WG_TUN_F_USO4
                        | lib.WG_TUN_F_USO6)
        except OSError:
            pytest.skip("this kernel's TUN has no USO (Linux < 6.2)")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", "10.0.0.2/24", "dev", dev],
                    ["addr", "add", "fd00::2/64", "dev", dev, "nodad"],
                    ["link", "set", dev, "up", "mtu", "1420"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("fd00::2" if v6 else "10.0.0.2", 5000))
        sock.settimeout(3)
        pkts = datagrams(30, 96, v6=v6, last=41)
        writes = coalesce(pkts, flags=UDP)
        assert len(writes) == 1 and writes[0][1] == lib.WG_VNET_GSO_UDP_L4
        os.write(fd, writes[0])
        iphl = 40 if v6 else 20
        for p in pkts:
            assert sock.recv(2048) == p[iphl + 8:]
    finally:
        if sock is not None:
            sock.close()
        os.close(fd)


