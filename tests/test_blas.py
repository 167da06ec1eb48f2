"""Every GEMM backend, in its own process (the backend is chosen at import), against numpy for
every transpose combination, slices and dimensions of size 1."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.jit

SCRIPT = r"""
import itertools, numpy as np
from numba import njit
from fastbp.kernels import _blas
from fastbp.kernels._blas import gemm

@njit
def run(C, A, B, ta, tb, al, be):
    gemm(C, A, B, ta, tb, al, be)

rng = np.random.default_rng(0)
worst = {np.float32: 0.0, np.float64: 0.0}
for dt in (np.float32, np.float64):
    for m, n, k in itertools.product((1, 3, 17), (1, 2, 33), (1, 5, 40)):
        for ta, tb in itertools.product((False, True), repeat=2):
            A = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
            B = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
            big = rng.standard_normal((m + 2, n + 3)).astype(dt)
            before = big.copy()
            C = big[1:m + 1, 2:n + 2]            # a strided block of a larger array
            C0 = C.astype(np.float64)
            run(C, A, B, ta, tb, 0.5, 2.0)
            ref = 0.5 * ((A.T if ta else A).astype(np.float64) @ (B.T if tb else B)) + 2.0 * C0
            err = np.abs(C - ref).max() / max(1.0, np.abs(ref).max())
            worst[dt] = max(worst[dt], err)
            outside = np.ones(big.shape, bool)
            outside[1:m + 1, 2:n + 2] = False
            assert np.array_equal(big[outside], before[outside]), "wrote outside C"
print(_blas.BACKEND, worst[np.float32], worst[np.float64])
"""


def _available():
    from fastbp.kernels._blas import _find_mkl, _find_onednn
    out = ["openblas"] + (["mkl"] if _find_mkl() else []) + (["onednn"] if _find_onednn() else [])
    try:
        import blis  # noqa: F401

        from fastbp.kernels._blas import _cpu_has_avx512
        if _cpu_has_avx512():
            out.append("blis")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", _available())
def test_gemm_backend_matches_numpy(backend):
    env = dict(os.environ, FASTBP_BLAS=backend)
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    name, worst32, worst64 = r.stdout.split()
    assert name == backend
    assert float(worst64) < 1e-13
    assert float(worst32) < 1e-5


STRESS = r"""
import numpy as np, fastbp.kernels as K
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64, np.float32):
    for N, D, F in ((2048, 784, 512), (7, 3, 5), (512, 512, 10), (64, 2000, 3000), (3000, 40, 2000)):
        x = rng.random((N, D)).astype(dt); W = (rng.random((D, F)) * 0.01).astype(dt)
        b = np.zeros(F, dt); o = np.empty((N, F), dt)
        K.dense_forward(o, x, W, b, "tanh", nthreads=2)
        dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty_like(b)
        K.dense_backward(dx, dW, db, rng.random((N, F)).astype(dt), x, W, o, "tanh", nthreads=2)
        assert np.isfinite(dW).all()
print("ok")
"""


@pytest.mark.parametrize("backend", _available())
def test_concurrent_gemms_of_growing_sizes_and_both_dtypes_do_not_abort(backend):
    # BLIS aborts the whole process if a shared packing pool is resized while another thread
    # holds a block; run in a subprocess so such an abort is a test failure, not a dead pytest.
    env = dict(os.environ, FASTBP_BLAS=backend)
    r = subprocess.run([sys.executable, "-c", STRESS], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]



BINDS_LATE = r"""
import numpy as np, scipy.linalg
from threadpoolctl import threadpool_info
def scipy_blas():
    return [i["num_threads"] for i in threadpool_info() if "scipy.libs" in i["filepath"]]
before = scipy_blas()
import fastbp, fastbp.kernels as K
from fastbp import Dense, Model
Model([Dense(3)], input_dim=2)
at_import = scipy_blas()
x = np.random.rand(30, 20).astype(np.float32); W = np.random.rand(20, 10).astype(np.float32)
o = np.empty((30, 10), np.float32)
K.dense_forward(o, x, W, None, "identity")
print(K.blas_backend(), before == at_import, scipy_blas())
"""


def test_openblas_backend_sets_scipys_copy_to_one_thread_only_when_it_binds():
    env = dict(os.environ, FASTBP_BLAS="openblas")
    r = subprocess.run([sys.executable, "-c", BINDS_LATE], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["openblas", "True", "[1]"]


CHOICE = r"""
import json, fastbp.kernels as K
from fastbp.kernels import _blas
pending = K.blas_choice_pending()       # asked before binding: will this process time the candidates?
info = K.blas_info()
print(json.dumps({"backend": info["backend"], "choice": info["choice"], "pending": pending}))
"""


def _auto(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTBP_BLAS", "NUMBA_CACHE_DIR")}
    env.update({"XDG_CACHE_HOME": str(tmp_path), "FASTBP_BLAS": "auto", **extra})
    r = subprocess.run([sys.executable, "-c", CHOICE], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(_available()) < 2, reason="auto times only when there are several candidates")
def test_auto_times_the_candidates_once_per_machine_and_remembers(tmp_path):
    import json
    first = _auto(tmp_path)
    assert first.pop("pending") is True          # announced beforehand (fastbp train says so)
    assert first["choice"]["how"] == "measured" and set(first["choice"]["ms"]) == set(_available())
    rel = first["choice"]["relative"]
    # timed as a step's GEMMs on numba's threads (one figure per batch size), in a child process
    assert "step's GEMMs" in first["choice"]["timing"]
    assert all(len(v) == 3 and all(t > 0 for t in v) for v in first["choice"]["ms"].values())
    assert rel[first["backend"]] == 1.0 and min(rel.values()) == 1.0      # the fastest one
    path = tmp_path / "fastbp" / "blas-choice.json"
    assert list(json.loads(path.read_text()).values()) == [first["backend"]]
    second = _auto(tmp_path)
    assert second.pop("pending") is False        # remembered: nothing to announce
    assert second == {"backend": first["backend"], "choice": dict(how="remembered", file=str(path),
                                                                 backend=first["backend"])}
    # another NUMBA_CACHE_DIR on this machine binds the same BLAS, so it computes the same bits
    assert _auto(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "numba"))["choice"]["how"] == "remembered"
    path.write_text("{not json")                                          # a damaged file: time again
    assert _auto(tmp_path)["choice"]["how"] == "measured"
    assert json.loads(path.read_text())
    other = next(b for b in _available() if b != first["backend"])
    path.write_text(json.dumps({k: other for k in json.loads(path.read_text())}))
    assert _auto(tmp_path)["backend"] == other                           # the remembered choice is used
    explicit = _auto(tmp_path, FASTBP_BLAS="openblas")
    assert explicit["choice"] is None and explicit["pending"] is False    # an explicit backend: no timing
    path.unlink()
    ranks = _auto(tmp_path, PMI_SIZE="4")                                # MPI ranks: no timing race
    assert ranks["backend"] == ("blis" if "blis" in _available() else "openblas")
    assert "launcher" in ranks["choice"]["how"] and not path.exists() and ranks["pending"] is False


SERIAL_CHOICE = r"""
import json, sys
from fastbp.kernels import _blas
names, how = %r, %r
bound, addrs = _blas._load_candidates(names, "auto")
if how == "child fails":
    sys.executable = "/nonexistent/python"      # the timing child cannot start
pick = _blas._measure_choice(addrs, None, parallel=how != "in a kernel")
print(json.dumps(_blas.CHOICE))
"""


@pytest.mark.skipif(len(_available()) < 2, reason="auto times only when there are several candidates")
@pytest.mark.parametrize("how", ["in a kernel", "child fails"])
def test_choice_falls_back_to_serial_blocks(how):
    # from inside a kernel the child would time against this process's spinning threads; a child
    # that cannot run must not stop the binding
    r = subprocess.run([sys.executable, "-c", SERIAL_CHOICE % (sorted(_available()), how)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    c = json.loads(r.stdout.strip().splitlines()[-1])
    assert c["timing"] == "per-thread GEMM blocks, serially" and c["backend"] in _available()
    assert all(len(v) == 9 for v in c["ms"].values()) and min(c["relative"].values()) == 1.0


ONEDNN_THREADS = r"""
import ctypes, os, numpy as np
from fastbp.kernels import _blas
assert _blas.bind() == "onednn"
omp = ctypes.CDLL("libgomp.so.1")
a, b = np.ones((512, 784), np.float32), np.ones((784, 512), np.float32)
c = np.empty((512, 512), np.float32)
before, omp_before = len(os.listdir("/proc/self/task")), omp.omp_get_max_threads()
for _ in range(4):
    _blas.gemm(c, a, b, False, False, 1.0, 0.0)      # serial: not inside any OpenMP team
assert (c == 784).all()
print(before, len(os.listdir("/proc/self/task")), omp_before, omp.omp_get_max_threads())
"""


@pytest.mark.skipif("onednn" not in _available(), reason="oneDNN is not installed (pip install 'fastbp[onednn]')")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a team of one thread cannot be told apart")
def test_onednn_sgemm_starts_no_threads_of_its_own():
    """oneDNN's OpenMP sgemm outside an active OpenMP team (numba's 1-thread regions, plain callers)
    would start a team of its own beside numba's threads; the shim keeps each call on the calling
    thread and restores the caller's OpenMP setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["FASTBP_BLAS"] = "onednn"
    r = subprocess.run([sys.executable, "-c", ONEDNN_THREADS], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after, omp_before, omp_after = map(int, r.stdout.split())
    assert after == before and omp_after == omp_before > 1
