"""The GEMMs of one MLP training step, alone, split across threads exactly like the dense kernels:
the "GEMM floor" that ``fastbp bench`` compares a full step against.

Shapes: X (N, 784), W0 (784, 512), W1 (512, 512), W2 (512, 10); H*, G* (N, F); dW* like W*.
"""
import numpy as np
from numba import prange

from ._blas import forward_rows_from, gemm
from ._jit import jit
from ._parallel import split
from .dense import NARROW_COLS, forward_by_k, forward_by_rows


@jit
def serial_gemm(C, A, B):
    """C = A @ B by one single-threaded call of the bound BLAS (overwrites C): its per-core rate."""
    gemm(C, A, B, False, False, 1.0, 0.0)


@jit(parallel=True)
def _fwd(out, x, W, nchunks, rows_from, partial):
    N, F = out.shape
    D = x.shape[1]
    if partial.shape[0] >= nchunks * N and forward_by_k(N, D, F, nchunks):
        for c in prange(nchunks):          # the small-batch cut along D (its reduce is not GEMM work)
            d0, d1 = split(D, nchunks, c)
            gemm(partial[c * N:(c + 1) * N], x[:, d0:d1], W[d0:d1], False, False, 1.0, 0.0)
    elif forward_by_rows(N, F, nchunks, rows_from):
        for c in prange(nchunks):
            r0, r1 = split(N, nchunks, c)
            gemm(out[r0:r1], x[r0:r1], W, False, False, 1.0, 0.0)
    else:
        for c in prange(nchunks):
            f0, f1 = split(F, nchunks, c)
            gemm(out[:, f0:f1], x, W[:, f0:f1], False, False, 1.0, 0.0)


@jit(parallel=True)
def _bwd(dx, dW, dz, x, W, want_dx, nchunks):
    N, F = dz.shape
    D = W.shape[0]
    dx_by_rows = want_dx and F < NARROW_COLS * nchunks      # as dense_backward_launch
    if dx_by_rows:
        for c in prange(nchunks):
            r0, r1 = split(N, nchunks, c)
            gemm(dx[r0:r1], dz[r0:r1], W, False, True, 1.0, 0.0)
    for c in prange(nchunks):
        d0, d1 = split(D, nchunks, c)
        if want_dx and not dx_by_rows:
            gemm(dx[:, d0:d1], dz, W[d0:d1], False, True, 1.0, 0.0)
        gemm(dW[d0:d1], x[:, d0:d1], dz, True, False, 1.0, 0.0)


#: the MLP whose step the floor times (784-512-512-10)
SIZES = (784, 512, 512, 10)


def floor_operands(B, nchunks, rng):
    """Arrays for ``gemm_only_step`` at batch ``B``: (X, W0, W1, W2, H0, H1, H2, G0, G1, G2, dW0,
    dW1, dW2, nchunks, partials), random float32 with the step's shapes."""
    X = rng.random((B, SIZES[0]), dtype=np.float32)
    W = [(rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32) for d, f in zip(SIZES[:-1], SIZES[1:])]
    H = [np.zeros((B, f), np.float32) for f in SIZES[1:]]
    G = [(rng.standard_normal((B, f)) * 1e-2).astype(np.float32) for f in SIZES[1:]]
    dW = [np.empty_like(w) for w in W]
    P = [np.empty((nchunks * B, f), np.float32) for f in SIZES[1:]]
    return (X, *W, *H, *G, *dW, nchunks, P)


def gemm_only_step(X, W0, W1, W2, H0, H1, H2, G0, G1, G2, dW0, dW1, dW2, nchunks, partials, rows_from=None):
    """The step's GEMMs cut as the dense kernels cut them; ``partials``: per layer (>= nchunks * N,
    F) scratch for the forward cut along D (as ``dense_forward_ksplit_launch``); ``rows_from``:
    the forward's row-cut threshold (None: the bound backend's)."""
    if rows_from is None:
        rows_from = forward_rows_from()
    _fwd(H0, X, W0, nchunks, rows_from, partials[0])
    _fwd(H1, H0, W1, nchunks, rows_from, partials[1])
    _fwd(H2, H1, W2, nchunks, rows_from, partials[2])
    _bwd(G1, dW2, G2, H1, W2, True, nchunks)
    _bwd(G0, dW1, G1, H0, W1, True, nchunks)
    _bwd(G0, dW0, G0, X, W0, False, nchunks)


@jit(parallel=True)
def empty_regions(out, n_regions, nchunks):
    """``n_regions`` parallel regions of ``nchunks`` chunks doing (almost) nothing: the fixed cost
    of starting and joining numba's thread team, as a step pays it once per launch.  Writes
    ``out[c]`` (nchunks,)."""
    for _ in range(n_regions):
        for c in prange(nchunks):
            out[c] += 1.0
