"""Dense (fully connected) layer with fused bias + activation.

Shapes: N=batch, D=in, F=out.  x is (N, D), W is (D, F), b is (F,), out/y/dout
are (N, F), dx is (N, D).  All C-contiguous, one float dtype.

    forward:   out = act(x @ W + b)
    backward:  dz = dout * act'(y);  dW = x^T dz;  db = sum_n dz;  dx = dz W^T

Parallel layout: one parallel region per call.  GEMMs are cut into per-thread
blocks along the weight dimension (forward: columns of W; backward: rows of W),
so each thread streams only its half of W, and each block is one sequential
BLAS call followed by the fused elementwise work while the block is in cache.
"""
from numba import prange
from numba.typed import List

from . import _check
from ._blas import gemm
from ._jit import cast_like, jit
from .activation import IDENTITY, act_code, act_grad_block, bias_act_block, split
from .activation import _backward as _act_backward
from .loss import _softmax_ce_int


@jit
def forward_block(out, x, W, b, act, alpha, f0, f1):
    """out[:, f0:f1] = act(x @ W[:, f0:f1] + b[f0:f1])."""
    gemm(out[:, f0:f1], x, W[:, f0:f1], False, False, 1.0, 0.0)
    bias_act_block(out, b, act, alpha, 0, out.shape[0], f0, f1)


@jit(parallel=True)
def _forward(out, x, W, b, act, alpha, nchunks):
    F = W.shape[1]
    for c in prange(nchunks):
        f0, f1 = split(F, nchunks, c)
        forward_block(out, x, W, b, act, alpha, f0, f1)


@jit
def grad_block(dW, db, x, dz, d0, d1, f0, f1, scale, beta):
    """dW[d0:d1] = scale * x[:, d0:d1]^T dz + beta * dW[d0:d1];
    db[f0:f1] = scale * sum_n dz[n, f0:f1] + beta * db[f0:f1]."""
    gemm(dW[d0:d1], x[:, d0:d1], dz, True, False, scale, beta)
    N = dz.shape[0]
    s = cast_like(scale, dz)
    bt = cast_like(beta, dz)
    dbb = db[f0:f1]
    nf = f1 - f0
    for f in range(nf):
        dbb[f] = dbb[f] * bt if beta != 0.0 else bt   # beta = 0 overwrites (no NaN * 0)
    for n in range(N):
        row = dz[n, f0:f1]
        for f in range(nf):
            dbb[f] += s * row[f]


@jit(parallel=True)
def backward_step(dx, dW, db, dz, x, W, b, prev_y, prev_act, prev_alpha, want_dx,
                  fused_sgd, lr, wd, nchunks):
    """One parallel region: dx, then the weight gradient (or the SGD update) per block.

    Thread c owns rows [d0, d1) of W and columns [f0, f1) of the bias.  It first
    computes ``dx[:, d0:d1] = dz @ W[d0:d1]^T`` and multiplies it by the
    previous layer's activation derivative (``prev_act`` at ``prev_y``), so
    ``dx`` leaves as the previous layer's dz.  Then, with ``fused_sgd``, it
    updates its own rows in place, ``W[d0:d1] = (1 - lr wd) W[d0:d1] - lr
    x[:, d0:d1]^T dz`` (and b likewise): no other thread reads those rows, so
    the update needs no gradient buffer and no extra pass.  Otherwise it writes
    (overwrites) ``dW``/``db``.
    """
    N, F = dz.shape
    D = W.shape[0]
    for c in prange(nchunks):
        d0, d1 = split(D, nchunks, c)
        f0, f1 = split(F, nchunks, c)
        if want_dx:
            gemm(dx[:, d0:d1], dz, W[d0:d1], False, True, 1.0, 0.0)
            act_grad_block(dx, prev_y, prev_act, prev_alpha, 0, N, d0, d1)
        if fused_sgd:
            grad_block(W, b, x, dz, d0, d1, f0, f1, -lr, 1.0 - lr * wd)
        else:
            grad_block(dW, db, x, dz, d0, d1, f0, f1, 1.0, 0.0)


def act_backward_inplace(dout, y, act, alpha, nchunks):
    """dout *= act'(y) in parallel (skipped for identity)."""
    if act != IDENTITY:
        _act_backward(dout, dout, y, act, alpha, nchunks)


def _check_layer(x, W):
    _check.array("x", x, ndim=2, finite=True)
    _check.nonempty("x", x.shape[0])
    _check.array("W", W, ndim=2, dtype=x.dtype, finite=True)
    if W.shape[0] != x.shape[1]:
        raise ValueError(f"W: expected {x.shape[1]} rows (x has {x.shape[1]} columns), got shape {W.shape}")


def dense_forward(out, x, W, b, act="identity", alpha=0.01, nthreads=None):
    """out = act(x @ W + b).

    Writes ``out`` (N, F) only.  ``act`` is a name or code (see activation);
    ``alpha`` is leaky_relu's slope.  Returns ``out``.
    """
    a = act_code(act)
    _check_layer(x, W)
    _check.array("b", b, ndim=1, dtype=x.dtype, finite=True)
    _check.shape("b", b, (W.shape[1],))
    _check.array("out", out, ndim=2, dtype=x.dtype, writeable=True)
    _check.shape("out", out, (x.shape[0], W.shape[1]))
    _check.no_overlap("out", out, ("x", x), ("W", W), ("b", b))
    alpha = _check.scalar("alpha", alpha)
    _forward(out, x, W, b, a, alpha, _check.threads(nthreads))
    return out


def dense_backward(dx, dW, db, dout, x, W, y, act="identity", alpha=0.01, nthreads=None):
    """Backward of ``y = act(x @ W + b)``.

    Reads x, W, y (the forward output) and dout.  Writes, *overwriting*:
    ``dout`` <- dz = dout * act'(y) (used as scratch, documented side effect),
    ``dW`` (D, F) = x^T dz, ``db`` (F,) = column sums of dz, and ``dx`` (N, D) =
    dz W^T unless ``dx`` is None (first layer).  Gradients are not accumulated.
    """
    a = act_code(act)
    _check_layer(x, W)
    N, F = x.shape[0], W.shape[1]
    _check.array("dout", dout, ndim=2, dtype=x.dtype, writeable=True, finite=True)
    _check.shape("dout", dout, (N, F))
    _check.array("y", y, ndim=2, dtype=x.dtype, finite=True)
    _check.shape("y", y, (N, F))
    _check.array("dW", dW, ndim=2, dtype=x.dtype, writeable=True)
    _check.shape("dW", dW, W.shape)
    _check.array("db", db, ndim=1, dtype=x.dtype, writeable=True)
    _check.shape("db", db, (F,))
    want_dx = dx is not None
    if want_dx:
        _check.array("dx", dx, ndim=2, dtype=x.dtype, writeable=True)
        _check.shape("dx", dx, x.shape)
    else:
        dx = x[:0]
    outs = [("dW", dW), ("db", db)] + ([("dx", dx)] if want_dx else [])
    ins = [("x", x), ("W", W), ("y", y), ("dout", dout)]
    for on, o in outs:
        _check.no_overlap(on, o, *[p for p in outs + ins if p[0] != on])
    alpha = _check.scalar("alpha", alpha)
    nt = _check.threads(nthreads)
    act_backward_inplace(dout, y, a, alpha, nt)
    backward_step(dx, dW, db, dout, x, W, db, x[:0], IDENTITY, 0.0, want_dx, False, 0.0, 0.0, nt)
    return dx if want_dx else None


@jit
def typed_list(arrays):
    """A numba typed List from a tuple of same-typed arrays, built in compiled (cached) code:
    constructing typed Lists from Python compiles numba helpers in every process (~0.2 s per
    element type), this does not."""
    out = List()
    for a in arrays:
        out.append(a)
    return out


@jit
def mlp_train_step(acts, Ws, bs, dWs, dbs, deltas, labels, scratch, fused_sgd, lr, wd, nchunks):
    """One softmax-cross-entropy training step of a stack of dense layers, in one call.

    Layer i maps ``acts[i]`` (N, D_i) to ``acts[i + 1]`` (N, D_{i+1}) with ``Ws[i]`` (D_i, D_{i+1}),
    ``bs[i]`` and activation code ``scratch[2][i]`` / slope ``scratch[1][i]``; the last layer gives
    the logits.  ``labels[0]`` holds the (N,) int labels, ``scratch[0]`` one float64 slot per chunk.
    Every
    argument is a numba typed List (or a scalar), so the call crosses from Python without
    allocating anything.  Writes acts[1:], deltas (pre-activation gradients) and either updates
    Ws/bs in place (``fused_sgd``: p = (1 - lr wd) p - lr g) or overwrites dWs/dbs.  Returns the
    mean loss.  It runs exactly the kernels the general Model schedule calls, in the same order.
    """
    L = len(Ws)
    partial, alphas, codes = scratch[0], scratch[1], scratch[2]
    for i in range(L):
        _forward(acts[i + 1], acts[i], Ws[i], bs[i], int(codes[i]), alphas[i], nchunks)
    loss = _softmax_ce_int(deltas[L - 1], acts[L], labels[0], True, partial, nchunks)
    for i in range(L - 1, -1, -1):
        if i > 0:
            backward_step(deltas[i - 1], dWs[i], dbs[i], deltas[i], acts[i], Ws[i], bs[i], acts[i],
                          int(codes[i - 1]), alphas[i - 1], True, fused_sgd, lr, wd, nchunks)
        else:
            backward_step(deltas[0][:0], dWs[0], dbs[0], deltas[0], acts[0], Ws[0], bs[0], acts[0],
                          IDENTITY, 0.0, False, fused_sgd, lr, wd, nchunks)
    return loss
