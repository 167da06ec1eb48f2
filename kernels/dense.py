"""Dense (fully connected) layer with fused bias + activation.

Shapes: N=batch, D=in, F=out.  x (N, D), W (D, F), b (F,) or (0,) for no bias,
out / y / dout / dz (N, F), dx (N, D), dW like W, db like b.  All C-contiguous, one float dtype.

    forward:   out = act(x @ W + b)
    backward:  dz = dout * act'(y);  dW = x^T dz;  db = sum_n dz;  dx = dz W^T

Parallel layout: one parallel region per call (two for the small-batch forward cut along D
and for a narrow layer's backward).  GEMMs are cut into per-thread
blocks, each one sequential BLAS call followed by the fused elementwise work while
the block is in cache.  Backward: rows of W (each thread owns its rows of dW).
Forward: columns of W, or rows of x when the output is narrow (F < NARROW_COLS per
chunk: 1.6-2.3x faster for F=10 with all three BLAS) or N >= ``rows_from`` (the
bound BLAS's threshold, ``_blas.forward_rows_from()``: MKL 7-20% faster by rows from
128 rows, OpenBLAS/BLIS only from 512; measured on a 2-core AVX-512 machine).  Small
batches (``forward_by_k``): cut along D, each thread multiplying the rows of W it owns in the
backward, then a reduce of the per-thread partial products (``dense_forward_ksplit_launch``).

Levels: ``dense_forward_block`` / ``dense_grad_block`` (serial);
``dense_forward_launch`` / ``dense_backward_launch`` (one parallel region, no checks:
the documented jitted level); ``dense_forward`` / ``dense_backward`` (checked).
"""
import numpy as np
from numba import prange

from . import _check
from ._blas import bind, forward_rows_from, gemm
from ._jit import cast_like, jit
from ._parallel import split
from .activation import IDENTITY, act_code, act_grad_block, activation_backward_launch, bias_act_block, check_alpha


@jit
def dense_forward_block(out, x, W, b, act, alpha, f0, f1):
    """out[:, f0:f1] = act(x @ W[:, f0:f1] + b[f0:f1]), overwriting that block of ``out``."""
    gemm(out[:, f0:f1], x, W[:, f0:f1], False, False, 1.0, 0.0)
    bias_act_block(out, b, act, alpha, 0, out.shape[0], f0, f1)


#: a forward whose output has fewer columns than this per chunk is split by rows of x, whatever
#: the number of rows (chunks may be empty), so that the cut never depends on the batch there
NARROW_COLS = 32


@jit
def forward_by_rows(N, F, nchunks, rows_from):
    """True when the dense forward of (N, ., F) in ``nchunks`` chunks is cut by rows of x."""
    return F < NARROW_COLS * nchunks or (rows_from > 0 and N >= rows_from)


@jit(parallel=True)
def dense_forward_launch(out, x, W, b, act, alpha, nchunks, rows_from=0):
    """out = act(x @ W + b), overwriting ``out`` (N, F).  ``b`` may be empty (no bias).
    ``rows_from``: from this many rows on, cut by rows of x (0: only narrow outputs are)."""
    N = x.shape[0]
    F = W.shape[1]
    by_rows = forward_by_rows(N, F, nchunks, rows_from)
    for c in prange(nchunks):    # one region for both cuts: each parallel region costs ~1.2 s to compile
        r0, r1, f0, f1 = 0, N, 0, F
        if by_rows:
            r0, r1 = split(N, nchunks, c)
        else:
            f0, f1 = split(F, nchunks, c)
        gemm(out[r0:r1, f0:f1], x[r0:r1], W[:, f0:f1], False, False, 1.0, 0.0)
        bias_act_block(out, b, act, alpha, r0, r1, f0, f1)


#: below this many rows the forward is cut along D (see ``dense_forward_ksplit_launch``):
#: a 784-512-512-10 training step 0.82x the time at 32 rows, 0.89x at 64, 0.99-1.01x from 128
KSPLIT_BELOW_ROWS = 128
#: ... when every thread gets at least this many rows of W
KSPLIT_MIN_DEPTH = 64


@jit
def forward_by_k(N, D, F, nchunks):
    """True when the dense forward of (N, D, F) in ``nchunks`` chunks should be cut along D."""
    return (nchunks > 1 and N < KSPLIT_BELOW_ROWS and D >= KSPLIT_MIN_DEPTH * nchunks
            and F >= NARROW_COLS * nchunks)


@jit(parallel=True)
def dense_forward_ksplit_launch(out, x, W, b, act, alpha, partial, nchunks):
    """out = act(x @ W + b), overwriting ``out`` (N, F), cut along D for small batches.

    Thread c multiplies its own rows [d0, d1) of W (the rows it updates in the fused backward,
    ``dense_backward_launch``, so W never moves between cores) into ``partial[c*N:(c+1)*N]``;
    a second region sums the partials of each row in chunk order and adds bias + activation.
    ``partial``: scratch (>= nchunks * N, F), overwritten.  Results depend on ``nchunks`` (the
    order of the K sums), never on the thread that runs a chunk."""
    N, D = x.shape
    F = W.shape[1]
    for c in prange(nchunks):
        d0, d1 = split(D, nchunks, c)
        gemm(partial[c * N:(c + 1) * N], x[:, d0:d1], W[d0:d1], False, False, 1.0, 0.0)
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        for r in range(r0, r1):
            o = out[r]
            p0 = partial[r]
            for f in range(F):
                o[f] = p0[f]
            for k in range(1, nchunks):
                pk = partial[k * N + r]
                for f in range(F):
                    o[f] += pk[f]
        bias_act_block(out, b, act, alpha, r0, r1, 0, F)


@jit
def dense_grad_block(dW, db, x, dz, d0, d1, f0, f1, scale, beta):
    """dW[d0:d1] = scale * x[:, d0:d1]^T dz + beta * dW[d0:d1];
    db[f0:f1] = scale * sum_n dz[n, f0:f1] + beta * db[f0:f1] (skipped when db is empty).
    ``beta = 0`` overwrites."""
    gemm(dW[d0:d1], x[:, d0:d1], dz, True, False, scale, beta)
    bias_grad_block(db, dz, f0, f1, scale, beta)


@jit
def bias_grad_block(db, dz, f0, f1, scale, beta):
    """db[f0:f1] = scale * sum_n dz[n, f0:f1] + beta * db[f0:f1]; nothing when db is empty.
    ``beta = 0`` overwrites."""
    if db.shape[0] == 0:
        return
    s = cast_like(scale, dz)
    bt = cast_like(beta, dz)
    dbb = db[f0:f1]
    nf = f1 - f0
    for f in range(nf):
        dbb[f] = dbb[f] * bt if beta != 0.0 else bt   # beta = 0 overwrites (no NaN * 0)
    for n in range(dz.shape[0]):
        row = dz[n, f0:f1]
        for f in range(nf):
            dbb[f] += s * row[f]


@jit(parallel=True)
def dense_backward_launch(dx, dW, db, dz, x, W, b, prev_y, prev_act, prev_alpha, want_dx, fused_sgd, lr, wd,
                          nchunks):
    """Backward of one dense layer given ``dz`` = dL/d(pre-activation output), in one parallel region.

    Thread c owns rows [d0, d1) of W and columns [f0, f1) of the bias.  It first
    computes ``dx[:, d0:d1] = dz @ W[d0:d1]^T`` (if ``want_dx``) and multiplies it by the
    previous layer's activation derivative (``prev_act`` at ``prev_y``), so ``dx``
    leaves as the previous layer's dz.  Then, with ``fused_sgd``, it updates its own rows
    in place, ``W[d0:d1] = (1 - lr wd) W[d0:d1] - lr x[:, d0:d1]^T dz`` (and b likewise):
    no other thread reads those rows, so the update needs no gradient buffer and no extra
    pass.  Otherwise it writes (overwrites) ``dW``/``db``.  ``b``/``db`` may be empty.
    A narrow ``dz`` (F < NARROW_COLS per chunk) gets ``dx`` by rows of dz in a region of its
    own first (all of W is read before any row is updated): the K=F GEMM is memory-bound and
    2.4x faster by rows (measured, 512x10 @ 10x512).
    """
    N, F = dz.shape
    D = W.shape[0]
    dx_by_rows = want_dx and F < NARROW_COLS * nchunks
    if dx_by_rows:
        for c in prange(nchunks):
            r0, r1 = split(N, nchunks, c)
            gemm(dx[r0:r1], dz[r0:r1], W, False, True, 1.0, 0.0)
            act_grad_block(dx, prev_y, prev_act, prev_alpha, r0, r1, 0, D)
    for c in prange(nchunks):
        d0, d1 = split(D, nchunks, c)
        f0, f1 = split(F, nchunks, c)
        if want_dx and not dx_by_rows:
            gemm(dx[:, d0:d1], dz, W[d0:d1], False, True, 1.0, 0.0)
            act_grad_block(dx, prev_y, prev_act, prev_alpha, 0, N, d0, d1)
        if fused_sgd:
            dense_grad_block(W, b, x, dz, d0, d1, f0, f1, -lr, 1.0 - lr * wd)
        else:
            dense_grad_block(dW, db, x, dz, d0, d1, f0, f1, 1.0, 0.0)


def _check_layer(x, W):
    _check.array("x", x, ndim=2, finite=True)
    _check.nonempty("x", x.shape[0])
    _check.array("W", W, ndim=2, dtype=x.dtype, finite=True)
    if W.shape[0] != x.shape[1]:
        raise ValueError(f"W: expected {x.shape[1]} rows (x has {x.shape[1]} columns), got shape {W.shape}")


def _check_bias(name, b, F, dtype, writeable=False, finite=True):
    _check.array(name, b, ndim=1, dtype=dtype, writeable=writeable, finite=finite)
    if b.shape[0] not in (0, F):
        raise ValueError(f"{name}: expected shape ({F},) (or (0,) for no bias), got {b.shape}")


def dense_forward(out, x, W, b, act="identity", alpha=0.01, nthreads=None):
    """out = act(x @ W + b).

    Writes (overwrites) ``out`` (N, F) only.  ``act`` is a name or code (see activation);
    ``alpha`` is leaky_relu's slope; ``b`` may be ``None`` or empty (no bias).  Returns ``out``.
    """
    a = act_code(act)
    alpha = check_alpha(alpha)
    nt = _check.threads(nthreads)
    _check_layer(x, W)
    F = W.shape[1]
    b = np.empty(0, x.dtype) if b is None else b   # fresh, never a view of a read-only input
    _check_bias("b", b, F, x.dtype)
    _check.array("out", out, ndim=2, dtype=x.dtype, writeable=True)
    _check.shape("out", out, (x.shape[0], F))
    _check.no_overlap([("out", out)], [("x", x), ("W", W), ("b", b)])
    bind()
    dense_forward_launch(out, x, W, b, a, alpha, nt, forward_rows_from())
    return out


def dense_backward(dx, dW, db, dout, x, W, y, act="identity", alpha=0.01, nthreads=None):
    """Backward of ``y = act(x @ W + b)``.

    Reads x, W, y (the forward output) and dout.  Writes, *overwriting*:
    ``dout`` <- dz = dout * act'(y) (used as scratch, documented side effect),
    ``dW`` (D, F) = x^T dz, ``db`` (F,) = column sums of dz (``None``: no bias), and
    ``dx`` (N, D) = dz W^T unless ``dx`` is None (first layer).  Gradients are not accumulated.
    """
    a = act_code(act)
    alpha = check_alpha(alpha)
    nt = _check.threads(nthreads)
    _check_layer(x, W)
    N, F = x.shape[0], W.shape[1]
    _check.array("dout", dout, ndim=2, dtype=x.dtype, writeable=True, finite=True)
    _check.shape("dout", dout, (N, F))
    _check.array("y", y, ndim=2, dtype=x.dtype, finite=True)
    _check.shape("y", y, (N, F))
    _check.array("dW", dW, ndim=2, dtype=x.dtype, writeable=True)
    _check.shape("dW", dW, W.shape)
    db = np.empty(0, x.dtype) if db is None else db   # written: must not be a view of x
    _check_bias("db", db, F, x.dtype, writeable=True, finite=False)
    want_dx = dx is not None
    if want_dx:
        _check.array("dx", dx, ndim=2, dtype=x.dtype, writeable=True)
        _check.shape("dx", dx, x.shape)
    else:
        dx = np.empty((0, x.shape[1]), x.dtype)   # written: must not be a view of a read-only x
    _check.no_overlap([("dW", dW), ("db", db), ("dx", dx if want_dx else None), ("dout", dout)],
                      [("x", x), ("W", W), ("y", y)])
    if not W.flags.writeable:   # the launch's fused-SGD branch writes W, so numba needs a mutable type
        W = W.copy()
    bind()
    if a != IDENTITY:
        activation_backward_launch(dout, dout, y, a, alpha, nt)
    dense_backward_launch(dx, dW, db, dout, x, W, db, x[:0], IDENTITY, 0.0, want_dx, False, 0.0, 0.0, nt)
    return dx if want_dx else None
