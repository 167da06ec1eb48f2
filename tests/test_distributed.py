"""Data-parallel training: simulated ranks equal single-process training on the combined batch;
real MPI ranks agree bitwise with each other and with the simulation; a dead rank fails the job.

Tolerances: float64 models within 1e-12 of single-process training (only the order of sums
differs); float32 within 2e-5 absolute after 8 steps."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp
from fastbp import BatchNorm, Dense, Dropout, Model
from fastbp.distributed import (
    CommError,
    default_threads,
    launched_ranks,
    placement_note,
    rank_threads,
    shard,
    simulate,
    usable_cpus,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ARCH = [Dense(8, bias=False), BatchNorm("tanh"), Dropout(0.3), Dense(7, "relu"), Dense(3)]
OPTS = {"sgd": ("sgd", 0.05), "momentum": (fastbp.SGD(momentum=0.9), 0.05), "adam": ("adam", None)}


@pytest.fixture
def xy(rng):
    return rng.standard_normal((250, 6)), rng.integers(0, 3, 250)


@pytest.mark.parametrize("opt", sorted(OPTS))
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_simulated_ranks_equal_single_process_on_the_combined_batch(xy, opt, ranks):
    X, y = xy
    o, lr = OPTS[opt]
    ref = Model(ARCH, dtype="float64", seed=1)
    ref.fit(X, y, epochs=2, batch_size=40, optimizer=o, lr=lr)

    def run(comm):
        m = Model(ARCH, dtype="float64", seed=1)
        h = m.fit(X, y, epochs=2, batch_size=40, optimizer=o, lr=lr, distributed=comm)
        return m.params.copy(), m.layers[1].running_var.copy(), h["loss"], m.step_count
    res = simulate(ranks, run)
    for params, rv, loss, steps in res:
        np.testing.assert_array_equal(params, res[0][0])          # every rank: the same bits
        np.testing.assert_allclose(params, ref.params, rtol=0, atol=1e-12)
        np.testing.assert_allclose(rv, ref.layers[1].running_var, rtol=0, atol=1e-12)
        np.testing.assert_allclose(loss, ref.history["loss"], rtol=1e-12)
        assert steps == ref.step_count


def test_shards_and_thread_rule():
    assert [shard(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert sum(shard(128, 5, r)[1] for r in range(5)) == 128
    assert default_threads(1) == usable_cpus() and default_threads(10 ** 6) == 1
    assert launched_ranks() is None or launched_ranks() >= 1


def test_rank_threads_follow_the_launchers_binding():
    every = set(range(16))
    # Open MPI's default for 2 ranks: each bound to one core -> 1 thread (the warning says the fix)
    assert rank_threads({0}, [[0], [1]]) == 1
    # no binding (--bind-to none, MPICH's default): one shared mask -> an even share
    assert rank_threads(every, [sorted(every)] * 2) == 8
    assert rank_threads(every, [sorted(every)] * 4) == 4
    assert rank_threads(every, [sorted(every)] * 32) == 1
    # --map-by slot:PE=8: disjoint masks of 8 -> 8 each (an even share of the mask would give 4)
    assert rank_threads(set(range(8)), [list(range(8)), list(range(8, 16))]) == 8
    # Open MPI binds more than 2 ranks to the socket: 4 ranks on one 16-CPU mask -> 4 each
    assert rank_threads(every, [sorted(every)] * 4, cpus=None) == 4
    # a container's quota of 6 CPUs is shared by the machine's ranks
    assert rank_threads(every, [sorted(every)] * 2, cpus=6) == 3


def test_placement_note_says_how_ranks_run_and_warns_with_the_fix():
    info, warn = placement_note("node1", 2, [8, 8], [list(range(16))] * 2, 16)
    assert info.startswith("fastbp: 2 ranks on node1: 8 threads each") and warn is None
    info, warn = placement_note("node1", 2, [1, 1], [[0], [1]], 16)
    assert "1 threads each" not in info and "1 thread" in info
    assert warn.startswith("fastbp: warning: the launcher bound the ranks on node1 to 2 of its 16 CPUs")
    assert "--bind-to none" in warn and "--map-by slot:PE=8" in warn and "-bind-to core:8" in warn
    assert "\n" not in info + warn


def test_errors_stop_every_simulated_rank_quickly(xy):
    X, y = xy

    def run(comm):
        m = Model(ARCH, seed=1)
        if comm.rank == 1:
            raise RuntimeError("rank 1 broke")
        m.fit(X, y, epochs=50, batch_size=40, distributed=comm)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="rank 1 broke"):
        simulate(2, run, timeout=30)
    assert time.perf_counter() - t0 < 20
    with pytest.raises(TypeError, match="distributed"):
        Model(ARCH).fit(X, y, distributed="mpi")
    with pytest.raises(ValueError, match="batch_size"):
        simulate(3, lambda c: Model(ARCH).fit(X, y, batch_size=4, distributed=c))
    assert CommError


def test_resume_with_a_different_number_of_ranks(xy, tmp_path):
    X, y = xy
    ck = str(tmp_path / "ck.npz")
    simulate(2, lambda c: Model(ARCH, dtype="float64", seed=1).fit(X, y, epochs=1, batch_size=40, optimizer="adam",
                                                                    checkpoint=ck, distributed=c))
    res = simulate(3, lambda c: (lambda m: (m.fit(X, y, epochs=2, batch_size=40, optimizer="adam", checkpoint=ck,
                                                  distributed=c), m.params.copy())[1])(
        Model(ARCH, dtype="float64", seed=1)))
    ref = Model(ARCH, dtype="float64", seed=1)
    ref.fit(X, y, epochs=2, batch_size=40, optimizer="adam")
    np.testing.assert_allclose(res[0], ref.params, atol=1e-12)
    assert Model.load(ck).epochs_done == 2


def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py not installed: pip install 'fastbp[mpi]' (CI installs it)")
    own = os.path.join(os.path.dirname(sys.executable), "mpiexec")    # PyPI mpich's, matching its mpi4py;
    exe = own if os.path.exists(own) else shutil.which("mpiexec")      # else the system's (Open MPI in CI)
    if not exe:
        pytest.skip("no mpiexec next to mpi4py (pip install mpich)")
    return exe


def _launcher_options():
    """Hydra (MPICH): loopback only.  Open MPI: more ranks than cores, and as root (CI) allowed."""
    version = subprocess.run([_mpiexec(), "--version"], capture_output=True, text=True).stdout.lower()
    if "hydra" in version:
        return ["-iface", "lo"]
    if "open mpi" in version or "openrte" in version:
        return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return []


def _launch(n, out, *extra, timeout=240):
    cmd = [_mpiexec(), "-n", str(n)] + _launcher_options()
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    from fastbp.kernels import blas_backend
    backend = blas_backend()     # the ranks multiply with this process's GEMM (compared bitwise below): under a
    if backend != "numpy":       # launcher with no remembered choice they would take BLIS instead of timing
        env["FASTBP_BLAS"] = backend
    t0 = time.perf_counter()
    r = subprocess.run(cmd + [sys.executable, os.path.join(HERE, "mpi_worker.py"), str(out), *extra],
                       capture_output=True, text=True, timeout=timeout, env=env)
    return r, time.perf_counter() - t0


@pytest.mark.parametrize("ranks", [2, 4])
def test_mpi_ranks_agree_bitwise_and_match_single_process(tmp_path, ranks):
    r, _ = _launch(ranks, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count(f"fastbp: {ranks} ranks on ") == 1, r.stderr[-3000:]   # said once, by local rank 0
    params = [np.load(tmp_path / f"rank{k}.npy") for k in range(ranks)]
    for p in params[1:]:
        np.testing.assert_array_equal(p, params[0])
    sys.path.insert(0, HERE)
    from dist_case import train
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        single = train(None)
    np.testing.assert_allclose(params[0], single, rtol=0, atol=2e-6)
    if ranks == 2:   # the in-process simulation with the same thread count gives the same bits
        from threadpoolctl import threadpool_limits
        threads = fastbp.get_num_threads()
        try:   # like the ranks: 1 numba thread, and numpy's BLAS (pure-Python mode's GEMM) on 1 thread
            fastbp.set_num_threads(1)
            with threadpool_limits(1):
                sim = simulate(2, lambda c: train(c))
        finally:
            fastbp.set_num_threads(threads)
        np.testing.assert_array_equal(sim[0], params[0])


@pytest.mark.parametrize("mode", ["crash", "kill", "raise"])
def test_a_failing_rank_fails_the_job_within_a_bounded_time(tmp_path, mode):
    os.environ["FASTBP_TEST_TIMEOUT"] = "10"
    try:
        r, secs = _launch(2, tmp_path, mode, timeout=120)
    finally:
        del os.environ["FASTBP_TEST_TIMEOUT"]
    assert r.returncode != 0 and secs < 100, (r.returncode, secs, r.stderr[-2000:])
    assert not (tmp_path / "rank0.npy").exists(), "rank 0 must not finish as if nothing happened"
    if mode == "raise":
        assert "fastbp: rank 1 of 2 failed: RuntimeError: rank 1 raised" in r.stderr, r.stderr[-2000:]


def test_a_rank_with_another_seed_is_refused_under_mpiexec(tmp_path):
    """Under a real launcher: the job fails, and the refusal names the field and the rank."""
    r, secs = _launch(2, tmp_path, "seed", timeout=120)
    assert r.returncode != 0 and secs < 100, (r.returncode, r.stderr[-2000:])
    assert "different settings: seed (rank 1 differs from rank 0" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "rank0.npy").exists()


@pytest.mark.heavy
def test_the_failing_rank_says_why_in_20_of_20_runs(tmp_path):
    """The reason of a rank's exception reaches the user before the abort, every time (before: in 0-1
    of 3 runs, the abort raced the traceback)."""
    seen = 0
    for k in range(20):
        (tmp_path / str(k)).mkdir()
        r, _ = _launch(2, tmp_path / str(k), "raise", timeout=120)
        seen += "fastbp: rank 1 of 2 failed: RuntimeError: rank 1 raised" in r.stderr
    assert seen == 20, f"the failing rank's reason was printed in {seen} of 20 runs"


def test_local_sgd_sync_every_keeps_ranks_identical_and_trains(xy):
    X, y = xy
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)

    def run(comm):
        m = Model([Dense(16, "tanh"), Dropout(0.1), Dense(2)], seed=1)
        h = m.fit(X, y, epochs=15, batch_size=40, lr=0.2, distributed=comm, sync_every=4)
        return m.params.copy(), h["accuracy"][-1], m.evaluate(X, y)["accuracy"]
    res = simulate(2, run)
    np.testing.assert_array_equal(res[0][0], res[1][0])     # averaged at every epoch end: same bits
    assert res[0][1] == res[1][1] and res[0][2] > 0.9, res[0][1:]
    with pytest.raises(ValueError, match="sync_every"):
        Model(ARCH).fit(X, y, sync_every=2)
    with pytest.raises(ValueError, match="sync_every"):
        simulate(2, lambda c: Model(ARCH).fit(X, y, distributed=c, sync_every=0))


@pytest.mark.parametrize("case, field", [("fit seed", "seed"), ("model seed", "model seed"),
                                         ("architecture", "layers"), ("rows", "rows"), ("data", "data checksum"),
                                         ("optimizer", "optimizer")])
def test_ranks_with_different_settings_are_refused_naming_the_field(xy, case, field):
    """A setting that differs on one rank is refused on every rank, naming the field and the rank, before
    any step (before: a different seed on one rank trained silently, 75-84% off rank 0's result)."""
    X, y = xy
    errors = {}

    def run(comm):
        odd = comm.rank == 1
        layers = [Dense(16, "tanh"), Dense(3)] if case == "architecture" and odd else ARCH
        m = Model(layers, seed=5 if case == "model seed" and odd else 0)
        Xr = X[:-8] if case == "rows" and odd else X
        if case == "data" and odd:
            Xr = X.copy()
            Xr[0, 0] += 1.0
        kw = {"optimizer": fastbp.Adam() if case == "optimizer" and odd else "sgd"}
        try:
            m.fit(Xr, y[:Xr.shape[0]], epochs=1, batch_size=40, seed=7 if case == "fit seed" and odd else 0,
                  distributed=comm, **kw)
        except ValueError as e:
            errors[comm.rank] = str(e)
            raise
        return m.step_count
    with pytest.raises(ValueError, match=rf"different settings: (.*; )?{field} \(rank 1 differs from rank 0"):
        simulate(2, run)
    assert errors, "no rank refused"
    for msg in errors.values():
        assert f"{field} (rank 1 differs from rank 0" in msg and "same script" in msg


def test_nan_in_one_ranks_data_is_reported_as_such_by_that_rank(xy, capsys):
    X, y = xy
    bad = X.copy()
    bad[5, 2] = np.nan

    def run(comm):
        Model(ARCH, seed=0).fit(bad if comm.rank == 1 else X, y, epochs=1, batch_size=40, distributed=comm)
    with pytest.raises(ValueError, match="X: contains NaN or inf"):
        simulate(2, run, timeout=20)
    err = capsys.readouterr().err
    assert "fastbp: rank 1 of 2 failed: ValueError: X: contains NaN or inf" in err, err


def test_the_documented_last_batch_rule(rng):
    """README and fit's docstring: a last batch of fewer than ranks x minimum rows is merged: 201 rows at
    batch 40 take 6 steps in one process and 5 on 2 ranks."""
    X = rng.random((201, 5), dtype=np.float32)
    y = rng.integers(0, 3, 201)

    def steps(comm=None):
        m = Model([Dense(4, "tanh"), Dense(3)])
        m.fit(X, y, epochs=1, batch_size=40, distributed=comm)
        return m.step_count
    assert steps() == 6
    assert simulate(2, steps) == [5, 5]
