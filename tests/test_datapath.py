"""wgfast.datapath: the native module loads and its handles behave."""

from wgfast.datapath import ADDR_DTYPE, ffi, lib


def test_addr_layout_matches_c() -> None:
    assert ffi.sizeof("wg_addr") == ADDR_DTYPE.itemsize == 44


def test_dp_lifecycle() -> None:
    dp = lib.wg_dp_new(8, 32, 1420)
    assert dp != ffi.NULL
    clocks = lib.wg_dp_clocks(dp)
    assert clocks.max_peers == 8
    assert lib.wg_peer_add(dp, 3) == 0
    assert clocks.active[3] == 1
    assert lib.wg_peer_add(dp, 8) < 0
    lib.wg_dp_free(dp)


def test_monotonic_clock_is_pythons() -> None:
    import time

    a = time.monotonic()
    b = lib.wg_now()
    c = time.monotonic()
    assert a <= b <= c
