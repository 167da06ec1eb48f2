import pytest

from fastbp import BatchNorm, Dense, Dropout, Model
from fastbp.gradient_check import gradcheck


def _xy(rng, loss):
    X = rng.standard_normal((6, 4))
    if loss == "softmax_ce":
        return X, rng.integers(0, 3, 6)
    return X, rng.random((6, 3))


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu", "leaky_relu", "identity"])
@pytest.mark.parametrize("loss", ["softmax_ce", "mse", "sigmoid_bce"])
def test_gradcheck_passes_for_every_activation_and_loss(rng, act, loss):
    X, y = _xy(rng, loss)
    m = Model([Dense(5, act), Dense(3)], loss=loss, dtype="float64", input_dim=4, seed=1)
    errs = gradcheck(m, X, y)
    assert max(errs.values()) < 1e-5, errs


def test_gradcheck_with_batchnorm_and_dropout(rng):
    X, y = _xy(rng, "softmax_ce")
    m = Model([Dense(5), BatchNorm("tanh"), Dropout(0.3), Dense(3)], dtype="float64", input_dim=4, seed=2)
    errs = gradcheck(m, X, y)
    assert max(errs.values()) < 1e-5, errs


def test_gradcheck_detects_a_wrong_gradient(rng, monkeypatch):
    X, y = _xy(rng, "softmax_ce")
    m = Model([Dense(5, "tanh"), Dense(3)], dtype="float64", input_dim=4, seed=1)
    real = Model.loss_and_grads

    def wrong(self, X, y, step=None):
        loss, g = real(self, X, y, step)
        for op in self.layers:
            op.dW[...] *= 1.01   # a 1% error in every weight gradient
        return loss, g
    monkeypatch.setattr(Model, "loss_and_grads", wrong)
    errs = gradcheck(m, X, y)
    assert errs["layer0.W"] > 1e-3 and errs["layer1.W"] > 1e-3
