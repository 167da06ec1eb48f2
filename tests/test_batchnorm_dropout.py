"""BatchNorm and dropout kernels vs reference, finite differences and their statistical contracts."""
import numba
import numpy as np
import pytest
from conftest import central_diff, close

import fastbp.kernels as K
from fastbp import reference as R


def _bn(x, gamma, beta, training=True, act="identity", momentum=0.1, rm=None, rv=None):
    F = x.shape[1]
    out, mean, inv = np.empty_like(x), np.empty(F, x.dtype), np.empty(F, x.dtype)
    rm = np.zeros(F, x.dtype) if rm is None else rm
    rv = np.ones(F, x.dtype) if rv is None else rv
    K.batchnorm_forward(out, mean, inv, x, gamma, beta, rm, rv, training, momentum, 1e-5, act)
    return out, mean, inv, rm, rv


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,F", [(2, 3), (7, 10), (257, 33)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_vs_reference(rng, dtype, N, F, training):
    x = (rng.standard_normal((N, F)) * 3 + 1).astype(dtype)
    x[:, 0] = 2.5  # a constant feature: zero variance
    gamma = rng.standard_normal(F).astype(dtype)
    beta = rng.standard_normal(F).astype(dtype)
    rm0 = rng.standard_normal(F).astype(dtype)
    rv0 = (rng.random(F) + 0.5).astype(dtype)
    ref = R.BatchNorm(gamma.astype(np.float64), beta.astype(np.float64), "tanh", momentum=0.2)
    ref.running_mean, ref.running_var = rm0.astype(np.float64), rv0.astype(np.float64)
    ref.training = training
    y_ref = ref.forward(x.astype(np.float64))
    out, mean, inv, rm, rv = _bn(x, gamma, beta, training, "tanh", 0.2, rm0.copy(), rv0.copy())
    close(out, y_ref, dtype)
    close(rm, ref.running_mean, dtype)
    close(rv, ref.running_var, dtype)
    dy = rng.standard_normal((N, F)).astype(dtype)
    dx_ref = ref.backward(dy.astype(np.float64))
    dz = np.empty_like(dy)
    K.activation_backward(dz, dy, out, "tanh")
    dx, dg, db = np.empty_like(x), np.empty(F, dtype), np.empty(F, dtype)
    K.batchnorm_backward(dx, dg, db, dz, x, gamma, mean, inv, training)
    tol = dict(rtol=1e-8, atol=1e-9) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(dg, ref.dgamma, **tol)
    np.testing.assert_allclose(db, ref.dbeta, **tol)


def test_running_stats_follow_momentum_formula(rng):
    x = rng.standard_normal((16, 4))
    rm, rv = np.full(4, 0.5), np.full(4, 2.0)
    _bn(x, np.ones(4), np.zeros(4), True, momentum=0.3, rm=rm, rv=rv)
    np.testing.assert_allclose(rm, 0.7 * 0.5 + 0.3 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.7 * 2.0 + 0.3 * x.var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("N", [2, 5])
def test_batchnorm_gradients_vs_finite_differences(rng, N):
    F = 3
    x = rng.standard_normal((N, F))
    gamma, beta = rng.standard_normal(F), rng.standard_normal(F)
    G = rng.standard_normal((N, F))

    def f():
        return float((G * _bn(x, gamma, beta, True, "sigmoid")[0]).sum())

    out, mean, inv, _, _ = _bn(x, gamma, beta, True, "sigmoid")
    dz = np.empty_like(G)
    K.activation_backward(dz, G, out, "sigmoid")
    dx, dg, db = np.empty_like(x), np.empty(F), np.empty(F)
    K.batchnorm_backward(dx, dg, db, dz, x, gamma, mean, inv, True)
    for arr, grad in ((x, dx), (gamma, dg), (beta, db)):
        np.testing.assert_allclose(grad.ravel(), central_diff(f, arr, range(arr.size)), rtol=1e-5, atol=1e-7)


def test_batchnorm_training_rejects_single_row():
    x = np.ones((1, 3))
    with pytest.raises(ValueError, match="at least 2 rows"):
        _bn(x, np.ones(3), np.zeros(3), True)


def test_dropout_eval_is_identity_in_model():
    import fastbp
    m = fastbp.Model([fastbp.Dense(8, "tanh"), fastbp.Dropout(0.5), fastbp.Dense(2)], input_dim=4)
    X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    m.eval()
    a = m.forward(X)
    m2 = fastbp.Model([fastbp.Dense(8, "tanh"), fastbp.Dense(2)], input_dim=4)
    np.testing.assert_array_equal(a, m2.eval().forward(X))


def test_dropout_keeps_expected_fraction_and_scales():
    p = 0.3
    x = np.ones((400, 500))
    out = np.empty_like(x)
    K.dropout_forward(out, x, p, seed=7, step=3)
    kept = out != 0
    n = x.size
    # 6 standard deviations of a binomial(n, 1-p)
    assert abs(kept.mean() - (1 - p)) < 6 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(out[kept], 1 / (1 - p))
    dx = np.empty_like(x)
    K.dropout_backward(dx, np.full_like(x, 2.0), p, seed=7, step=3)
    assert np.array_equal(dx != 0, kept)
    np.testing.assert_allclose(dx[kept], 2 / (1 - p))


def test_dropout_masks_same_for_any_thread_count_and_reproducible():
    x = np.random.default_rng(1).standard_normal((97, 31))
    outs = []
    for nt in (1, 2):
        o = np.empty_like(x)
        K.dropout_forward(o, x, 0.5, seed=3, step=11, layer=2, nthreads=nt)
        outs.append(o)
    assert np.array_equal(outs[0], outs[1])
    o = np.empty_like(x)
    K.dropout_forward(o, x, 0.5, seed=3, step=12, layer=2)
    assert not np.array_equal(o, outs[0]), "a different step must give a different mask"
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        K.dropout_forward(o, x, 0.5, seed=3, step=11, layer=2)
    finally:
        numba.set_num_threads(old)
    assert np.array_equal(o, outs[0])


def test_dropout_vs_reference_with_same_mask(rng):
    x = rng.standard_normal((9, 7))
    out = np.empty_like(x)
    K.dropout_forward(out, x, 0.4, seed=5)
    mask = (out != 0).astype(float)
    ref = R.Dropout(0.4, mask)
    np.testing.assert_allclose(out, ref.forward(x), rtol=1e-15)
    g = rng.standard_normal(x.shape)
    dx = np.empty_like(x)
    K.dropout_backward(dx, g, 0.4, seed=5)
    np.testing.assert_allclose(dx, ref.backward(g), rtol=1e-15)


def test_forward_is_inference_by_default_and_moves_no_running_statistics():
    """After fit, forward(X) is inference (equal to predict_proba's logits path) and no call but
    training changes BatchNorm's running statistics, not even forward(X, training=True)."""
    import fastbp
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    m = fastbp.Model([fastbp.Dense(8), fastbp.BatchNorm("tanh"), fastbp.Dropout(0.3), fastbp.Dense(3)], seed=0)
    m.fit(X, y, epochs=2, batch_size=16)
    stats = [a.copy() for op in m.layers for a in op.state.values()]
    p0 = m.predict_proba(X)
    z = m.forward(X)
    np.testing.assert_array_equal(z, m.forward(X[:32]).tolist() + m.forward(X[32:]).tolist())  # row-wise
    zt = m.forward(X, training=True)
    assert not np.array_equal(z, zt), "training=True must use batch statistics and dropout"
    m.loss_and_grads(X, y)
    m.evaluate(X, y)
    after = [a for op in m.layers for a in op.state.values()]
    for a, b in zip(stats, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p0, m.predict_proba(X))
    with pytest.raises(TypeError, match="training"):
        m.forward(X, training="yes")
