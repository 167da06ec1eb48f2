"""End-to-end training on real Fashion-MNIST and on the two-sphere data."""
import numpy as np
import pytest

import fastbp
from fastbp import BatchNorm, Dense, Model, data


@pytest.fixture(scope="module")
def fmnist():
    try:
        return data.load_fashion_mnist()
    except FileNotFoundError as e:  # the CI installs Debian's dataset-fashion-mnist; say so loudly
        pytest.fail(f"Fashion-MNIST is required for this test: {e}")


@pytest.mark.slow
@pytest.mark.heavy
def test_fashion_mnist_tanh_mlp_sgd_reaches_82_percent(fmnist):
    (X, y), (Xt, yt) = fmnist
    m = Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)], seed=0)
    h = m.fit(X, y, epochs=5, batch_size=128, lr=0.1, seed=0)
    acc = m.evaluate(Xt, yt)["accuracy"]
    print(f"fashion-mnist SGD test accuracy {acc:.4f}, epoch seconds {h['seconds']}")
    assert acc >= 0.82
    assert h["loss"][-1] < h["loss"][0]


@pytest.mark.slow
@pytest.mark.heavy
def test_fashion_mnist_batchnorm_adam_reaches_84_percent(fmnist):
    (X, y), (Xt, yt) = fmnist
    m = Model([Dense(512), BatchNorm("tanh"), Dense(512), BatchNorm("tanh"), Dense(10)], seed=0)
    m.fit(X, y, epochs=5, batch_size=128, optimizer=fastbp.Adam(lr=1e-3), seed=0)
    acc = m.evaluate(Xt, yt)["accuracy"]
    print(f"fashion-mnist BN+Adam test accuracy {acc:.4f}")
    assert acc >= 0.84


def test_sphere_sigmoid_3_3_2_1_mse_separates():
    (X, y), (Xt, yt) = data.load("sphere")
    m = Model([Dense(3, "sigmoid"), Dense(2, "sigmoid"), Dense(1, "sigmoid")], loss="mse", seed=0)
    m.fit(X, y.astype(np.float32), epochs=300, batch_size=16, lr=2.0, seed=0)
    acc = ((m.predict(Xt)[:, 0] >= 0.5) == yt).mean()
    print(f"sphere test accuracy {acc:.4f}")
    assert acc >= 0.99


def test_workspace_gather_takes_the_rows_by_threads_or_by_numpy(rng):
    m = Model([Dense(3)], input_dim=4)
    ws = m.plan.train_workspace(5)
    y = rng.integers(0, 3, 20)
    for X in (rng.random((20, 4)).astype(np.float32),                  # the kernel
              rng.random((20, 4)),                                       # float64 X: numpy
              np.asfortranarray(rng.random((20, 4)).astype(np.float32))):   # not C-contiguous: numpy
        for idx in (rng.permutation(20)[:5], rng.permutation(20)[:5].astype(np.int32)):
            ws.gather(X, y, idx, 2)
            assert np.array_equal(ws.x, X[idx].astype(np.float32)) and np.array_equal(ws.y, y[idx])
    with pytest.raises(IndexError):
        ws.gather(rng.random((20, 4)).astype(np.float32), y, np.array([0, 1, 2, 3, 20]), 2)
