"""kernels/combine.py: Add and Concat forward/backward and add_into against numpy (float64 to
1e-15: fastbp's own tanh and fused multiply-adds differ from numpy's by an ulp; float32 to 1e-6),
inside a parallel=True caller, and their checked wrappers' one-line errors."""
import numpy as np
import pytest
from numba import njit, prange

from fastbp.kernels import (
    RELU,
    TANH,
    add,
    add_backward_launch,
    add_into,
    add_into_launch,
    concat,
    concat_backward_launch,
)

ACTS = {"identity": lambda z: z, "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-15), (np.float32, 1e-6)])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_add_and_concat_forward(rng, dtype, tol, act):
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((7, 5)).astype(dtype)
    c = rng.standard_normal((7, 3)).astype(dtype)
    np.testing.assert_allclose(add(np.empty_like(a), a, b, act), ACTS[act](a + b), rtol=tol, atol=tol)
    np.testing.assert_allclose(concat(np.empty((7, 8), dtype), a, c, act), ACTS[act](np.hstack([a, c])),
                               rtol=tol, atol=tol)


def test_backward_passes_the_delta_times_each_producers_derivative(rng):
    dz = rng.standard_normal((6, 7))
    ya, yb = np.tanh(rng.standard_normal((6, 7))), np.maximum(rng.standard_normal((6, 7)), 0)
    da, db = np.empty_like(dz), np.empty_like(dz)
    add_backward_launch(da, db, dz, ya, TANH, 0.0, yb, RELU, 0.0, True, True, 3)
    np.testing.assert_allclose(da, dz * (1 - ya * ya), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(db, dz * (yb > 0))
    yb3 = yb[:, :3].copy()
    da4, db3 = np.empty((6, 4)), np.empty((6, 3))
    concat_backward_launch(da4, db3, dz, ya[:, :4].copy(), TANH, 0.0, yb3, RELU, 0.0, True, True, 2)
    np.testing.assert_allclose(da4, dz[:, :4] * (1 - ya[:, :4] ** 2), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(db3, dz[:, 4:] * (yb3 > 0))
    untouched = np.full((6, 4), 7.0)                 # want_a False: input a (the batch) gets no delta
    concat_backward_launch(untouched, db3, dz, ya[:, :4].copy(), TANH, 0.0, yb3, RELU, 0.0, False, True, 2)
    assert (untouched == 7.0).all()


def test_add_into_accumulates(rng):
    dst, src = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    want = dst + src
    np.testing.assert_array_equal(add_into(dst, src), want)


@njit(parallel=True)
def _many(dsts, srcs):
    for i in prange(dsts.shape[0]):
        add_into_launch(dsts[i], srcs[i], 2)


def test_add_into_inside_a_parallel_caller(rng):
    dsts, srcs = rng.standard_normal((4, 6, 3)), rng.standard_normal((4, 6, 3))
    want = dsts + srcs
    _many(dsts, srcs)
    np.testing.assert_array_equal(dsts, want)


def test_checked_wrappers_name_the_argument():
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"^b: expected shape \(3, 4\) \(a has shape \(3, 4\)\), got \(3, 5\)$"):
        add(np.empty_like(a), a, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"^out: "):
        concat(np.empty((3, 4)), a, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"^dst: "):
        add_into(np.zeros((2, 4)), a)
    with pytest.raises(ValueError, match=r"^a: .*NaN"):
        add(np.empty_like(a), np.full((3, 4), np.nan), a)
