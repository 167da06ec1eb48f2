"""bf16 mixed precision: rounding, the bf16 GEMM, the dense launches and Model(precision="bf16")."""
import pickle

import numpy as np
import pytest

from fastbp import Dense, Dropout, Model
from fastbp.kernels import JIT_DISABLED
from fastbp.kernels import bf16 as K


def _usable():
    if JIT_DISABLED:
        return True            # numpy emulation: runs anywhere
    try:
        K.bind_bf16()
        return True
    except K.Bf16Unavailable:
        return False


# where the bf16 GEMM is not faster (MKL on non-Intel CPUs) every bf16 model warns; that warning's own
# tests are below
pytestmark = pytest.mark.filterwarnings("ignore::fastbp.kernels.validate.Bf16SlowWarning")

needs_bf16 = pytest.mark.skipif(not _usable(),
                                reason="needs AVX512_BF16/AMX and oneDNN or MKL (pip install 'fastbp[bf16]')")


def ref_bf16(a):
    """Reference rounding in integer arithmetic: nearest bf16, ties to even, NaN kept, denormal inputs
    to a zero of their sign (kernels.bf16.ROUNDING)."""
    a = np.asarray(a, np.float32)
    u = a.view(np.uint32).astype(np.int64)
    u = np.where(u & 0x7F800000, u, u & 0x80000000)
    lo = u & 0xFFFF
    hi = u >> 16
    up = (lo > 0x8000) | ((lo == 0x8000) & (hi & 1 == 1))
    r = (hi + up).astype(np.uint32) << 16
    out = r.view(np.float32).copy()
    out[np.isnan(a)] = np.nan
    return out


def widen(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


@needs_bf16
def test_rounding_is_nearest_even_and_keeps_specials():
    special = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3.4e38, -3.4e38,
                        1.00390625, 1.01171875, 1.0 + 2 ** -8 + 2 ** -20], np.float32)   # ties and a nudge off one
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([special, bits]).astype(np.float32).reshape(1, -1)
    out = np.zeros(x.shape, np.uint16)
    K.to_bf16_rows(out, x, 0, 1)
    got, want = widen(out), ref_bf16(x)
    finite = ~np.isnan(want)
    assert np.array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.isnan(got[~finite]).all()
    assert widen(out)[0, 11] == np.float32(1.0) and widen(out)[0, 12] == np.float32(1.015625)   # ties to even
    assert widen(out)[0, 13] == np.float32(1.0078125)                 # just above a tie: up


@pytest.mark.skipif(JIT_DISABLED or not K.HW_ROUND, reason="numba does not target AVX512_BF16 here")
def test_the_cpu_instruction_and_the_software_rounding_agree_on_every_float32():
    from numba import njit

    @njit
    def mismatches(chunk):
        src = np.empty(chunk, np.uint32)
        hw = np.empty(chunk, np.uint16)
        sw = np.empty(chunk, np.uint16)
        bad, first = 0, -1
        for base in range(0, 2 ** 32, chunk):
            for j in range(chunk):
                src[j] = np.uint32(base + j)
            K._round_row(hw, src)
            K._round_sw(sw, src, 0)
            for j in range(chunk):
                if hw[j] != sw[j]:
                    bad += 1
                    if first < 0:
                        first = base + j
        return bad, first
    assert mismatches(1 << 16) == (0, -1)


def test_instruction_is_used_only_where_numba_targets_it(monkeypatch):
    from numba.core import config
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert not K._compiles_for_bf16()
    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma")
    assert not K._compiles_for_bf16()
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx512f,+avx512bf16")
    assert K._compiles_for_bf16()


@needs_bf16
@pytest.mark.parametrize("cols", [1, 6, 7, 513])
def test_store_rows_hold_the_same_bits_as_rounding_into_the_view(cols, rng):
    x = rng.standard_normal((9, cols)).astype(np.float32) * 1e3
    x[0, 0], x[-1, -1] = np.nan, np.inf
    store = np.full(K.store_shape(9, cols), np.float32(7.0))        # stale contents must be replaced
    K.to_bf16_store_rows(store, x, 2, 9)
    want = np.zeros(x.shape, np.uint16)
    K.to_bf16_rows(want, x, 0, 9)
    view = K._bf16_view(store, cols)
    assert np.array_equal(view[2:], want[2:])
    assert np.array_equal(store[:2], np.full((2, store.shape[1]), np.float32(7.0)))    # rows outside untouched


@needs_bf16
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_bf16_matches_the_product_of_the_rounded_operands(ta, tb, rng):
    m, n, k = 37, 29, 53
    A = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    B = rng.standard_normal((n, k + 3) if tb else (k, n + 3)).astype(np.float32)[:, :k if tb else n]   # strided
    A16, B16 = np.zeros(A.shape, np.uint16), np.zeros((B.shape[0], B.shape[1] + 3), np.uint16)[:, :B.shape[1]]
    K.to_bf16_rows(A16, A, 0, A.shape[0])
    K.to_bf16_rows(B16, np.ascontiguousarray(B), 0, B.shape[0])
    C = rng.standard_normal((m, n)).astype(np.float32)
    C0 = C.astype(np.float64)
    K.gemm_bf16(C, A16, B16, ta, tb, 0.5, 2.0)
    a, b = widen(A16).astype(np.float64), widen(np.ascontiguousarray(B16)).astype(np.float64)
    ref = 0.5 * ((a.T if ta else a) @ (b.T if tb else b)) + 2.0 * C0
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@needs_bf16
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("N", [33, K.ROW_SPLIT_ROWS + 7])      # forward cut by W columns / by x rows
def test_dense_launches_match_the_reference_on_rounded_operands(fused, N, rng):
    from fastbp.kernels.names import act_code
    D, F = 47, 21
    x = rng.standard_normal((N, D)).astype(np.float32)
    W = (rng.standard_normal((D, F)) * 0.2).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    out = np.empty((N, F), np.float32)
    x16s, W16s = np.empty(K.store_shape(N, D), np.float32), np.empty(K.store_shape(D, F), np.float32)
    K.dense_forward_bf16_launch(out, x, W, b, x16s, W16s, act_code("tanh"), 0.01, True, 3)
    xr, Wr = ref_bf16(x).astype(np.float64), ref_bf16(W).astype(np.float64)
    y = np.tanh(xr @ Wr + b)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    dz = rng.standard_normal((N, F)).astype(np.float32)
    prev_y = np.tanh(x)                                 # as if x came out of a tanh layer
    dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty_like(b)
    dz16s = np.empty(K.store_shape(N, F), np.float32)
    W0, b0 = W.copy(), b.copy()
    lr, wd = 0.1, 0.01
    K.dense_backward_bf16_launch(dx, dW, db, dz, W, b, x16s, W16s, dz16s, prev_y, act_code("tanh"), 0.0, True,
                                 fused, lr, wd, 3)
    dzr = ref_bf16(dz).astype(np.float64)
    np.testing.assert_allclose(dx, (dzr @ Wr.T) * (1 - prev_y.astype(np.float64) ** 2), rtol=1e-5, atol=1e-5)
    gW, gb = xr.T @ dzr, dz.astype(np.float64).sum(0)
    if fused:
        np.testing.assert_allclose(W, (1 - lr * wd) * W0 - lr * gW, rtol=1e-5, atol=1e-5)
        assert np.array_equal(widen(K._bf16_view(W16s, F)), ref_bf16(W))   # the copy follows the update
        np.testing.assert_allclose(b, (1 - lr * wd) * b0 - lr * gb, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(dW, gW, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(db, gb, rtol=1e-5, atol=1e-5)
        assert np.array_equal(W, W0)


def test_precision_argument_is_checked():
    with pytest.raises(ValueError, match="precision: expected 'fp32' or 'bf16'"):
        Model([Dense(2)], precision="fp16")
    with pytest.raises(ValueError, match="dtype must be float32"):
        Model([Dense(2)], precision="bf16", dtype="float64")


@pytest.mark.skipif(JIT_DISABLED, reason="binding happens with the JIT only")
def test_bf16_without_the_cpu_or_mkl_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(K, "BOUND", None)
    monkeypatch.setattr(K, "cpu_supports_bf16", lambda: False)
    with pytest.raises(RuntimeError, match="AVX512_BF16 or AMX-BF16"):
        Model([Dense(2)], precision="bf16", input_dim=3)
    monkeypatch.setattr(K, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(K, "_find_mkl", lambda: None)
    monkeypatch.setattr(K, "_find_onednn", lambda: None)
    with pytest.raises(K.Bf16Unavailable, match=r"fastbp\[bf16\]"):
        Model([Dense(2)], precision="bf16", input_dim=3)


@needs_bf16
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bf16_training_tracks_fp32_and_is_reproducible(optimizer, rng):
    X = rng.standard_normal((256, 30)).astype(np.float32)
    y = (X[:, :3].sum(1) > 0).astype(np.int64) + (X[:, 3] > 1)

    def train(precision):
        m = Model([Dense(64, "relu"), Dropout(0.1), Dense(32, "tanh"), Dense(3)], seed=0, precision=precision)
        h = m.fit(X, y, epochs=3, batch_size=32, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3)
        return m, h
    a, ha = train("bf16")
    b, _ = train("bf16")
    f, hf = train("fp32")
    assert np.array_equal(a.params, b.params)                      # bitwise reproducible
    assert not np.array_equal(a.params, f.params)                  # it did run in bf16
    assert np.abs(a.params - f.params).max() < 0.05 * np.abs(f.params).max()
    assert abs(ha["loss"][-1] - hf["loss"][-1]) < 0.05 * hf["loss"][-1]
    np.testing.assert_allclose(a.predict_proba(X), f.predict_proba(X), atol=0.05)
    c = pickle.loads(pickle.dumps(a))
    assert c.precision == "bf16" and np.array_equal(c.predict_proba(X), a.predict_proba(X))


@needs_bf16
@pytest.mark.slow
@pytest.mark.skipif(JIT_DISABLED, reason="five Fashion-MNIST epochs: compiled only")
def test_bf16_fashion_mnist_accuracy_within_half_a_point_of_fp32():
    from fastbp import data
    (X, y), (Xt, yt) = data.load_fashion_mnist()
    acc = {}
    for precision in ("fp32", "bf16"):
        m = Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)], seed=0, precision=precision)
        m.fit(X, y, epochs=5, batch_size=128, optimizer="adam", lr=1e-3, seed=1)
        acc[precision] = m.evaluate(Xt, yt)["accuracy"]
    assert acc["fp32"] > 0.85
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.005, acc


@needs_bf16
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_kept_bf16_weight_copies_give_the_same_bits_as_rounding_every_step(optimizer, rng, monkeypatch):
    """fit keeps W's bf16 copy current through fused updates instead of re-rounding it each step:
    the result must be bitwise what re-rounding every step gives."""
    from fastbp import plan as P
    X = rng.standard_normal((203, 30)).astype(np.float32)        # a short last batch: a second workspace
    y = rng.integers(0, 3, 203)

    def train():
        m = Model([Dense(64, "relu"), Dense(32, "tanh"), Dense(3)], seed=0, precision="bf16")
        m.fit(X, y, epochs=3, batch_size=32, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3)
        return m
    kept = train()
    real = P.Plan.run
    monkeypatch.setattr(P.Plan, "run", lambda self, *a, **k: real(self, *a, **dict(k, bf16_current=False)))
    rounded = train()
    assert np.array_equal(kept.params, rounded.params)


@needs_bf16
def test_bf16_predictions_see_weights_written_from_python(rng):
    X = rng.standard_normal((50, 6)).astype(np.float32)
    m = Model([Dense(8, "tanh"), Dense(2)], seed=0, precision="bf16", input_dim=6)
    m.fit(X, np.arange(50) % 2, epochs=1, batch_size=10)
    before = m.predict_proba(X)
    m.layers[0].W[...] *= -1                                    # a write no kernel saw
    after = m.predict_proba(X)
    assert not np.allclose(before, after)
    fresh = Model([Dense(8, "tanh"), Dense(2)], seed=0, precision="bf16", input_dim=6)
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(fresh.predict_proba(X), after)


@needs_bf16
@pytest.mark.parametrize("speedup, warns", [(0.98, True), (1.19, True), (1.2, False), (2.1, False)])
def test_bf16_warns_where_its_gemm_is_not_faster_than_fp32(monkeypatch, speedup, warns):
    import warnings

    from fastbp.kernels import Bf16SlowWarning
    monkeypatch.setattr(K, "SPEEDUP", speedup)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Model([Dense(4)], input_dim=3, precision="bf16")
    slow = [w for w in seen if issubclass(w.category, Bf16SlowWarning)]
    assert len(slow) == int(warns) and len(seen) == len(slow)
    if warns:
        msg = str(slow[0].message)
        assert f"{speedup:.2f}x" in msg and "precision='fp32'" in msg
        assert slow[0].filename == __file__                  # points at the caller's Model(...) line
        if not JIT_DISABLED:
            assert K.CHOICE["library"] in msg
            assert ("pip install onednn-cpu-gomp" in msg) == (K.BACKEND == "mkl")   # MKL on a non-Intel CPU


@needs_bf16
def test_bf16_speedup_is_measured_once():
    if JIT_DISABLED:
        pytest.skip("the GEMMs are timed with the JIT only")
    s = K.bf16_speedup()
    assert isinstance(s, float) and 0.05 < s < 50 and K.bf16_speedup() is s


# --- the two bf16 GEMM libraries (oneDNN, MKL): each checked, the pick measured and remembered ---

def _backends():
    return [] if JIT_DISABLED else [n for n in K.BACKENDS if K._find(n)]


@pytest.fixture
def rebind(monkeypatch, tmp_path):
    """bind_bf16 from scratch with a private cache folder; afterwards the kernels' symbol points at
    the shim this session bound first again."""
    if JIT_DISABLED or not _usable():
        pytest.skip("binding happens with the JIT only, on a CPU with bf16")
    import llvmlite.binding as llvm
    first = K.BACKEND
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FASTBP_BF16_GEMM", raising=False)
    for name in ("BOUND", "BACKEND", "CHOICE"):
        monkeypatch.setattr(K, name, None)
    yield tmp_path / "fastbp" / K.CHOICE_FILE
    llvm.add_symbol(K.SYMBOL, K._SHIMS[first])


@pytest.mark.jit
@pytest.mark.parametrize("backend", K.BACKENDS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_each_bf16_library_matches_the_product_of_the_rounded_operands(backend, ta, tb, rng):
    if backend not in _backends():
        pytest.skip(f"{backend} is not installed (pip install 'fastbp[bf16]')")
    if not K.cpu_supports_bf16():
        pytest.skip("needs AVX512_BF16/AMX")
    K._load(backend)
    shim = K._SHIMS.get(backend) or K._shim_address(backend)
    m, n, k = 61, 45, 70
    A16 = rng.integers(0x3C00, 0x4100, (k, m + 5) if ta else (m, k + 5), dtype=np.uint16)   # strided: lda > cols
    B16 = rng.integers(0xBC00, 0xC100, (n, k + 2) if tb else (k, n + 2), dtype=np.uint16)
    C = rng.standard_normal((m, n + 4)).astype(np.float32)
    C0 = C.astype(np.float64)
    K._PROTO(shim)(84 if ta else 78, 84 if tb else 78, m, n, k, -0.5, A16.ctypes.data, A16.shape[1], B16.ctypes.data,
                   B16.shape[1], 2.0, C.ctypes.data, C.shape[1])
    a = widen(A16[:, :m] if ta else A16[:, :k]).astype(np.float64)
    b = widen(B16[:, :k] if tb else B16[:, :n]).astype(np.float64)
    ref = -0.5 * ((a.T if ta else a) @ (b.T if tb else b)) + 2.0 * C0[:, :n]
    np.testing.assert_allclose(C[:, :n], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.array_equal(C[:, n:], C0[:, n:].astype(np.float32))          # columns past n untouched


@pytest.mark.jit
def test_bf16_library_pick_is_measured_then_remembered(rebind):
    if len(_backends()) < 2:
        pytest.skip("needs both oneDNN and MKL to choose between")
    K.bind_bf16()
    assert K.CHOICE["how"] == "measured" and set(K.CHOICE["ms"]) == set(K.BACKENDS)
    picked = K.BACKEND
    assert picked == min(K.CHOICE["ms"], key=K.CHOICE["ms"].get)
    assert picked in rebind.read_text()
    K.BOUND = None
    K.bind_bf16()
    assert (K.BACKEND, K.CHOICE["how"]) == (picked, "remembered")
    other = next(n for n in K.BACKENDS if n != picked)          # an edited file is obeyed
    rebind.write_text(rebind.read_text().replace(f'"{picked}"', f'"{other}"'))
    K.BOUND = None
    K.bind_bf16()
    assert (K.BACKEND, K.CHOICE["how"]) == (other, "remembered")


@pytest.mark.jit
def test_bf16_library_asked_for_by_the_environment(rebind, monkeypatch):
    monkeypatch.setenv("FASTBP_BF16_GEMM", "cublas")
    with pytest.raises(K.Bf16Unavailable, match="FASTBP_BF16_GEMM must be 'auto', 'onednn' or 'mkl', got 'cublas'"):
        K.bind_bf16()
    for name in _backends():
        monkeypatch.setenv("FASTBP_BF16_GEMM", name)
        K.BOUND = None
        K.bind_bf16()
        assert (K.BACKEND, K.CHOICE["how"]) == (name, "asked for")
        assert not rebind.exists()                                  # nothing timed, nothing written
    monkeypatch.setenv("FASTBP_BF16_GEMM", "onednn")
    monkeypatch.setattr(K, "_find_onednn", lambda: None)
    K.BOUND = None
    with pytest.raises(K.Bf16Unavailable, match=r"FASTBP_BF16_GEMM=onednn.*pip install onednn-cpu-gomp"):
        K.bind_bf16()


@pytest.mark.jit
def test_onednn_gemm_starts_no_threads_of_its_own():
    """oneDNN's OpenMP GEMM, called outside an active OpenMP team (here: from Python, as in numba's
    1-thread regions), would start a team of its own beside numba's threads; the shim keeps it to
    the calling thread and restores the caller's OpenMP setting."""
    import os
    import subprocess
    import sys
    if "onednn" not in _backends() or not K.cpu_supports_bf16():
        pytest.skip("needs oneDNN and a CPU with bf16")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("a team of one thread cannot be told apart")
    code = """
import ctypes, os, numpy as np
from fastbp.kernels import bf16 as K
K.bind_bf16()
omp = ctypes.CDLL("libgomp.so.1")
a, b = np.full((512, 784), 0x3F80, np.uint16), np.full((784, 512), 0x3F80, np.uint16)
c = np.empty((512, 512), np.float32)
before, omp_before = len(os.listdir("/proc/self/task")), omp.omp_get_max_threads()
for _ in range(4):
    K.gemm_bf16(c, a, b, False, False, 1.0, 0.0)
assert (c == 784).all()
print(before, len(os.listdir("/proc/self/task")), omp_before, omp.omp_get_max_threads())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env["FASTBP_BF16_GEMM"] = "onednn"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.__file__)))
    assert out.returncode == 0, out.stderr
    before, after, omp_before, omp_after = map(int, out.stdout.split())
    assert after == before and omp_after == omp_before > 1
