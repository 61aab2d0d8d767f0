"""The peer table: ids, generations, keys, configuration, endpoints.

One home for everything the device knows per configured peer, sized for hundreds of thousands
of them:

  - ids: a peer's id indexes every per-peer array, here and in C (struct wg_peer_clocks).
    Ids are reused last-in-first-out; `gen[id]` counts how often an id was released, so a
    stale (id, generation) pair held across a lock or an await can be told apart.  The C data
    plane guards its own batches with its id epoch (csrc/wgfast_internal.h);
  - configuration as columns (numpy arrays, sparse dicts) rather than one object per peer;
  - allowed IPs per peer as an ordered dict of prefix keys (`prefix_key`): membership, adding
    and removing cost O(1), and the order is the order they were added (wg showconf);
  - the protocol state (peer.Peer) is made on first use: a configured peer that never
    handshakes costs no Peer object;
  - the control plane's timer arrays (timers.TimerState) and the wall-clock time of the last
    handshake, which grow with the C tables.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Mapping

import numpy as np

from wgfast import timers
from wgfast.messages import AF_INET, AF_INET6
from wgfast.peer import Peer

ZERO_KEY = bytes(32)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---- prefixes -------------------------------------------------------------------------------

_CIDR_BYTE = {str(i): bytes((i,)) for i in range(129)}    # also refuses "08", "+8", " 8"
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6


def prefix_key(text: str) -> bytes:
    """`addr/cidr` -> the prefix key: the packed address masked to cidr (4 or 16 bytes), then
    the cidr byte.  ValueError when malformed (zones, leading zeros, cidr out of range)."""
    host, _, bits = text.rpartition("/")
    cb = _CIDR_BYTE.get(bits)
    if cb is None or not host:
        raise ValueError(f"bad prefix {text!r}")
    try:
        packed = socket.inet_pton(_AF6 if ":" in host else _AF4, host)
    except (OSError, ValueError):
        raise ValueError(f"bad address in prefix {text!r}") from None
    cidr = cb[0]
    width = len(packed) * 8
    if cidr >= width:
        if cidr > width:
            raise ValueError(f"prefix length out of range: {text!r}")
        return packed + cb
    v = int.from_bytes(packed, "big") >> (width - cidr) << (width - cidr)
    return v.to_bytes(len(packed), "big") + cb


def key_of_network(net: IPNetwork) -> bytes:
    return net.network_address.packed + bytes((net.prefixlen,))


def network_of_key(key: bytes) -> IPNetwork:
    if len(key) == 5:
        return ipaddress.IPv4Network((key[:4], key[4]))
    return ipaddress.IPv6Network((key[:16], key[16]))


def format_key(key: bytes) -> str:
    """The prefix as wireguard-go writes it (Go's netip: IPv4-mapped IPv6 with a dotted tail,
    every other IPv6 address in hex)."""
    if len(key) == 5:
        return f"{socket.inet_ntop(socket.AF_INET, key[:4])}/{key[4]}"
    addr = key[:16]
    if addr[:12] == bytes(12):
        # glibc writes ::a.b.c.d for these; Go does not.
        return f"{ipaddress.IPv6Address(addr)}/{key[16]}"
    return f"{socket.inet_ntop(socket.AF_INET6, addr)}/{key[16]}"


def pack_keys(keys: list[bytes]) -> tuple[bytes, bytes]:
    """Prefix keys -> (families, 17-byte records) for wg_aip_insert_many/remove_many."""
    fams = bytes(AF_INET if len(k) == 5 else AF_INET6 for k in keys)
    recs = b"".join(k[:4] + bytes(12) + k[4:] if len(k) == 5 else k for k in keys)
    return fams, recs


# ---- the table ------------------------------------------------------------------------------

class PeerTable:
    """Configured peers by id and by public key.  Not thread-safe: the device calls it under
    its lock, on the control loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit                      # the most peers at once
        self.ids: dict[bytes, int] = {}         # public key -> id, in the order added
        self.keys: list[bytes | None] = []      # id -> public key (None = free)
        self.aips: list[dict[bytes, None] | None] = []   # id -> prefix keys, in order
        self.psk: dict[int, bytes] = {}         # id -> preshared key, only when set
        self.capacity = 0
        self.gen = np.zeros(0, dtype=np.uint32)          # id -> times it was released
        self.keepalive = np.zeros(0, dtype=np.uint16)    # persistent keepalive, s
        self.last_handshake_wall = np.zeros(0)           # unix time, 0 = never
        # Read by wgfast.metrics at scrape time; each bumped once per handshake event.
        self.handshakes = np.zeros(0, dtype=np.uint64)          # completed
        self.handshake_timeouts = np.zeros(0, dtype=np.uint64)  # attempts given up
        self.initiation_sent = np.zeros(0)                      # monotonic, for round trips
        self.timer_state = timers.TimerState(0)
        self.live: dict[int, Peer] = {}         # protocol state, made on first use
        self._free: list[int] = []              # released ids, reused last-in-first-out
        self._next = 0                          # ids [0, _next) were handed out once
        self.by_key = _ByKey(self)
        self.by_id = _ById(self)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, public_key: object) -> bool:
        return public_key in self.ids

    # -- storage ---------------------------------------------------------------------------
    def grow(self, capacity: int) -> None:
        """Make the per-id columns `capacity` long (they follow the C tables' capacity)."""
        if capacity <= self.capacity:
            return
        old = self.capacity

        def ext(a: np.ndarray) -> np.ndarray:
            b = np.zeros(capacity, dtype=a.dtype)
            b[:old] = a[:old]
            return b

        self.gen = ext(self.gen)
        self.keepalive = ext(self.keepalive)
        self.last_handshake_wall = ext(self.last_handshake_wall)
        self.handshakes = ext(self.handshakes)
        self.handshake_timeouts = ext(self.handshake_timeouts)
        self.initiation_sent = ext(self.initiation_sent)
        self.timer_state.grow(capacity)
        self.capacity = capacity

    # -- ids -------------------------------------------------------------------------------
    def next_id(self) -> int:
        """The id add() will hand out next."""
        return self._free[-1] if self._free else self._next

    def add(self, public_key: bytes) -> int:
        """A new peer; returns its id.  The caller makes room first (grow)."""
        if len(self.ids) >= self.limit:
            raise OverflowError(f"more than {self.limit} peers")
        if self._free:
            pid = self._free.pop()      # remove() cleared its columns
            self.keys[pid] = public_key
            self.aips[pid] = {}
        else:
            pid = self._next            # never used: its columns are still zero
            assert pid < self.capacity, "grow() first"
            self._next += 1
            self.keys.append(public_key)
            self.aips.append({})
        self.ids[public_key] = pid
        return pid

    def remove(self, public_key: bytes) -> int | None:
        """Forget a peer (its id becomes free, its generation moves on); returns the id."""
        pid = self.ids.pop(public_key, None)
        if pid is None:
            return None
        self.keys[pid] = None
        self.aips[pid] = None
        self.psk.pop(pid, None)
        self.live.pop(pid, None)
        self.keepalive[pid] = 0
        self.last_handshake_wall[pid] = 0
        self.handshakes[pid] = self.handshake_timeouts[pid] = 0
        self.initiation_sent[pid] = 0
        self.timer_state.reset(pid)
        self.gen[pid] += 1
        self._free.append(pid)
        return pid

    def id_of(self, public_key: bytes) -> int | None:
        return self.ids.get(public_key)

    def valid(self, pid: int, gen: int) -> bool:
        """Whether (pid, gen), taken earlier, still names the same peer."""
        return 0 <= pid < self._next and self.keys[pid] is not None and int(self.gen[pid]) == gen

    # -- per-peer configuration ------------------------------------------------------------
    def preshared_key(self, pid: int) -> bytes:
        return self.psk.get(pid, ZERO_KEY)

    def set_preshared_key(self, pid: int, psk: bytes) -> None:
        if psk == ZERO_KEY:
            self.psk.pop(pid, None)
        else:
            self.psk[pid] = psk
        peer = self.live.get(pid)
        if peer is not None:
            peer.psk = psk

    def allowed(self, pid: int) -> dict[bytes, None]:
        a = self.aips[pid]
        assert a is not None
        return a

    # -- protocol state --------------------------------------------------------------------
    def peer(self, pid: int) -> Peer | None:
        """The protocol state of a configured peer, made on first use."""
        p = self.live.get(pid)
        if p is None:
            if not 0 <= pid < self._next:
                return None
            key = self.keys[pid]
            if key is None:
                return None
            p = Peer(key, pid, self.psk.get(pid))
            self.live[pid] = p
        return p


class _ByKey(Mapping[bytes, Peer]):
    """Configured peers by public key (Peer objects made on access)."""

    def __init__(self, t: PeerTable) -> None:
        self._t = t

    def __getitem__(self, key: bytes) -> Peer:
        pid = self._t.ids.get(key)
        p = None if pid is None else self._t.peer(pid)
        if p is None:
            raise KeyError(key)
        return p

    def __contains__(self, key: object) -> bool:
        return key in self._t.ids

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._t.ids))

    def __len__(self) -> int:
        return len(self._t.ids)


class _ById(Mapping[int, Peer]):
    """Configured peers by id (Peer objects made on access)."""

    def __init__(self, t: PeerTable) -> None:
        self._t = t

    def __getitem__(self, pid: int) -> Peer:
        p = self._t.peer(pid)
        if p is None:
            raise KeyError(pid)
        return p

    def __contains__(self, pid: object) -> bool:
        return isinstance(pid, int) and 0 <= pid < len(self._t.keys) \
            and self._t.keys[pid] is not None

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._t.ids.values()))

    def __len__(self) -> int:
        return len(self._t.ids)
