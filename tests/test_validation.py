"""Bad input raises TypeError/ValueError naming the argument, and nothing is written."""
import numpy as np
import pytest

import fastbp.kernels as K


def _dense(N=4, D=3, F=2, dtype=np.float32):
    rng = np.random.default_rng(0)
    return (np.zeros((N, F), dtype), rng.standard_normal((N, D)).astype(dtype),
            rng.standard_normal((D, F)).astype(dtype), np.zeros(F, dtype))


def _raises(exc, match, fn, *args, untouched=None, **kw):
    before = None if untouched is None else untouched.copy()
    with pytest.raises(exc, match=match):
        fn(*args, **kw)
    if untouched is not None:
        assert np.array_equal(before, untouched, equal_nan=True), "output was written despite the error"


def test_wrong_dtype():
    out, x, W, b = _dense()
    _raises(TypeError, "W: expected dtype float32", K.dense_forward, out, x, W.astype(np.float64), b, untouched=out)
    _raises(TypeError, "x: expected dtype float32 or float64", K.dense_forward, out, x.astype(np.int32), W, b)
    _raises(TypeError, "x: expected a numpy.ndarray", K.dense_forward, out, x.tolist(), W, b)


def test_mismatched_shapes():
    out, x, W, b = _dense()
    _raises(ValueError, "W: expected 3 rows", K.dense_forward, out, x, W[:2].copy(), b, untouched=out)
    _raises(ValueError, r"b: expected shape \(2,\)", K.dense_forward, out, x, W, np.zeros(3, np.float32))
    _raises(ValueError, r"out: expected shape \(4, 2\)", K.dense_forward, np.zeros((4, 3), np.float32), x, W, b)
    _raises(ValueError, "x: expected a 2-D array", K.dense_forward, out, x[0], W, b)


def test_non_contiguous():
    out, x, W, b = _dense(D=6)
    _raises(ValueError, "x: expected a C-contiguous", K.dense_forward, out, np.asfortranarray(x), W, b)
    _raises(ValueError, "W: expected a C-contiguous", K.dense_forward, out[:, :1], x, W[:, ::2], b[:1])


def test_nan_and_inf_in_inputs():
    out, x, W, b = _dense()
    x[1, 2] = np.nan
    _raises(ValueError, "x: contains NaN", K.dense_forward, out, x, W, b, untouched=out)
    x[1, 2] = 0
    b[0] = np.inf
    _raises(ValueError, "b: contains NaN or inf", K.dense_forward, out, x, W, b, untouched=out)


@pytest.mark.parametrize("threads", [1, 2])
def test_count_nonfinite_counts_every_slice(threads):
    """The parallel scan (one slice per chunk) counts NaN/inf at the slices' first and last entries
    and both ends of the array, for any chunk count; features' check uses it on large inputs."""
    from fastbp import get_num_threads, inputs, set_num_threads
    n = K.PARALLEL_SCAN_FROM + 7
    for dtype in (np.float32, np.float64):
        a = np.ones(n, dtype)
        where = sorted({0, n - 1, n // 2 - 1, n // 2, n // 2 + 1, n // 3, n // 7 - 1, 12345})
        a[where] = ([np.nan, np.inf, -np.inf] * 3)[:len(where)]
        for nchunks in (1, 2, 3, 7):
            assert K.count_nonfinite_launch(a, nchunks) == len(where), nchunks
            assert K.count_nonfinite_launch(np.ones(n, dtype), nchunks) == 0
        assert K.count_nonfinite(a) == len(where)
        old = get_num_threads()
        set_num_threads(threads)
        try:
            assert inputs.nonfinite(a) == len(where)
            assert inputs.nonfinite(a[:1000]) == sum(w < 1000 for w in where)   # the serial path
            with pytest.raises(ValueError, match="X: contains NaN or inf"):
                inputs.features(a.reshape(-1, 1), np.float32, 1)
        finally:
            set_num_threads(old)


def test_empty_batch():
    out, x, W, b = _dense(N=0)
    _raises(ValueError, "x: empty batch", K.dense_forward, out, x, W, b)
    _raises(ValueError, "logits: empty batch", K.softmax_cross_entropy, None, np.zeros((0, 3)), np.zeros(0, int))


def test_labels_out_of_range_and_wrong_kind():
    z = np.zeros((3, 4))
    d = np.full_like(z, 5.0)
    _raises(ValueError, r"labels: value 4 at index 1 is out of range \[0, 4\)", K.softmax_cross_entropy,
            d, z, np.array([0, 4, 1]), untouched=d)
    _raises(ValueError, "labels: value -1", K.softmax_cross_entropy, d, z, np.array([0, -1, 1]))
    _raises(TypeError, "labels: expected an integer array", K.softmax_cross_entropy, d, z, np.zeros(3))
    _raises(ValueError, r"labels: expected shape \(3,\)", K.softmax_cross_entropy, d, z, np.zeros(2, int))


def test_output_aliasing_input_rejected():
    out, x, W, b = _dense(D=2, F=2)
    _raises(ValueError, "out: must not share memory with x", K.dense_forward, x, x, W, b)


def test_backward_checks_before_writing():
    out, x, W, b = _dense()
    dW, db = np.full_like(W, 3), np.full_like(b, 3)
    dout = np.ones_like(out)
    _raises(ValueError, "dx: expected shape", K.dense_backward, np.zeros((4, 2), np.float32), dW, db, dout, x, W,
            out, "tanh", untouched=dW)
    assert np.all(dout == 1), "dout was modified although the call was rejected"


def test_bad_options():
    out, x, W, b = _dense()
    _raises(ValueError, "act: unknown activation 'swish'", K.dense_forward, out, x, W, b, "swish")
    p, g = np.zeros(5, np.float32), np.zeros(5, np.float32)
    _raises(ValueError, "lr: must be >= 0", K.sgd, p, g, -1.0)
    _raises(ValueError, "velocity: required", K.sgd, p, g, 0.1, momentum=0.9)
    _raises(ValueError, "step: must be an integer >= 1", K.adam, p, g, p.copy(), p.copy(), 0)
    _raises(ValueError, r"p: dropout probability must be in \[0, 1\)", K.dropout_forward, np.zeros((2, 2)),
            np.zeros((2, 2)), 1.0, 0)
    _raises(ValueError, "nthreads: must be >= 1", K.dense_forward, out, x, W, b, nthreads=0)


def test_read_only_inputs_are_accepted_where_no_output_aliases_them(rng):
    """Found by the property suite: a placeholder for an absent output was a view of a read-only
    input, and numba refused to compile a write to it (TypingError instead of a result)."""
    import fastbp.kernels as K
    x = rng.standard_normal((4, 3)).astype(np.float32)
    W = rng.standard_normal((3, 2)).astype(np.float32)
    y = np.tanh(x @ W)
    for a in (x, W, y):
        a.flags.writeable = False
    dW = np.empty_like(W)
    K.dense_backward(None, dW, None, np.ones((4, 2), np.float32), x, W, y, "tanh")
    np.testing.assert_allclose(dW, x.T @ (1 - y * y), rtol=1e-5)
    out = K.dense_forward(np.empty((4, 2), np.float32), x, W, None)
    np.testing.assert_allclose(out, x @ W, rtol=1e-5)
    dz = np.ones((4, 3), np.float32)
    dz.flags.writeable = False
    g, m, s = np.ones(3, np.float32), np.zeros(3, np.float32), np.ones(3, np.float32)
    dg, db = np.empty(3, np.float32), np.empty(3, np.float32)
    K.batchnorm_backward(None, dg, db, dz, x, g, m, s, True)
    np.testing.assert_allclose(db, 4.0)
    assert K.softmax_cross_entropy(None, x, np.array([0, 1, 2, 0])) > 0


@pytest.mark.jit
def test_a_small_input_check_compiles_no_parallel_scan():
    """scan_nonfinite below PARALLEL_SCAN_FROM: the serial scan only (a cold start does not pay for the
    parallel region); from the threshold on, the parallel one, with the same counts."""
    import subprocess
    import sys
    code = ("import numpy as np; from fastbp.kernels import _check as C\n"
            "a = np.ones(1000, np.float32); a[[0, 999]] = np.nan\n"
            "print(C.scan_nonfinite(a, 2), len(C.count_nonfinite_launch.signatures))\n"
            "b = np.ones(C.PARALLEL_SCAN_FROM, np.float32); b[-1] = np.inf\n"
            "print(C.scan_nonfinite(b, 2), len(C.count_nonfinite_launch.signatures))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "0", "1", "1"]
