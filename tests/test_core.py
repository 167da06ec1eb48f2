"""The core contract of issue 8: ops as units, one schedule, public gradients, safe copies and threads."""
import copy
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import central_diff

import fastbp
from fastbp import Activation, BatchNorm, Dense, Dropout, Model


def _data(rng, n=200, d=12, c=3, dtype=np.float32):
    X = rng.standard_normal((n, d)).astype(dtype)
    return X, (np.abs(X[:, :3]).argmax(axis=1) % c).astype(np.int64)


def test_dense_bias_false_has_no_bias(rng):
    m = Model([Dense(4, "tanh", bias=False), Dense(3, bias=False)], input_dim=5)
    assert m.params.size == 5 * 4 + 4 * 3
    assert "b" not in m.layers[0].params
    X, y = _data(rng, 64, 5)
    m.fit(X, y, epochs=1, batch_size=16)
    np.testing.assert_allclose(m.forward(np.zeros((2, 5), np.float32)), 0, atol=0)   # no offset anywhere


def test_leaky_relu_negative_or_nan_alpha_rejected():
    with pytest.raises(ValueError, match="Dense.alpha: leaky_relu slope must be >= 0"):
        Dense(4, "leaky_relu", alpha=-0.5)
    with pytest.raises(ValueError, match="Dense.alpha: must be finite"):
        Dense(4, "leaky_relu", alpha=float("nan"))
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="alpha: leaky_relu slope"):
        fastbp.kernels.activation_forward(np.empty_like(x), x, "leaky_relu", alpha=-1.0)


def test_training_forward_treats_rows_as_one_batch(rng):
    X, _ = _data(rng, 40)
    m = Model([Dense(16), BatchNorm("tanh"), Dropout(0.5), Dense(3)], input_dim=12)
    a = m.forward(X, batch_size=8, training=True)
    b = m.forward(X, batch_size=1000, training=True)
    assert np.array_equal(a, b), "training-mode forward must not depend on batch_size"
    d = Model([Dense(8, "tanh"), Dropout(0.5)], loss="mse", input_dim=12)
    masks = d.forward(np.repeat(X[:1], 40, 0), batch_size=8, training=True) != 0
    assert len({tuple(r) for r in masks[:8]}) > 1
    assert not np.array_equal(masks[:8], masks[8:16]), "dropout mask repeated for every chunk"


def test_batchnorm_training_batch_of_one_rejected_and_fit_merges_last(rng):
    m = Model([Dense(8), BatchNorm("tanh"), Dense(3)], input_dim=12)
    X, y = _data(rng, 33)
    with pytest.raises(ValueError, match="at least 2 rows"):
        m.forward(X[:1], training=True)
    with pytest.raises(ValueError, match="at least 2 rows"):
        m.loss_and_grads(X[:1], y[:1])
    h = m.fit(X, y, epochs=1, batch_size=16)   # 16 + 17: the last single row is merged
    assert m.step_count == 2 and np.isfinite(h["loss"][0])
    assert m.forward(X[:1]).shape == (1, 3)   # inference on one row is fine


def test_fit_never_mutates_or_shares_the_optimizer(rng):
    X, y = _data(rng, 64)
    opt = fastbp.Adam(lr=0.01)
    a, b = Model([Dense(8, "tanh"), Dense(3)]), Model([Dense(8, "tanh"), Dense(3)])
    a.fit(X, y, optimizer=opt, lr=0.3)
    b.fit(X, y, optimizer=opt)
    assert opt.lr == 0.01
    assert a.optimizer is not opt and b.optimizer is not opt and a.optimizer is not b.optimizer
    assert a.optimizer.lr == 0.3 and b.optimizer.lr == 0.01


@pytest.mark.parametrize("layers,loss", [
    ([Dense(6, "tanh"), Dense(3)], "softmax_ce"),
    ([Dense(6), BatchNorm("sigmoid"), Dropout(0.3), Dense(5, "leaky_relu", alpha=0.1), Dense(3)], "softmax_ce"),
    ([Dense(6, "relu", bias=False), Activation("tanh"), Dense(3, "sigmoid")], "mse"),
    ([Dense(6, "tanh"), Dense(3)], "sigmoid_bce"),
])
def test_loss_and_grads_matches_central_differences_and_changes_nothing(rng, layers, loss):
    X = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7) if loss == "softmax_ce" else rng.random((7, 3))
    m = Model(layers, loss=loss, input_dim=4, dtype="float64", seed=3)
    before = (m.params.copy(), m.step_count, [dict((k, v.copy()) for k, v in op.state.items()) for op in m.layers])
    loss_v, g = m.loss_and_grads(X, y, step=5)
    g = g.copy()
    assert np.shares_memory(m.grads, m.layers[0].dW)
    assert np.array_equal(m.params, before[0]) and m.step_count == before[1]
    for op, st in zip(m.layers, before[2]):
        for k, v in st.items():
            assert np.array_equal(op.state[k], v), f"{k} changed"
    num = central_diff(lambda: m.loss_and_grads(X, y, step=5)[0], m.params, range(m.params.size))
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    assert loss_v == m.loss_and_grads(X, y, step=5)[0]


def test_per_layer_access_summary_and_repr():
    m = Model([Dense(5, "tanh"), BatchNorm("relu"), Dense(2)], input_dim=3)
    L0, L1 = m.layers[0], m.layers[1]
    assert L0.W.shape == (3, 5) and L0.dW.shape == (3, 5) and L0.b.shape == (5,)
    assert np.shares_memory(L0.W, m.params) and np.shares_memory(L0.dW, m.grads)
    assert np.all(L1.running_var == 1) and L1.gamma.shape == (5,) and L1.dbeta.shape == (5,)
    s = m.summary()
    assert "Dense(tanh)" in s and "BatchNorm(relu)" in s and f"{m.params.size:,}" in s
    assert repr(m).startswith("Model([Dense(units=5") and "input_dim=3" in repr(m)
    with pytest.raises(AttributeError):
        L0.gamma


@pytest.mark.jit   # in pure-Python mode the GIL serialises everything (and it takes minutes)
def test_concurrent_predict_from_four_threads_equals_serial(rng):
    X, y = _data(rng, 3000)
    m = Model([Dense(64, "tanh"), BatchNorm("relu"), Dense(3)])
    m.fit(X, y, epochs=1)
    serial = [m.predict_proba(X[i::7], batch_size=97) for i in range(7)]
    ev = m.evaluate(X, y)
    out, errors = {}, []

    def work(k):
        try:
            for r in range(30):
                i = (k + r) % 7
                if not np.array_equal(m.predict_proba(X[i::7], batch_size=97), serial[i]):
                    errors.append((k, r))
                if r % 4 == 0 and m.evaluate(X, y) != ev:
                    errors.append((k, "evaluate"))
            out[k] = True
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors and len(out) == 4


def test_parallel_input_check_from_four_threads(rng):
    """The threads' NaN/inf scan of large inputs (a parallel region per call) started from four
    Python threads at once: every call counts right, and predict on such inputs still raises."""
    from fastbp import inputs
    from fastbp.kernels import PARALLEL_SCAN_FROM
    a = rng.standard_normal(PARALLEL_SCAN_FROM * 2 + 3).astype(np.float32)
    bad = rng.choice(a.size, 37, replace=False)
    a[bad[:20]] = np.nan
    a[bad[20:]] = np.inf
    counts, errors = [], []

    def work():
        try:
            for _ in range(20):
                counts.append(inputs.nonfinite(a))
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors and counts == [37] * 80
    m = Model([Dense(4, "tanh"), Dense(3)], input_dim=a.size // 1000)
    with pytest.raises(ValueError, match="X: contains NaN or inf"):
        m.predict(a[:1000 * (a.size // 1000)].reshape(1000, -1))


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_round_trip_bitwise(rng, how):
    X, y = _data(rng, 256)
    m = Model([Dense(16), BatchNorm("tanh"), Dropout(0.2), Dense(3)], seed=4)
    m.fit(X, y, epochs=2, batch_size=32, optimizer="adam")
    c = pickle.loads(pickle.dumps(m)) if how == "pickle" else copy.deepcopy(m)
    assert np.array_equal(c.predict_proba(X), m.predict_proba(X))
    assert c.step_count == m.step_count and c.optimizer == m.optimizer
    m.fit(X, y, epochs=1, batch_size=32)
    c.fit(X, y, epochs=1, batch_size=32)
    assert np.array_equal(c.params, m.params), "resumed training differs after the copy"
    assert not np.shares_memory(c.params, m.params)
    u = pickle.loads(pickle.dumps(Model([Dense(3)])))
    assert not u.built


def _fresh(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split()


def test_importing_layers_loads_no_scipy_blis_or_numba():
    out = _fresh("import sys, fastbp.layers, fastbp; from fastbp import Dense; Dense(3); "
                 "print(*(m in sys.modules for m in ('scipy', 'blis', 'numba')))")
    assert out == ["False", "False", "False"]


def test_importing_every_module_binds_no_blas_and_changes_no_threads():
    code = ("import importlib, pkgutil, fastbp, fastbp.kernels as K\n"
            "from threadpoolctl import threadpool_info\n"
            "before = [(i['filepath'], i['num_threads']) for i in threadpool_info()]\n"
            "for m in pkgutil.iter_modules(fastbp.__path__):\n"
            "    importlib.import_module('fastbp.' + m.name)\n"
            "for m in pkgutil.iter_modules(K.__path__):\n"
            "    importlib.import_module('fastbp.kernels.' + m.name)\n"
            "from fastbp.kernels import _blas\n"
            "after = [(i['filepath'], i['num_threads']) for i in threadpool_info()]\n"
            "print(_blas.BACKEND, 'blis' in __import__('sys').modules, set(after) >= set(before))\n")
    assert _fresh(code) == ["None", "False", "True"]


@pytest.mark.jit
def test_blas_binds_on_first_kernel_use_even_from_user_njit_code():
    code = ("import numpy as np, numba\nfrom fastbp.kernels import dense_forward_launch, TANH, _blas\n"
            "@numba.njit\ndef f(o, x, W, b):\n    dense_forward_launch(o, x, W, b, TANH, 0.0, 2)\n"
            "x = np.ones((3, 4)); W = np.ones((4, 5)) * 0.1; o = np.empty((3, 5))\n"
            "assert _blas.BACKEND is None\nf(o, x, W, np.zeros(5))\n"
            "print(_blas.BACKEND is not None, np.allclose(o, np.tanh(0.4)))\n")
    assert _fresh(code) == ["True", "True"]


def test_readme_custom_layer_example_runs_in_user_njit_code(rng):
    """The README's example: fastbp's jitted launches inside a user's own @njit(parallel=True) code."""
    import pathlib
    import re
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "def my_forward" in b)
    ns = {}
    exec(compile(block, "README.md", "exec"), ns)
    x = rng.standard_normal((9, 6))
    W1, b1 = rng.standard_normal((6, 5)), rng.standard_normal(5)
    W2, b2 = rng.standard_normal((5, 3)), rng.standard_normal(3)
    h1, h2, out = np.empty((9, 5)), np.empty((9, 5)), np.empty((9, 3))
    ns["my_forward"](h1, h2, out, x, W1, b1, W2, b2, 2)
    ref = np.maximum(x @ W1 + b1, 0) ** 2 @ W2 + b2
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_adam_eps_that_underflows_in_float32_is_rejected(rng):
    X, y = _data(rng, 32)
    m = Model([Dense(4), Dense(3)])
    with pytest.raises(ValueError, match="Adam.eps: 1e-300 underflows to 0 in float32"):
        m.fit(X, y, optimizer=fastbp.Adam(eps=1e-300))
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="eps: 1e-300 underflows"):
        fastbp.kernels.adam(p, p.copy(), p.copy(), p.copy(), 1, eps=1e-300)


def test_fit_refuses_non_finite_parameters_and_saves_nothing(rng, tmp_path):
    X, y = _data(rng, 64)
    m = Model([Dense(8, "relu"), Dense(3)])
    ck = tmp_path / "ck.npz"
    # one step per epoch: its loss is finite, then the update (lr 1e39, inf in float32) breaks the parameters
    with pytest.raises(FloatingPointError, match="parameters became NaN or inf during epoch 1"):
        m.fit(X, y, epochs=1, batch_size=64, lr=1e39, checkpoint=str(ck))
    assert not ck.exists()
    with pytest.raises(ValueError, match="refusing to write"):
        m.save(tmp_path / "m.npz")


def test_load_rejects_non_finite_and_misshaped_arrays(rng, tmp_path):
    X, y = _data(rng, 64)
    m = Model([Dense(8, "tanh"), Dense(3)])
    m.fit(X, y, optimizer="adam")
    path = tmp_path / "m.npz"
    m.save(path)
    z = dict(np.load(path))
    bad = dict(z, params=np.where(np.arange(z["params"].size) == 3, np.nan, z["params"]).astype(np.float32))
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(ValueError, match=r"nan.npz: array 'params' contains NaN or inf"):
        Model.load(tmp_path / "nan.npz")
    bad = dict(z, opt_m=z["opt_m"][:5])
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ValueError, match=r"shape.npz: array 'opt_m' has shape \(5,\)"):
        Model.load(tmp_path / "shape.npz")


def test_inference_never_writes_the_models_mode(rng):
    """Concurrent callers must not see each other's mode: predict/evaluate/loss_and_grads take the
    mode as an argument and never flip ``model.training`` (flipping it raced under load)."""
    writes = []

    class Watched(Model):
        training = property(lambda self: self.__dict__["_training"],
                            lambda self, v: (writes.append(v), self.__dict__.__setitem__("_training", v)))

    X, y = _data(rng, 64)
    m = Watched([Dense(8), BatchNorm("tanh"), Dropout(0.2), Dense(3)])
    m.fit(X, y, epochs=1)
    writes.clear()
    m.predict_proba(X)
    m.predict(X)
    m.evaluate(X, y)
    m.loss_and_grads(X, y)
    m.forward(X)
    assert writes == [] and m.training is True


def test_batchnorm_eps_that_rounds_to_zero_in_the_dtype_is_refused(rng):
    """float32 with eps=1e-300: eps would be 0 and a constant feature 1/sqrt(0); refused by name, in the
    kernel and in a model, before anything is written.  Fine in float64."""
    from fastbp import BatchNorm
    x = np.ones((4, 3), np.float32)                      # constant features: var 0
    out, mean, istd = np.full_like(x, 7), np.zeros(3, np.float32), np.zeros(3, np.float32)
    g, b, rm, rv = np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="eps: 1e-300 rounds to 0 in float32"):
        fastbp.kernels.batchnorm_forward(out, mean, istd, x, g, b, rm, rv, True, eps=1e-300)
    assert (out == 7).all()
    x64 = x.astype(np.float64)
    o64 = np.empty_like(x64)
    fastbp.kernels.batchnorm_forward(o64, np.zeros(3), np.zeros(3), x64, g.astype(float), b.astype(float),
                                     np.zeros(3), np.ones(3), True, eps=1e-300)
    assert np.isfinite(o64).all()
    X, y = _data(rng, 16)
    m = Model([Dense(4), BatchNorm(eps=1e-300), Dense(3)])
    with pytest.raises(ValueError, match="BatchNorm.eps: 1e-300 rounds to 0 in float32"):
        m.fit(X, y)
