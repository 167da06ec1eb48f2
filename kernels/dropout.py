"""Inverted dropout with a counter-based RNG.

Shapes: N=batch, F=features; x, out, dout, dx are (N, F).

The keep decision for element i (flat index) of a call is a pure function of
(seed, step, layer, i): a splitmix64-style hash, its top 24 bits compared with
p.  So the mask is reproducible, needs no stored state, is identical for any
thread count, and backward recomputes it instead of storing it.
    out = x * keep / (1 - p)      dx = dout * keep / (1 - p)
Element i of row n has flat index ``(row0 + n) * F + f``: ``row0`` (default 0) offsets the row
numbers, so a batch cut into pieces (threads, ranks, chunks) gets the mask of the whole batch.

Levels: ``dropout_block`` (serial); ``dropout_forward_launch`` / ``dropout_backward_launch``
(one parallel region, no checks: the documented jitted level); ``dropout_forward`` /
``dropout_backward`` (checked wrappers).
"""
import numpy as np
from numba import prange

from . import _check
from ._jit import cast_like, jit
from ._parallel import split
from .activation import IDENTITY, act_grad_block

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S40 = np.uint64(40)


@jit
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@jit
def stream_key(seed, step, layer):
    """Key of one dropout call: distinct (seed, step, layer) give independent masks."""
    k = _mix(np.uint64(seed) * _GOLD + np.uint64(1))
    k = _mix(k ^ (np.uint64(step) * _M1 + np.uint64(2)))
    return _mix(k ^ (np.uint64(layer) * _M2 + np.uint64(3)))


@jit
def keep_threshold(p):
    """Element kept iff (hash >> 40) >= threshold, i.e. with probability 1 - p (to 2**-24)."""
    return np.uint64(int(p * 16777216.0 + 0.5))


@jit
def dropout_block(out, x, key, thresh, scale, r0, r1, row0):
    """out[r] = x[r] * keep / (1 - p) for rows [r0, r1), overwriting (out may be x)."""
    F = x.shape[1]
    s = cast_like(scale, x)
    zero = cast_like(0.0, x)
    for n in range(r0, r1):
        base = key + np.uint64((n + row0) * F) * _GOLD
        xr = x[n]
        o = out[n]
        for f in range(F):
            h = _mix(base + np.uint64(f) * _GOLD)
            o[f] = xr[f] * s if (h >> _S40) >= thresh else zero


@jit(parallel=True)
def dropout_forward_launch(out, x, seed, step, layer, p, row0, nchunks):
    """out = x * keep / (1 - p), the mask of (seed, step, layer), overwriting ``out`` (may be ``x``)."""
    N = x.shape[0]
    key = stream_key(seed, step, layer)   # uint64 inside the kernel (a Python int would type as int64)
    thresh = keep_threshold(p)
    scale = 1.0 / (1.0 - p)
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        dropout_block(out, x, key, thresh, scale, r0, r1, row0)


@jit(parallel=True)
def dropout_backward_launch(dx, dout, seed, step, layer, p, row0, prev_y, prev_act, prev_alpha, nchunks):
    """dx = dout * mask / (1 - p), then times the previous layer's activation derivative at
    ``prev_y`` (pass IDENTITY to skip); overwrites ``dx`` (may be ``dout``)."""
    N, F = dout.shape
    key = stream_key(seed, step, layer)
    thresh = keep_threshold(p)
    scale = 1.0 / (1.0 - p)
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        dropout_block(dx, dout, key, thresh, scale, r0, r1, row0)
        act_grad_block(dx, prev_y, prev_act, prev_alpha, r0, r1, 0, F)


def _check_p(p):
    p = _check.real("p", p)
    if not 0 <= p < 1:
        raise ValueError(f"p: dropout probability must be in [0, 1), got {p!r}")
    return p


def _check_seed(name, v):
    return _check.integer(name, v, 0, 2 ** 63 - 1)


def _validate(out_name, out, in_name, inp, p, seed, step, layer):
    """Checks shared by both wrappers; returns (p, seed, step, layer) as plain numbers."""
    p = _check_p(p)
    _check.array(in_name, inp, ndim=2, finite=True)
    _check.nonempty(in_name, inp.shape[0])
    _check.array(out_name, out, ndim=2, dtype=inp.dtype, writeable=True)
    _check.shape(out_name, out, inp.shape)
    _check.same_or_disjoint(out_name, out, in_name, inp)
    return p, _check_seed("seed", seed), _check_seed("step", step), _check_seed("layer", layer)


def dropout_forward(out, x, p, seed, step=0, layer=0, nthreads=None):
    """out = x * keep / (1 - p) with the mask of (seed, step, layer).  Writes ``out`` (may be ``x``)."""
    nt = _check.threads(nthreads)
    p, seed, step, layer = _validate("out", out, "x", x, p, seed, step, layer)
    dropout_forward_launch(out, x, seed, step, layer, p, 0, nt)
    return out


def dropout_backward(dx, dout, p, seed, step=0, layer=0, nthreads=None):
    """dx = dout * keep / (1 - p), the same mask as the forward call with these (seed, step, layer).
    Writes (overwrites) ``dx`` (may be ``dout``)."""
    nt = _check.threads(nthreads)
    p, seed, step, layer = _validate("dx", dx, "dout", dout, p, seed, step, layer)
    dropout_backward_launch(dx, dout, seed, step, layer, p, 0, dout[:0], IDENTITY, 0.0, nt)
    return dx
