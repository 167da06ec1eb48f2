"""Every kernel vs fastbp.reference (float64 tight, float32 loose) and vs finite differences."""
import numpy as np
import pytest
from conftest import TOL, central_diff, close
from numba import njit, prange

import fastbp.kernels as K
from fastbp import reference as R

ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
DTYPES = [np.float64, np.float32]
SHAPES = [(1, 1, 1), (3, 10, 513), (257, 513, 10), (3, 1, 10), (257, 10, 1)]  # (N, D, F)


def _layer(rng, N, D, F, dtype):
    x = rng.standard_normal((N, D)).astype(dtype)
    W = (rng.standard_normal((D, F)) / np.sqrt(D)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, W, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("N,D,F", SHAPES)
def test_dense_forward_backward_vs_reference(rng, dtype, act, N, D, F):
    x, W, b = _layer(rng, N, D, F, dtype)
    out = np.full((N, F), np.nan, dtype)
    K.dense_forward(out, x, W, b, act)
    ref = R.Dense(W.astype(np.float64), b.astype(np.float64), act)
    y_ref = ref.forward(x.astype(np.float64))
    close(out, y_ref, dtype)

    dout = rng.standard_normal((N, F)).astype(dtype)
    dx_ref = ref.backward(dout.astype(np.float64))
    dx, dW, db = np.full_like(x, np.nan), np.full_like(W, np.nan), np.full_like(b, np.nan)
    K.dense_backward(dx, dW, db, dout.copy(), x, W, out, act)
    close(dx, dx_ref, dtype)
    close(dW, ref.dW, dtype)
    close(db, ref.db, dtype)


@pytest.mark.parametrize("act", ACTS)
def test_dense_gradients_vs_finite_differences(rng, act):
    N, D, F = 3, 4, 5
    x, W, b = _layer(rng, N, D, F, np.float64)
    if act in ("relu", "leaky_relu"):
        b += 0.3  # keep pre-activations away from the kink at 0 for finite differences
    G = rng.standard_normal((N, F))
    out = np.empty((N, F))

    def f():
        K.dense_forward(out, x, W, b, act)
        return float((G * out).sum())

    f()
    dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty_like(b)
    K.dense_backward(dx, dW, db, G.copy(), x, W, out.copy(), act)
    for arr, grad in ((x, dx), (W, dW), (b, db)):
        idx = range(arr.size)
        np.testing.assert_allclose(grad.ravel(), central_diff(f, arr, idx), rtol=1e-6, atol=1e-8)


def test_dense_backward_without_dx(rng):
    x, W, b = _layer(rng, 5, 3, 4, np.float64)
    out = np.empty((5, 4))
    K.dense_forward(out, x, W, b, "tanh")
    dW, db = np.empty_like(W), np.empty_like(b)
    assert K.dense_backward(None, dW, db, np.ones((5, 4)), x, W, out, "tanh") is None
    ref = R.Dense(W, b, "tanh")
    ref.forward(x)
    ref.backward(np.ones((5, 4)))
    close(dW, ref.dW, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_leaky_relu_exact_at_zero(dtype):
    # z = 0 exactly: relu(0) = 0 with derivative 0; leaky_relu(0) = 0 with derivative alpha.
    x = np.zeros((2, 3), dtype)
    W = np.ones((3, 4), dtype)
    b = np.zeros(4, dtype)
    for act, grad in (("relu", 0.0), ("leaky_relu", 0.25)):
        out = np.full((2, 4), 7, dtype)
        K.dense_forward(out, x, W, b, act, alpha=0.25)
        assert np.all(out == 0)
        dx = np.full((2, 4), 9, dtype)
        K.activation_backward(dx, np.ones((2, 4), dtype), out, act, alpha=0.25)
        assert np.all(dx == dtype(grad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_kernels_vs_reference(rng, dtype, act):
    z = rng.standard_normal((257, 10)).astype(dtype) * 3
    y = np.empty_like(z)
    K.activation_forward(y, z, act)
    ref = R.Activation(act)
    close(y, ref.forward(z.astype(np.float64)), dtype)
    g = rng.standard_normal(z.shape).astype(dtype)
    dx = np.empty_like(z)
    K.activation_backward(dx, g, y, act)
    close(dx, ref.backward(g.astype(np.float64)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(1, 1), (3, 10), (257, 10), (3, 513)])
def test_softmax_ce_int_and_soft_labels_vs_reference(rng, dtype, N, C):
    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
    labels = rng.integers(0, C, N)
    d = np.full_like(z, np.nan)
    loss = K.softmax_cross_entropy(d, z, labels)
    ref = R.SoftmaxCrossEntropy()
    lref = ref.forward(z.astype(np.float64), labels)
    np.testing.assert_allclose(loss, lref, **TOL[dtype])
    close(d, ref.backward(), dtype)

    t = rng.random((N, C))
    t /= t.sum(axis=1, keepdims=True)
    t = t.astype(dtype)
    loss = K.softmax_cross_entropy(d, z, t)
    lref = ref.forward(z.astype(np.float64), t.astype(np.float64))
    np.testing.assert_allclose(loss, lref, **TOL[dtype])
    close(d, ref.backward(), dtype)


def test_softmax_ce_onehot_equals_int_labels(rng):
    z = rng.standard_normal((6, 4))
    lab = rng.integers(0, 4, 6)
    d1, d2 = np.empty_like(z), np.empty_like(z)
    l1 = K.softmax_cross_entropy(d1, z, lab)
    l2 = K.softmax_cross_entropy(d2, z, np.eye(4)[lab])
    assert abs(l1 - l2) < 1e-12
    np.testing.assert_allclose(d1, d2, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_ce_huge_logits_stay_finite(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]], dtype)
    lab = np.array([0, 0, 1])
    d = np.empty_like(z)
    loss = K.softmax_cross_entropy(d, z, lab)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    # row 0 is certain and right (0), row 1 is certain and wrong (2e4), row 2 is a tie (log 2)
    np.testing.assert_allclose(loss, (0 + 2e4 + np.log(2)) / 3, rtol=1e-6)


def test_loss_gradients_vs_finite_differences(rng):
    N, C = 4, 5
    z = rng.standard_normal((N, C))
    lab = rng.integers(0, C, N)
    t = rng.random((N, C))
    for fn, target in ((K.softmax_cross_entropy, lab), (K.mse, t), (K.sigmoid_bce, t)):
        d = np.empty_like(z)
        fn(d, z, target)
        num = central_diff(lambda: fn(None, z, target), z, range(z.size))
        np.testing.assert_allclose(d.ravel(), num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(1, 1), (3, 10), (257, 1)])
def test_mse_and_bce_vs_reference(rng, dtype, N, C):
    p = (rng.standard_normal((N, C)) * 2).astype(dtype)
    t = rng.random((N, C)).astype(dtype)
    for fn, ref in ((K.mse, R.MSE()), (K.sigmoid_bce, R.SigmoidBCE())):
        d = np.empty_like(p)
        loss = fn(d, p, t)
        np.testing.assert_allclose(loss, ref.forward(p.astype(np.float64), t.astype(np.float64)), **TOL[dtype])
        close(d, ref.backward(), dtype)


def test_bce_extreme_logits_finite():
    z = np.array([[1e4, -1e4]], np.float32)
    t = np.array([[0.0, 1.0]], np.float32)
    d = np.empty_like(z)
    loss = K.sigmoid_bce(d, z, t)
    assert np.isfinite(loss) and np.allclose(loss, 1e4, rtol=1e-6)
    assert np.all(np.isfinite(d))


@njit(parallel=True)
def _outer_forward(outs, x, W, b, act):
    for i in prange(outs.shape[0]):
        K.dense_forward_launch(outs[i], x, W, b, act, 0.01, 2)


def test_kernels_run_inside_a_parallel_caller(rng):
    x, W, b = _layer(rng, 7, 9, 11, np.float64)
    outs = np.empty((4, 7, 11))
    _outer_forward(outs, x, W, b, K.TANH)
    ref = np.tanh(x @ W + b)
    for i in range(4):
        close(outs[i], ref, np.float64)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_results_do_not_depend_on_chunking(rng, nthreads):
    x, W, b = _layer(rng, 33, 17, 19, np.float64)
    out = np.empty((33, 19))
    K.dense_forward(out, x, W, b, "tanh", nthreads=nthreads)
    close(out, np.tanh(x @ W + b), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,F,rows_from", [(9, 70, 0), (9, 70, 1), (9, 70, 10), (300, 70, 128), (5, 10, 0),
                                           (1, 10, 0), (0, 10, 0), (2, 3, 0)])
@pytest.mark.parametrize("nchunks", [1, 2, 3])
def test_forward_cut_by_rows_or_columns_matches_the_reference(rng, dtype, N, F, rows_from, nchunks):
    """Both cuts of the forward (rows of x, columns of W; chunks may be empty) give act(x @ W + b)."""
    x, W, b = _layer(rng, N, 13, F, dtype)
    out = np.full((N, F), np.nan, dtype)
    K.dense_forward_launch(out, x, W, b, K.TANH, 0.01, nchunks, rows_from)
    close(out, np.tanh(x.astype(np.float64) @ W + b), dtype)


def test_forward_cut_rule():
    from fastbp.kernels.dense import NARROW_COLS, forward_by_rows
    assert forward_by_rows(1, NARROW_COLS * 2 - 1, 2, 0)          # narrow: by rows, even with fewer rows than chunks
    assert not forward_by_rows(4096, NARROW_COLS * 2, 2, 0)      # rows_from 0: never for wide outputs
    assert forward_by_rows(128, 512, 2, 128) and not forward_by_rows(127, 512, 2, 128)
    assert K.forward_rows_from() == {"mkl": 128, "openblas": 512, "blis": 512, "onednn": 128}.get(
        K.blas_backend(), 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,D,nchunks", [(1, 130, 2), (7, 200, 3), (33, 784, 2), (2, 64, 4)])
def test_forward_cut_along_d_matches_the_reference(rng, dtype, N, D, nchunks):
    """The small-batch forward (per-thread partial products over its rows of W, then a reduce)."""
    x, W, b = _layer(rng, N, D, 70, dtype)
    out = np.full((N, 70), np.nan, dtype)
    partial = np.full((nchunks * N + 3, 70), np.nan, dtype)      # longer than needed: only the first rows
    K.dense_forward_ksplit_launch(out, x, W, b, K.TANH, 0.01, partial, nchunks)
    close(out, np.tanh(x.astype(np.float64) @ W + b), dtype)
    again = np.empty_like(out)
    K.dense_forward_ksplit_launch(again, x, W, b, K.TANH, 0.01, partial, nchunks)
    assert np.array_equal(out, again)                               # same chunks: same bits


def test_forward_cut_along_d_rule():
    assert K.forward_by_k(32, 784, 512, 2) and K.forward_by_k(K.KSPLIT_BELOW_ROWS - 1, 784, 512, 2)
    assert not K.forward_by_k(K.KSPLIT_BELOW_ROWS, 784, 512, 2)    # large batches: rows or columns
    assert not K.forward_by_k(32, 784, 512, 1)                       # one chunk: the plain GEMM
    assert not K.forward_by_k(32, 784, 10, 2)                        # narrow outputs: by rows
    assert not K.forward_by_k(32, 100, 512, 2)                       # shallow: under 64 rows of W per chunk


@njit(parallel=True)
def _outer_ksplit(outs, x, W, b, partials):
    for i in prange(outs.shape[0]):
        K.dense_forward_ksplit_launch(outs[i], x, W, b, K.TANH, 0.01, partials[i], 2)


def test_forward_cut_along_d_inside_a_parallel_caller(rng):
    x, W, b = _layer(rng, 5, 150, 64, np.float64)
    outs, partials = np.empty((3, 5, 64)), np.empty((3, 10, 64))
    _outer_ksplit(outs, x, W, b, partials)
    for i in range(3):
        close(outs[i], np.tanh(x @ W + b), np.float64)


# --------------------------------------------------------------------------- gather
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_take_rows_is_numpy_take(rng, dtype, nthreads):
    src = rng.standard_normal((50, 13)).astype(dtype)
    idx = rng.integers(0, 50, 17)
    idx[0], idx[-1] = 0, 49                                  # the first and last rows
    out = np.full((17, 13), np.nan, dtype)
    assert K.take_rows(out, src, idx, nthreads=nthreads) is out
    assert np.array_equal(out, np.take(src, idx, axis=0))
    empty = np.empty((0, 13), dtype)
    K.take_rows(empty, src, idx[:0])


def test_take_rows_errors_name_the_argument_and_write_nothing(rng):
    src = rng.standard_normal((5, 3))
    out = np.zeros((2, 3))
    for args, exc, msg in [
        ((out, src, np.array([0, 5])), ValueError, r"idx: entry 1 is 5, outside \[0, 5\)"),
        ((out, src, np.array([-1, 0])), ValueError, r"idx: entry 0 is -1"),
        ((out, src, np.array([0, 1], np.int32)), TypeError, "idx: expected a 1-D int64"),
        ((out, src, np.array([0, 1, 2])), ValueError, r"out: expected shape \(3, 3\)"),
        ((out.astype(np.float32), src, np.array([0, 1])), TypeError, "out: expected dtype float64"),
        ((src[:2], src, np.array([3, 4])), ValueError, "out: overlaps src"),
        ((out, src.T.copy().T, np.array([0, 1])), ValueError, "src: expected a C-contiguous"),
    ]:
        with pytest.raises(exc, match=msg):
            K.take_rows(*args)
    assert not out.any()


@njit(parallel=True)
def _outer_take(outs, src, idx):
    for i in prange(outs.shape[0]):
        K.take_rows_launch(outs[i], src, idx, 2)


def test_take_rows_inside_a_parallel_caller(rng):
    src = rng.standard_normal((40, 6)).astype(np.float32)
    idx = rng.permutation(40)[:9]
    outs = np.zeros((3, 9, 6), np.float32)
    _outer_take(outs, src, idx)
    for i in range(3):
        assert np.array_equal(outs[i], src[idx])
