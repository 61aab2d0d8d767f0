"""Types of the cffi module wgfast._native, generated from csrc/wgfast.h by
csrc/gen_stub.py: do not edit; run `python3 csrc/gen_stub.py` after changing the
header."""

from typing import Any, Final, TypeAlias, final, type_check_only

import _cffi_backend

_CData: TypeAlias = _cffi_backend.FFI.CData
# Pointer arguments: cffi checks them at call time (cdata, ffi.NULL, bytes, a list).
_Pointer: TypeAlias = Any

ffi: _cffi_backend.FFI


@final
@type_check_only
class _wg_addr:
    family: int
    port: int
    scope_id: int
    addr: _CData
    src_ifindex: int
    src: _CData


@final
@type_check_only
class _wg_ring:
    nslots: int
    slot_size: int
    data_cap: int
    epoch: int
    slab: _CData
    len: _CData
    peer: _CData
    receiver: _CData
    counter: _CData
    status: _CData
    addr: _CData


@final
@type_check_only
class _wg_replay:
    greatest: int
    bits: _CData


@final
@type_check_only
class _wg_peer_clocks:
    max_peers: int
    _pad: int
    last_data_sent: _CData
    last_data_recv: _CData
    last_auth_sent: _CData
    last_auth_recv: _CData
    pending_data_sent: _CData
    pending_data_recv: _CData
    tx_bytes: _CData
    rx_bytes: _CData
    want_handshake: _CData
    active: _CData


@final
@type_check_only
class _wg_event:
    type: int
    peer: int
    receiver: int
    len: int
    addr: _wg_addr


@final
@type_check_only
class _Lib:
    WG_HEADROOM: Final[int]
    WG_TAILROOM: Final[int]
    WG_TAG_LEN: Final[int]
    WG_KEY_LEN: Final[int]
    WG_MAX_BATCH: Final[int]
    WG_MSG_DATA: Final[int]
    WG_MIN_DATA_LEN: Final[int]
    WG_OK: Final[int]
    WG_DROP_SHORT: Final[int]
    WG_DROP_TYPE: Final[int]
    WG_DROP_NO_KEYPAIR: Final[int]
    WG_DROP_EXPIRED: Final[int]
    WG_DROP_REPLAY: Final[int]
    WG_DROP_TAG: Final[int]
    WG_DROP_COUNTER: Final[int]
    WG_DROP_NO_ROUTE: Final[int]
    WG_DROP_NO_KEY: Final[int]
    WG_DROP_ALLOWED_IPS: Final[int]
    WG_DROP_BAD_INNER: Final[int]
    WG_DROP_TOO_BIG: Final[int]
    WG_DROP_NO_ENDPOINT: Final[int]
    WG_DROP_IO: Final[int]
    WG_DROP_HANDSHAKE: Final[int]
    WG_DROP_EVENTS_FULL: Final[int]
    WG_DROP_MAC1: Final[int]
    WG_DROP_COOKIE: Final[int]
    WG_DROP_RATELIMIT: Final[int]
    WG_DROP_STAGED: Final[int]
    WG_DROP_LOOP: Final[int]
    WG_DROP_NREASONS: Final[int]
    WG_REKEY_AFTER_MESSAGES: Final[int]
    WG_REJECT_AFTER_MESSAGES: Final[int]
    WG_AF_NONE: Final[int]
    WG_AF_INET: Final[int]
    WG_AF_INET6: Final[int]
    WG_AEAD_SODIUM: Final[int]
    WG_AEAD_OPENSSL: Final[int]
    WG_AEAD_IPSECMB: Final[int]
    WG_AEAD_NBACKENDS: Final[int]
    WG_REPLAY_BITS: Final[int]
    WG_REPLAY_WINDOW: Final[int]
    WG_PEERS_LIMIT: Final[int]
    WG_KEYPAIRS_LIMIT: Final[int]
    WG_BATCH_TUN: Final[int]
    WG_BATCH_UDP: Final[int]
    WG_BATCH_BUCKETS: Final[int]
    WG_BATCH_STRIDE: Final[int]
    WG_AIP_KEY_LEN: Final[int]
    WG_EV_HANDSHAKE: Final[int]
    WG_EV_NEED_HANDSHAKE: Final[int]
    WG_EV_CONFIRMED: Final[int]
    WG_CTL_NEED_HANDSHAKE: Final[int]
    WG_CTL_CONFIRMED: Final[int]
    WG_MAX_STAGED: Final[int]
    WG_HS_BLAKE2S: Final[int]
    WG_HS_XCHACHA: Final[int]
    WG_HS_UNVERIFIED: Final[int]
    WG_TUN_VNET: Final[int]
    WG_TUN_USO: Final[int]
    WG_OFFLOAD_TUN_VNET: Final[int]
    WG_OFFLOAD_UDP_GSO4: Final[int]
    WG_OFFLOAD_UDP_GSO6: Final[int]
    WG_OFFLOAD_UDP_GRO: Final[int]
    WG_OFFLOAD_TUN_USO: Final[int]
    WG_DELAY_SEND_ROUTED: Final[int]
    WG_DELAY_RECV_OPENED: Final[int]
    WG_VNET_HDR_LEN: Final[int]
    WG_VNET_F_NEEDS_CSUM: Final[int]
    WG_VNET_GSO_NONE: Final[int]
    WG_VNET_GSO_TCPV4: Final[int]
    WG_VNET_GSO_TCPV6: Final[int]
    WG_VNET_GSO_UDP_L4: Final[int]
    WG_VNET_GSO_ECN: Final[int]
    WG_TUN_F_CSUM: Final[int]
    WG_TUN_F_TSO4: Final[int]
    WG_TUN_F_TSO6: Final[int]
    WG_TUN_F_TSO_ECN: Final[int]
    WG_TUN_F_USO4: Final[int]
    WG_TUN_F_USO6: Final[int]
    WG_OFF_ERR_SHORT: Final[int]
    WG_OFF_ERR_HEADER: Final[int]
    WG_OFF_ERR_PACKET: Final[int]
    WG_OFF_ERR_GSO_TYPE: Final[int]
    WG_OFF_ERR_TOO_MANY: Final[int]
    WG_OFF_ERR_TOO_BIG: Final[int]
    WG_GRO_UDP: Final[int]
    def wg_ring_new(self, nslots: int, data_cap: int, /) -> _wg_ring: ...
    def wg_ring_free(self, r: _Pointer, /) -> None: ...
    def wg_ring_slot(self, r: _Pointer, i: int, /) -> _CData: ...
    def wg_aead_init(self, sodium_path: _Pointer, /) -> int: ...
    def wg_aead_name(self, backend: int, /) -> _CData: ...
    def wg_aead_available(self, backend: int, /) -> int: ...
    def wg_aead_select(self, backend: int, /) -> int: ...
    def wg_aead_selected(self, /) -> int: ...
    def wg_aead_seal(
        self,
        backend: int,
        key: _Pointer,
        counter: int,
        buf: _Pointer,
        len: int,
        /,
    ) -> int: ...
    def wg_aead_open(
        self,
        backend: int,
        key: _Pointer,
        counter: int,
        buf: _Pointer,
        len: int,
        tag: _Pointer,
        /,
    ) -> int: ...
    def wg_aead_seal_raw(
        self,
        backend: int,
        key: _Pointer,
        nonce: _Pointer,
        aad: _Pointer,
        aadlen: int,
        buf: _Pointer,
        len: int,
        tag: _Pointer,
        /,
    ) -> int: ...
    def wg_aead_open_raw(
        self,
        backend: int,
        key: _Pointer,
        nonce: _Pointer,
        aad: _Pointer,
        aadlen: int,
        buf: _Pointer,
        len: int,
        tag: _Pointer,
        /,
    ) -> int: ...
    def wg_aead_seal_loop(
        self,
        backend: int,
        key: _Pointer,
        buf: _Pointer,
        len: int,
        n: int,
        /,
    ) -> None: ...
    def wg_replay_reset(self, w: _Pointer, /) -> None: ...
    def wg_replay_check(self, w: _Pointer, counter: int, /) -> int: ...
    def wg_replay_update(self, w: _Pointer, counter: int, /) -> int: ...
    def wg_dp_new(self, max_peers: int, max_keypairs: int, mtu: int, /) -> _CData: ...
    def wg_dp_reserve(self, dp: _Pointer, npeers: int, /) -> int: ...
    def wg_dp_free_retired(self, dp: _Pointer, /) -> None: ...
    def wg_dp_free(self, dp: _Pointer, /) -> None: ...
    def wg_dp_clocks(self, dp: _Pointer, /) -> _wg_peer_clocks: ...
    def wg_dp_drops(self, dp: _Pointer, /) -> _CData: ...
    def wg_dp_batches(self, dp: _Pointer, /) -> _CData: ...
    def wg_dp_roams(self, dp: _Pointer, /) -> _CData: ...
    def wg_dp_set_mtu(self, dp: _Pointer, mtu: int, /) -> None: ...
    def wg_peer_add(self, dp: _Pointer, peer: int, /) -> int: ...
    def wg_peer_remove(self, dp: _Pointer, peer: int, /) -> int: ...
    def wg_peer_set_endpoints(
        self,
        dp: _Pointer,
        peers: _Pointer,
        addrs: _Pointer,
        n: int,
        /,
    ) -> int: ...
    def wg_peer_get_endpoints(
        self,
        dp: _Pointer,
        peers: _Pointer,
        out: _Pointer,
        n: int,
        /,
    ) -> int: ...
    def wg_peer_set_endpoint(self, dp: _Pointer, peer: int, a: _Pointer, /) -> int: ...
    def wg_peer_get_endpoint(self, dp: _Pointer, peer: int, out: _Pointer, /) -> int: ...
    def wg_peer_add_bytes(self, dp: _Pointer, peer: int, tx: int, rx: int, /) -> None: ...
    def wg_keypair_install(
        self,
        dp: _Pointer,
        peer: int,
        local_index: int,
        remote_index: int,
        send_key: _Pointer,
        recv_key: _Pointer,
        created: float,
        initiator: int,
        make_current: int,
        /,
    ) -> int: ...
    def wg_keypair_remove(self, dp: _Pointer, local_index: int, /) -> int: ...
    def wg_keypair_set_counter(self, dp: _Pointer, local_index: int, next_send: int, /) -> int: ...
    def wg_keypair_current(self, dp: _Pointer, peer: int, local_index: _Pointer, /) -> int: ...
    def wg_seal_batch(
        self,
        dp: _Pointer,
        r: _Pointer,
        first: int,
        n: int,
        now: float,
        /,
    ) -> int: ...
    def wg_open_batch(
        self,
        dp: _Pointer,
        r: _Pointer,
        first: int,
        n: int,
        now: float,
        /,
    ) -> int: ...
    def wg_aip_insert(
        self,
        dp: _Pointer,
        family: int,
        addr: _Pointer,
        cidr: int,
        peer: int,
        /,
    ) -> int: ...
    def wg_aip_remove(self, dp: _Pointer, family: int, addr: _Pointer, cidr: int, /) -> int: ...
    def wg_aip_remove_peer(self, dp: _Pointer, peer: int, /) -> None: ...
    def wg_aip_lookup(self, dp: _Pointer, family: int, addr: _Pointer, /) -> int: ...
    def wg_aip_lookup_batch(
        self,
        dp: _Pointer,
        family: int,
        addrs: _Pointer,
        stride: int,
        n: int,
        out: _Pointer,
        /,
    ) -> None: ...
    def wg_aip_list(
        self,
        dp: _Pointer,
        family: int,
        peer: int,
        addrs: _Pointer,
        cidrs: _Pointer,
        max: int,
        /,
    ) -> int: ...
    def wg_aip_nodes(self, dp: _Pointer, family: int, /) -> int: ...
    def wg_aip_insert_many(
        self,
        dp: _Pointer,
        family: _Pointer,
        keys: _Pointer,
        peers: _Pointer,
        n: int,
        prev: _Pointer,
        /,
    ) -> int: ...
    def wg_aip_remove_many(
        self,
        dp: _Pointer,
        family: _Pointer,
        keys: _Pointer,
        peers: _Pointer,
        n: int,
        prev: _Pointer,
        /,
    ) -> int: ...
    def wg_dp_eventfd(self, dp: _Pointer, /) -> int: ...
    def wg_events_pop(
        self,
        dp: _Pointer,
        evs: _Pointer,
        data: _Pointer,
        stride: int,
        max: int,
        /,
    ) -> int: ...
    def wg_ctl_collect(
        self,
        dp: _Pointer,
        peers: _Pointer,
        flags: _Pointer,
        confirmed: _Pointer,
        max: int,
        /,
    ) -> int: ...
    def wg_ctl_pending(self, dp: _Pointer, /) -> int: ...
    def wg_stage_put(self, dp: _Pointer, peer: int, pkt: _Pointer, len: int, /) -> int: ...
    def wg_stage_flush(self, dp: _Pointer, peer: int, now: float, /) -> int: ...
    def wg_stage_drop(self, dp: _Pointer, peer: int, /) -> int: ...
    def wg_stage_count(self, dp: _Pointer, peer: int, /) -> int: ...
    def wg_stage_total(self, dp: _Pointer, /) -> int: ...
    def wg_hs_crypto_init(self, sodium_path: _Pointer, /) -> int: ...
    def wg_blake2s_mac(
        self,
        key: _Pointer,
        keylen: int,
        data: _Pointer,
        len: int,
        out16: _Pointer,
        /,
    ) -> int: ...
    def wg_hs_set_keys(self, dp: _Pointer, mac1_key: _Pointer, cookie_key: _Pointer, /) -> int: ...
    def wg_hs_receive(
        self,
        dp: _Pointer,
        msg: _Pointer,
        len: int,
        src: _Pointer,
        now: float,
        /,
    ) -> int: ...
    def wg_hs_pop(
        self,
        dp: _Pointer,
        evs: _Pointer,
        data: _Pointer,
        stride: int,
        max: int,
        /,
    ) -> int: ...
    def wg_hs_queued(self, dp: _Pointer, /) -> int: ...
    def wg_hs_under_load(self, dp: _Pointer, now: float, /) -> int: ...
    def wg_hs_force_load(self, dp: _Pointer, until: float, /) -> None: ...
    def wg_hs_ratelimit(self, dp: _Pointer, src: _Pointer, now: float, /) -> int: ...
    def wg_hs_cookie_reply(
        self,
        dp: _Pointer,
        msg: _Pointer,
        len: int,
        src: _Pointer,
        now: float,
        out64: _Pointer,
        /,
    ) -> int: ...
    def wg_dp_set_fds(self, dp: _Pointer, tun_fd: int, udp4_fd: int, udp6_fd: int, /) -> None: ...
    def wg_run_send(self, dp: _Pointer, /) -> int: ...
    def wg_run_receive(self, dp: _Pointer, udp_fd: int, /) -> int: ...
    def wg_dp_stop(self, dp: _Pointer, /) -> None: ...
    def wg_dp_resume(self, dp: _Pointer, /) -> None: ...
    def wg_dp_set_offloads(
        self,
        dp: _Pointer,
        tun_vnet: int,
        udp_gso: int,
        udp_gro: int,
        /,
    ) -> None: ...
    def wg_dp_offloads(self, dp: _Pointer, /) -> int: ...
    def wg_dp_test_delay(self, dp: _Pointer, where: int, usec: int, /) -> None: ...
    def wg_send_packet(
        self,
        dp: _Pointer,
        peer: int,
        pkt: _Pointer,
        len: int,
        now: float,
        /,
    ) -> int: ...
    def wg_now(self, /) -> float: ...
    def wg_vnet_segment(
        self,
        pkt: _Pointer,
        len: int,
        out: _Pointer,
        out_cap: int,
        out_len: _Pointer,
        max_out: int,
        /,
    ) -> int: ...
    def wg_vnet_segment_from(
        self,
        pkt: _Pointer,
        len: int,
        first: int,
        out: _Pointer,
        out_cap: int,
        out_len: _Pointer,
        max_out: int,
        nseg: _Pointer,
        /,
    ) -> int: ...
    def wg_gro_coalesce(
        self,
        pkts: _Pointer,
        lens: _Pointer,
        n: int,
        scratch: _Pointer,
        scratch_cap: int,
        out_ptrs: _Pointer,
        out_lens: _Pointer,
        max_out: int,
        flags: int,
        /,
    ) -> int: ...
    def wg_inet_csum(self, p: _Pointer, len: int, /) -> int: ...


lib: _Lib
