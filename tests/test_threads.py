"""The adaptive thread governor (fastbp._threads.Governor) and who decides the thread count."""
import types

import numba
import numpy as np
import pytest

import fastbp
import fastbp._threads as T
import fastbp.train as TR
from fastbp import Dense, Dropout, Model


@pytest.fixture
def pool(monkeypatch):
    """An 8-thread pool that records every change (the governor's logic without the machine)."""
    state = {"n": 8, "calls": []}

    def set_n(n):
        state["n"] = n
        state["calls"].append(n)
    monkeypatch.setattr(T, "numba", types.SimpleNamespace(get_num_threads=lambda: state["n"], set_num_threads=set_n))
    return state


def test_governor_leaves_a_process_that_gets_its_cpus_alone(pool, monkeypatch):
    monkeypatch.setattr(T, "_runnable_elsewhere", lambda: 0)
    g = T.Governor(cpus=8)
    for rate in [7.9, 6.0, 7.5, 5.7, 8.0] * 20:     # >= 70% of 8 CPUs: noise, not contention
        g._decide(rate)
    assert pool["calls"] == [] and g.changes == []


def test_governor_drops_to_the_cpus_it_gets_then_probes_back_up(pool, monkeypatch):
    others = {"n": 5}
    monkeypatch.setattr(T, "_runnable_elsewhere", lambda: others["n"])
    g = T.Governor(cpus=8)
    g._decide(3.0)
    assert pool["calls"] == []                      # one starved window is not enough
    g._decide(7.5)
    g._decide(3.0)
    assert pool["calls"] == []                      # nor two that are not in a row
    g._decide(3.1)
    assert pool["calls"] == [3]                     # round(CPU time per wall second)
    for _ in range(5):
        g._decide(3.0)                              # 3 threads, 3 CPUs: fine; 8 - 5 others = 3 free: no probe
    assert pool["calls"] == [3]
    others["n"] = 2                                 # the machine frees up: probe to 8 - 2 = 6
    g._decide(3.0)
    assert pool["calls"] == [3, 6] and g.probing
    g._decide(3.0)                                  # the probe got only 3 CPUs: straight back, backoff 2
    assert pool["calls"] == [3, 6, 3] and g.backoff == 2
    g._decide(3.0)
    assert pool["calls"] == [3, 6, 3]               # waits two windows before the next probe
    g._decide(3.0)
    assert pool["calls"] == [3, 6, 3, 6]
    g._decide(5.9)                                  # this probe got its CPUs: kept, backoff reset
    assert pool["calls"] == [3, 6, 3, 6] and not g.probing and g.backoff == 1
    others["n"] = 0
    g._decide(5.9)
    assert pool["calls"][-1] == 8                   # never above the count the fit started with
    others["n"] = None                              # no /proc: no probe
    g.close()
    assert pool["n"] == 8


def test_governor_skips_windows_in_which_numba_compiled(pool, monkeypatch):
    compiled = [0.0]
    g = T.Governor(cpus=8, window=0.0, compiling=compiled)
    for _ in range(3):
        with g:
            compiled[0] += 1.0            # a compile inside the step: one thread busy, 7 idle
    assert g.windows == 0
    with g:
        pass
    assert g.windows == 1


def test_governor_never_goes_below_one_thread(pool, monkeypatch):
    monkeypatch.setattr(T, "_runnable_elsewhere", lambda: 99)
    g = T.Governor(cpus=8)
    for _ in range(10):
        g._decide(0.01)
    assert pool["n"] == 1 and min(pool["calls"]) == 1


def test_runnable_elsewhere_reads_the_machine():
    n = T._runnable_elsewhere()
    assert n is None or (isinstance(n, int) and n >= 0)


def test_governor_is_on_by_default_and_an_explicit_count_is_its_ceiling(monkeypatch):
    monkeypatch.setitem(T._state, "explicit", False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv(T.ADAPTIVE_ENV, raising=False)
    assert T.adaptive()
    monkeypatch.setenv(T.ADAPTIVE_ENV, "0")
    assert not T.adaptive()
    monkeypatch.setenv(T.ADAPTIVE_ENV, "1")
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    assert T.adaptive()                             # the user's pool size: the governor's ceiling
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    n = fastbp.get_num_threads()
    with T.pinned(1):                               # sklearn's n_threads, the bench's scaling table
        assert fastbp.get_num_threads() == 1 and T.adaptive()
    assert fastbp.get_num_threads() == n and T.adaptive()
    fastbp.set_num_threads(n)                       # an explicit count is a ceiling, not a pin
    assert T.adaptive()


def test_fit_uses_the_governor_only_when_adaptive(monkeypatch, rng):
    made = []

    class Recording(T.Governor):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(TR, "Governor", Recording)
    X = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    m = Model([Dense(8, "tanh"), Dense(3)], seed=0)
    monkeypatch.setitem(T._state, "explicit", False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv(T.ADAPTIVE_ENV, raising=False)
    with T.pinned(2):
        monkeypatch.setitem(T._state, "explicit", False)
        m.fit(X, y, epochs=1, batch_size=16)
        assert len(made) == 1 and m.thread_changes == []
        monkeypatch.setitem(T._state, "explicit", True)
        m.fit(X, y, epochs=1, batch_size=16)
        assert len(made) == 2 and made[-1].nmax == 2    # the user's count: the governor's ceiling
        monkeypatch.setenv(T.ADAPTIVE_ENV, "0")
        m.fit(X, y, epochs=1, batch_size=16)
        assert len(made) == 2                       # FASTBP_ADAPTIVE_THREADS=0 pins the count


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs a pool of 2 threads")
def test_thread_changes_during_fit_keep_the_weights_bitwise(monkeypatch, rng):
    """The chunk count is fixed for the fit: 1 or 2 threads running the chunks give the same bits
    (the weights' kernels write disjoint columns; the loss adds per-chunk partials)."""
    class Flipping(T.Governor):
        def __init__(self, **kw):
            super().__init__(window=0.0, **kw)

        def _decide(self, rate):           # every step: 1, 2, 1, 2 ... threads
            self.windows += 1
            self._set(1 if self.n == 2 else 2)
    X = rng.standard_normal((200, 12)).astype(np.float32)
    y = rng.integers(0, 4, 200)

    def train():
        m = Model([Dense(32, "relu"), Dropout(0.2), Dense(32, "tanh"), Dense(4)], seed=3)
        m.fit(X, y, epochs=2, batch_size=20, optimizer="adam", seed=1)
        return m
    monkeypatch.setitem(T._state, "explicit", False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv(T.ADAPTIVE_ENV, raising=False)
    with T.pinned(2):
        monkeypatch.setitem(T._state, "explicit", False)
        monkeypatch.setenv(T.ADAPTIVE_ENV, "0")
        still = train()
        monkeypatch.setenv(T.ADAPTIVE_ENV, "1")
        monkeypatch.setattr(TR, "Governor", Flipping)
        flipped = train()
        assert len(flipped.thread_changes) >= 18     # it changed the count at every step (not while compiling)
        assert fastbp.get_num_threads() == 2          # and the fit put the count back
    np.testing.assert_array_equal(flipped.params, still.params)
    assert flipped.history["loss"] == still.history["loss"]     # the loss sums per-chunk partials
