"""Each optimizer kernel matches a plain numpy implementation of its published rule over 10 steps."""
import numpy as np
import pytest

import fastbp.kernels as K
from fastbp import reference as R


def _grads(rng, P, steps):
    return [rng.standard_normal(P) for _ in range(steps)]


@pytest.mark.parametrize("momentum,nesterov,wd", [(0, False, 0), (0, False, 0.01), (0.9, False, 0),
                                                  (0.9, True, 0.001)])
def test_sgd_matches_rule(rng, momentum, nesterov, wd):
    P = 1001
    p = rng.standard_normal(P)
    vel = np.zeros(P)
    p_ref, v_ref = p.copy(), np.zeros(P)
    for g in _grads(rng, P, 10):
        K.sgd(p, g, 0.05, momentum, vel if momentum else None, nesterov, wd)
        p_ref, v_ref = R.sgd_step(p_ref, g, 0.05, momentum, v_ref, nesterov, wd)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-14)
    if momentum:
        np.testing.assert_allclose(vel, v_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.01), (True, 0.01)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_and_adamw_match_rule(rng, decoupled, wd, dtype):
    P = 513
    p = rng.standard_normal(P).astype(dtype)
    m, v = np.zeros(P, dtype), np.zeros(P, dtype)
    pr, mr, vr = p.astype(np.float64), np.zeros(P), np.zeros(P)
    for t, g in enumerate(_grads(rng, P, 10), start=1):
        g = g.astype(dtype)
        if decoupled:
            K.adamw(p, g, m, v, t, lr=0.01, weight_decay=wd)
        else:
            K.adam(p, g, m, v, t, lr=0.01, weight_decay=wd)
        pr, mr, vr = R.adam_step(pr, g.astype(np.float64), mr, vr, t, lr=0.01, weight_decay=wd, decoupled=decoupled)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p, pr, **tol)
    np.testing.assert_allclose(m, mr, **tol)
    np.testing.assert_allclose(v, vr, **tol)


def test_schedules_and_fit_uses_them():
    import math

    import fastbp
    from fastbp import optim as O
    assert [O.step_lr(2, 0.5)(e) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    assert O.exponential_lr(0.9)(3) == pytest.approx(0.729)
    c = O.cosine_lr(4)
    assert c(0) == 1 and c(2) == pytest.approx(0.5) and c(4) == pytest.approx(0) and c(9) == pytest.approx(0)
    X = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    m = fastbp.Model([fastbp.Dense(8, "tanh"), fastbp.Dense(2)])
    h = m.fit(X, y, epochs=3, lr=0.2, schedule=O.step_lr(1, 0.5), optimizer=fastbp.SGD(momentum=0.9))
    assert h["lr"] == [0.2, 0.1, 0.05]
    assert m.optimizer.lr == 0.2 and not math.isnan(h["loss"][-1])
