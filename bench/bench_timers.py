"""One timer evaluation over 100,000 (and 1,000,000) peers.

    python3 -m pytest bench/bench_timers.py
    python3 bench/bench_timers.py
"""

from __future__ import annotations

import time

import numpy as np

from wgfast.timers import Clocks, TimerState, evaluate

N_PEERS = 100_000


def _world(n: int = N_PEERS, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = Clocks.zeros(n)
    s = TimerState(n)
    now = 10_000.0
    c.active[:] = 1
    c.last_auth_sent[:] = now - rng.uniform(0, 200, n)
    c.last_auth_recv[:] = now - rng.uniform(0, 200, n)
    c.pending_data_recv[:] = np.where(rng.random(n) < 0.3, now - rng.uniform(0, 20, n), 0)
    c.pending_data_sent[:] = np.where(rng.random(n) < 0.3, now - rng.uniform(0, 20, n), 0)
    s.keypair_created[:] = now - rng.uniform(0, 200, n)
    s.keypair_initiator[:] = rng.random(n) < 0.5
    s.derived_at[:] = s.keypair_created
    s.keys_live[:] = True
    s.persistent_interval[:] = np.where(rng.random(n) < 0.2, 25.0, 0.0)
    return c, s, now, rng


def test_evaluate_100k(benchmark):
    c, s, now, rng = _world()
    benchmark(lambda: evaluate(c, s, now, rng))


def test_evaluate_1m(benchmark):
    # The tables grow without limit: one evaluation over a million peers.
    c, s, now, rng = _world(1_000_000)
    benchmark.pedantic(lambda: evaluate(c, s, now, rng), rounds=5, iterations=1)


def test_numpy_baseline_100k(benchmark):
    # Baseline in the same run: one elementwise compare+reduce over the same array size.
    c, _, now, _ = _world()
    benchmark(lambda: bool((c.last_auth_sent > now).any()))


if __name__ == "__main__":
    c, s, now, rng = _world()
    evaluate(c, s, now, rng)
    k = 200
    t = time.perf_counter()
    for i in range(k):
        evaluate(c, s, now + i * 0.01, rng)
    dt = (time.perf_counter() - t) / k
    t = time.perf_counter()
    for _ in range(k):
        bool((c.last_auth_sent > now).any())
    base = (time.perf_counter() - t) / k
    print(f"evaluate() over {N_PEERS} peers: {dt * 1e3:.2f} ms "
          f"({dt / N_PEERS * 1e9:.1f} ns/peer; {dt / base:.0f}x one numpy compare+any)")
