"""Joining the branches of a graph: sums (residual connections) and column concatenation.

Shapes: N=batch; a (N, Fa), b (N, Fb), out / dz (N, F), da like a, db like b; all C-contiguous,
one float dtype.

    add:      out = act(a + b)            (Fa = Fb = F)
    concat:   out = act([a | b])          (F = Fa + Fb)
    backward: the output's delta dz goes to each input times that input's producer's activation
              derivative (``act_a`` at ``ya``, ``act_b`` at ``yb``, from the outputs), as every
              backward hands its predecessor a finished delta: add passes all of dz to both,
              concat passes each input its own columns.
    add_into: dst += src (a tensor read by several ops sums the deltas they hand back).

Levels: ``*_launch`` (one parallel region of row chunks, no checks: the jitted level);
``add`` / ``concat`` / ``add_into`` (checked wrappers).
"""
from numba import prange

from . import _check
from ._jit import jit
from ._parallel import split
from .activation import act_grad_block, bias_act_block
from .names import act_code, check_alpha


@jit(parallel=True)
def add_launch(out, a, b, act, alpha, nchunks):
    """out = act(a + b), overwriting ``out`` (N, F)."""
    N, F = out.shape
    empty = a[0, :0]
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        for r in range(r0, r1):
            o, x, y = out[r], a[r], b[r]
            for f in range(F):
                o[f] = x[f] + y[f]
        bias_act_block(out, empty, act, alpha, r0, r1, 0, F)


@jit
def hand_back_block(dx, dz, y, act, alpha, c0, r0, r1):
    """dx[r] = dz[r, c0:c0+F] * act'(y[r]) for rows [r0, r1) (dx, y: (N, F)), overwriting dx."""
    F = dx.shape[1]
    for r in range(r0, r1):
        x, z = dx[r], dz[r, c0:c0 + F]
        for f in range(F):
            x[f] = z[f]
    act_grad_block(dx, y, act, alpha, r0, r1, 0, F)


@jit(parallel=True)
def add_backward_launch(da, db, dz, ya, act_a, alpha_a, yb, act_b, alpha_b, want_a, want_b, nchunks):
    """da = dz * act_a'(ya) (if ``want_a``) and db = dz * act_b'(yb) (if ``want_b``), overwriting."""
    N = dz.shape[0]
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        if want_a:
            hand_back_block(da, dz, ya, act_a, alpha_a, 0, r0, r1)
        if want_b:
            hand_back_block(db, dz, yb, act_b, alpha_b, 0, r0, r1)


@jit(parallel=True)
def concat_launch(out, a, b, act, alpha, nchunks):
    """out = act([a | b]), overwriting ``out`` (N, Fa + Fb)."""
    N, F = out.shape
    Fa = a.shape[1]
    empty = a[0, :0]
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        for r in range(r0, r1):
            o, x, y = out[r], a[r], b[r]
            for f in range(Fa):
                o[f] = x[f]
            for f in range(F - Fa):
                o[Fa + f] = y[f]
        bias_act_block(out, empty, act, alpha, r0, r1, 0, F)


@jit(parallel=True)
def concat_backward_launch(da, db, dz, ya, act_a, alpha_a, yb, act_b, alpha_b, want_a, want_b, nchunks):
    """da = dz[:, :Fa] * act_a'(ya) (if ``want_a``), db = dz[:, Fa:] * act_b'(yb) (if ``want_b``)."""
    N = dz.shape[0]
    Fa = ya.shape[1]
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        if want_a:
            hand_back_block(da, dz, ya, act_a, alpha_a, 0, r0, r1)
        if want_b:
            hand_back_block(db, dz, yb, act_b, alpha_b, Fa, r0, r1)


@jit(parallel=True)
def add_into_launch(dst, src, nchunks):
    """dst += src (accumulated into ``dst``), both (N, F)."""
    N, F = dst.shape
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        for r in range(r0, r1):
            d, s = dst[r], src[r]
            for f in range(F):
                d[f] += s[f]


def _pair(a, b, same_width):
    _check.array("a", a, ndim=2, finite=True)
    _check.array("b", b, ndim=2, dtype=a.dtype, finite=True)
    if b.shape[0] != a.shape[0] or (same_width and b.shape != a.shape):
        want = a.shape if same_width else f"({a.shape[0]}, any)"
        raise ValueError(f"b: expected shape {want} (a has shape {a.shape}), got {b.shape}")


def add(out, a, b, act="identity", alpha=0.01, nthreads=None):
    """out = act(a + b).  Writes (overwrites) ``out`` only.  Returns ``out``."""
    code, alpha, nt = act_code(act), check_alpha(alpha), _check.threads(nthreads)
    _pair(a, b, True)
    _check.array("out", out, ndim=2, dtype=a.dtype, writeable=True)
    _check.shape("out", out, a.shape)
    _check.no_overlap([("out", out)], [("a", a), ("b", b)])
    add_launch(out, a, b, code, alpha, nt)
    return out


def concat(out, a, b, act="identity", alpha=0.01, nthreads=None):
    """out = act([a | b]) (columns of a, then of b).  Writes (overwrites) ``out`` only."""
    code, alpha, nt = act_code(act), check_alpha(alpha), _check.threads(nthreads)
    _pair(a, b, False)
    _check.array("out", out, ndim=2, dtype=a.dtype, writeable=True)
    _check.shape("out", out, (a.shape[0], a.shape[1] + b.shape[1]))
    _check.no_overlap([("out", out)], [("a", a), ("b", b)])
    concat_launch(out, a, b, code, alpha, nt)
    return out


def add_into(dst, src, nthreads=None):
    """dst += src.  Accumulates into ``dst`` only.  Returns ``dst``."""
    nt = _check.threads(nthreads)
    _check.array("src", src, ndim=2, finite=True)
    _check.array("dst", dst, ndim=2, dtype=src.dtype, writeable=True, finite=True)
    _check.shape("dst", dst, src.shape)
    _check.no_overlap([("dst", dst)], [("src", src)])
    add_into_launch(dst, src, nt)
    return dst
