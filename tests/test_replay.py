"""csrc/replay.c: the RFC 6479 window against the Linux kernel's counter self-test table
(drivers/net/wireguard/selftest/counter.c, cases restated as facts) and a naive model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wgfast.dataplane import ffi, lib

WINDOW = lib.WG_REPLAY_WINDOW
REJECT = 2**64 - 2**13 - 1
T_LIM = WINDOW + 1


def new_window():
    w = ffi.new("wg_replay *")
    lib.wg_replay_reset(w)
    return w


def accept(w, n: int) -> bool:
    """Check then update, the way the receive path uses the pair."""
    if n >= 2**64:
        return False
    pre = lib.wg_replay_check(w, n)
    got = bool(lib.wg_replay_update(w, n))
    assert not (got and not pre), f"check said replay but update accepted {n}"
    return got


def test_constants() -> None:
    assert lib.WG_REPLAY_BITS == 8192 and WINDOW == 8192 - 64
    assert lib.WG_REJECT_AFTER_MESSAGES == REJECT


KERNEL_TABLE = [
    (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
    (T_LIM, True), (T_LIM - 1, True), (T_LIM - 1, False), (T_LIM - 2, True), (2, True),
    (2, False), (T_LIM + 16, True), (3, False), (T_LIM + 16, False), (T_LIM * 4, True),
    (T_LIM * 4 - (T_LIM - 1), True), (10, False), (T_LIM * 4 - T_LIM, False),
    (T_LIM * 4 - (T_LIM + 1), False), (T_LIM * 4 - (T_LIM - 2), True),
    (T_LIM * 4 + 1 - T_LIM, False), (0, False), (REJECT, False), (REJECT - 1, True),
    (REJECT, False), (REJECT - 1, False), (REJECT - 2, True), (REJECT + 1, False),
    (REJECT + 2, False), (REJECT - 2, False), (REJECT - 3, True), (0, False),
]


def test_kernel_table() -> None:
    w = new_window()
    for number, (n, expected) in enumerate(KERNEL_TABLE, 1):
        assert accept(w, n) is expected, f"case {number}: counter {n}"


def test_kernel_bulk_forward_then_zero() -> None:
    w = new_window()
    for i in range(1, WINDOW + 1):
        assert accept(w, i)
    assert accept(w, 0)
    assert not accept(w, 0)


def test_kernel_bulk_forward_from_two() -> None:
    w = new_window()
    for i in range(2, WINDOW + 2):
        assert accept(w, i)
    assert accept(w, 1)
    assert not accept(w, 0)     # one past the window


def test_kernel_bulk_backward() -> None:
    w = new_window()
    for i in range(WINDOW, -1, -1):
        assert accept(w, i)
    w = new_window()
    for i in range(WINDOW + 1, 0, -1):
        assert accept(w, i)
    assert not accept(w, 0)


def test_kernel_bulk_backward_then_top() -> None:
    w = new_window()
    for i in range(WINDOW, 0, -1):
        assert accept(w, i)
    assert accept(w, WINDOW + 1)
    assert not accept(w, 0)
    w = new_window()
    for i in range(WINDOW, 0, -1):
        assert accept(w, i)
    assert accept(w, 0)
    assert accept(w, WINDOW + 1)


def test_window_edges() -> None:
    w = new_window()
    top = 100_000
    assert accept(w, top)
    assert w.greatest == top + 1
    assert lib.wg_replay_check(w, top - WINDOW) == 1        # the oldest still inside
    assert lib.wg_replay_check(w, top - WINDOW - 1) == 0    # just behind
    assert accept(w, top - WINDOW)
    assert not accept(w, top - WINDOW)
    assert not accept(w, top - WINDOW - 1)
    # a jump of more than the whole bitmap clears everything behind it
    assert accept(w, top + 10 * 8192)
    assert not accept(w, top)


def test_check_does_not_record() -> None:
    w = new_window()
    assert lib.wg_replay_check(w, 5) == 1
    assert lib.wg_replay_check(w, 5) == 1
    assert w.greatest == 0
    assert lib.wg_replay_update(w, 5) == 1
    assert lib.wg_replay_check(w, 5) == 0


class Naive:
    """A set and the window rule: accept iff unseen, below REJECT and no more than WINDOW
    behind the highest accepted counter."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest: int | None = None

    def accept(self, n: int) -> bool:
        if n >= REJECT or n in self.seen:
            return False
        if self.highest is not None and n + WINDOW < self.highest:
            return False
        self.seen.add(n)
        self.highest = n if self.highest is None else max(self.highest, n)
        return True


@settings(max_examples=300)
@given(
    st.integers(0, 2**40),
    st.lists(
        st.one_of(
            st.integers(-9000, 9000),
            st.integers(-70, 70),
            st.sampled_from([-WINDOW - 1, -WINDOW, -WINDOW + 1, 8192, 8193, 64, -64]),
        ),
        max_size=200,
    ),
)
def test_matches_naive_model(base: int, deltas: list[int]) -> None:
    w, model = new_window(), Naive()
    for d in deltas:
        n = max(0, base + d)
        base = max(base, n) if d > 0 and d % 3 == 0 else base
        assert accept(w, n) is model.accept(n), n


@settings(max_examples=100)
@given(st.lists(st.integers(REJECT - 20000, REJECT + 5), max_size=100))
def test_matches_naive_model_near_reject(counters: list[int]) -> None:
    w, model = new_window(), Naive()
    for n in counters:
        assert accept(w, n) is model.accept(n), n
