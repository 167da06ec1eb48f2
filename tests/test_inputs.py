"""Any array-like in, streamed batches, train_on_batch: same numbers as in-memory arrays."""
import numpy as np
import pytest

from fastbp import BatchNorm, Dense, Dropout, Model

ARCH = [Dense(12, "tanh", bias=False), BatchNorm("relu"), Dropout(0.25), Dense(3)]


@pytest.fixture
def data(rng):
    return rng.normal(size=(203, 7)).astype(np.float32), rng.integers(0, 3, 203)


def fresh():
    return Model(ARCH, seed=5)


def in_memory(X, y, epochs=2, B=32, **kw):
    m = fresh()
    m.fit(X, y, epochs=epochs, batch_size=B, shuffle=False, optimizer="adam", lr=1e-2, **kw)
    return m


def batches(X, y, B=32):
    for s in range(0, X.shape[0], B):
        yield X[s:s + B], y[s:s + B]


def test_streamed_fit_equals_in_memory_fit_bitwise(data):
    X, y = data
    ref = in_memory(X, y)
    for source in (lambda: batches(X, y), list(batches(X, y))):
        m = fresh()
        h = m.fit(source, epochs=2, optimizer="adam", lr=1e-2)
        np.testing.assert_array_equal(m.params, ref.params)
        assert m.step_count == ref.step_count and h["loss"] == pytest.approx(ref.history["loss"], rel=1e-12)


def test_stream_on_a_built_model_and_from_a_generator_once(data):
    X, y = data
    ref = in_memory(X, y, epochs=1)
    m = fresh().build(7)
    m.fit(batches(X, y), epochs=1, optimizer="adam", lr=1e-2)
    np.testing.assert_array_equal(m.params, ref.params)
    with pytest.raises(ValueError, match="one-shot iterator"):
        fresh().fit(batches(X, y), epochs=2)


def test_stream_errors_name_the_batch(data):
    X, y = data
    with pytest.raises(ValueError, match=r"batch 1 of epoch 1: expected a pair"):
        fresh().fit(lambda: [(X[:32], y[:32]), X[32:64]])
    with pytest.raises(ValueError, match=r"X \(batch 1 of epoch 1\): expected 7 features"):
        fresh().fit(lambda: [(X[:32], y[:32]), (X[32:64, :5], y[32:64])])
    with pytest.raises(ValueError, match=r"batch 1 of epoch 1\): BatchNorm .* at least 2"):
        fresh().fit([(X[:32], y[:32]), (X[32:33], y[32:33])])
    with pytest.raises(ValueError, match=r"no batches in epoch 1"):
        fresh().build(7).fit(lambda: iter(()))
    with pytest.raises(TypeError, match="iterable of"):
        fresh().fit(3)


def test_torch_dataloader_and_tensors(data):
    torch = pytest.importorskip("torch", reason="PyTorch not installed (CI installs the CPU build)")
    X, y = data
    ref = in_memory(X, y)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=False)
    m = fresh()
    m.fit(loader, epochs=2, optimizer="adam", lr=1e-2)
    np.testing.assert_array_equal(m.params, ref.params)
    t = torch.from_numpy(X).requires_grad_(True)
    np.testing.assert_array_equal(m.predict_proba(t), m.predict_proba(X))
    assert m.evaluate(t, torch.from_numpy(y)) == m.evaluate(X, y)


def test_array_likes_give_the_same_model(data, tmp_path):
    X, y = data
    ref = in_memory(X, y)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mm[...] = X
    variants = {
        "list": (X.tolist(), y.tolist()),
        "float64": (X.astype(np.float64), y),
        "fortran": (np.asfortranarray(X), y),
        "strided": (np.repeat(X, 2, axis=1)[:, ::2], y[::1]),
        "memmap": (mm, y.astype(np.int32)),
        "big-endian": (X.astype(">f4"), y.astype(">i8")),
    }
    for name, (Xv, yv) in variants.items():
        m = in_memory(Xv, yv)
        np.testing.assert_array_equal(m.params, ref.params, err_msg=name)
        np.testing.assert_array_equal(m.predict(Xv), ref.predict(X), err_msg=name)


def test_bad_array_likes_are_named():
    m = Model([Dense(2)], input_dim=3)
    with pytest.raises(TypeError, match="X: expected an array-like of numbers, got str"):
        m.predict("abc")
    with pytest.raises(TypeError, match="X: cannot be read as an array"):
        m.predict([[1.0, 2.0, 3.0], [1.0]])
    with pytest.raises(TypeError, match="y: expected an array-like of numbers, got dict"):
        m.evaluate(np.zeros((2, 3)), {"a": 1})
    with pytest.raises(TypeError, match="X: expected a numeric array"):
        m.predict(np.array([["a", "b", "c"]]))


def test_train_on_batch_equals_fit_steps(data):
    X, y = data
    ref = in_memory(X, y, epochs=1)
    m = fresh()
    losses = [m.train_on_batch(Xb, yb, optimizer="adam", lr=1e-2) if i == 0 else m.train_on_batch(Xb, yb)
              for i, (Xb, yb) in enumerate(batches(X, y))]
    np.testing.assert_array_equal(m.params, ref.params)
    assert all(np.isfinite(losses)) and m.step_count == ref.step_count
    with pytest.raises(ValueError, match="at least 2 rows"):
        m.train_on_batch(X[:1], y[:1])
    big = Model([Dense(4)], input_dim=7)
    with pytest.raises(FloatingPointError, match="diverged"):
        for _ in range(50):
            big.train_on_batch(X * 1e18, np.zeros(203, np.int64) + 1, lr=1e6)
