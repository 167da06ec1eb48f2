"""Batch normalization over the batch axis, fused with the following activation.

Shapes: N=batch, F=features.  x, out, dz, dx are (N, F); gamma, beta, mean,
inv_std, running_mean, running_var, dgamma, dbeta are (F,).

    training:  mean, var = batch mean / biased variance of x (two passes)
               out = act(gamma (x - mean) inv_std + beta),  inv_std = 1/sqrt(var + eps)
               running_mean = (1 - momentum) running_mean + momentum mean
               running_var  = (1 - momentum) running_var  + momentum var N/(N-1)
    eval:      the same with running_mean / running_var.

Each kernel is one parallel region over feature blocks (every statistic is
per feature, so blocks are independent and no reduction crosses threads).
"""
import math

from numba import prange

from . import _check
from ._jit import cast_like, jit
from .activation import IDENTITY, act_code, act_grad_block, bias_act_block, split


@jit
def forward_block(out, x, gamma, beta, mean, inv_std, rmean, rvar, momentum, eps, training, act, alpha,
                  f0, f1):
    N = x.shape[0]
    if training:
        for f in range(f0, f1):
            mean[f] = 0
            inv_std[f] = 0
        for n in range(N):
            row = x[n]
            for f in range(f0, f1):
                mean[f] += row[f]
        inv_n = cast_like(1.0 / N, x)
        for f in range(f0, f1):
            mean[f] *= inv_n
        for n in range(N):       # second pass: variance about the mean (stable)
            row = x[n]
            for f in range(f0, f1):
                d = row[f] - mean[f]
                inv_std[f] += d * d
        mom = cast_like(momentum, x)
        keep = cast_like(1.0 - momentum, x)
        unbias = cast_like(N / (N - 1.0) if N > 1 else 1.0, x)
        for f in range(f0, f1):
            var = inv_std[f] * inv_n
            rmean[f] = keep * rmean[f] + mom * mean[f]
            rvar[f] = keep * rvar[f] + mom * var * unbias
            inv_std[f] = 1.0 / math.sqrt(var + eps)
    else:
        for f in range(f0, f1):
            mean[f] = rmean[f]
            inv_std[f] = 1.0 / math.sqrt(rvar[f] + eps)
    for n in range(N):
        xr = x[n]
        orow = out[n]
        for f in range(f0, f1):
            orow[f] = gamma[f] * ((xr[f] - mean[f]) * inv_std[f])
    bias_act_block(out, beta, act, alpha, 0, N, f0, f1)


@jit(parallel=True)
def forward(out, x, gamma, beta, mean, inv_std, rmean, rvar, momentum, eps, training, act, alpha, nchunks):
    F = x.shape[1]
    for c in prange(nchunks):
        f0, f1 = split(F, nchunks, c)
        forward_block(out, x, gamma, beta, mean, inv_std, rmean, rvar, momentum, eps, training, act, alpha,
                      f0, f1)


@jit
def backward_block(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, prev_act, prev_alpha, want_dx,
                   f0, f1):
    N = x.shape[0]
    for f in range(f0, f1):
        dgamma[f] = 0
        dbeta[f] = 0
    for n in range(N):
        d = dz[n]
        xr = x[n]
        for f in range(f0, f1):
            dbeta[f] += d[f]
            dgamma[f] += d[f] * ((xr[f] - mean[f]) * inv_std[f])
    if not want_dx:
        return
    inv_n = cast_like(1.0 / N, x)
    for n in range(N):
        d = dz[n]
        xr = x[n]
        o = dx[n]
        if training:
            for f in range(f0, f1):
                xhat = (xr[f] - mean[f]) * inv_std[f]
                o[f] = gamma[f] * inv_std[f] * (d[f] - inv_n * (dbeta[f] + xhat * dgamma[f]))
        else:
            for f in range(f0, f1):
                o[f] = gamma[f] * inv_std[f] * d[f]
    act_grad_block(dx, x, prev_act, prev_alpha, 0, N, f0, f1)


@jit(parallel=True)
def backward(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, prev_act, prev_alpha, want_dx, nchunks):
    F = x.shape[1]
    for c in prange(nchunks):
        f0, f1 = split(F, nchunks, c)
        backward_block(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, prev_act, prev_alpha,
                       want_dx, f0, f1)


def _vec(name, a, F, dtype, writeable=False, finite=True):
    _check.array(name, a, ndim=1, dtype=dtype, writeable=writeable, finite=finite)
    _check.shape(name, a, (F,))


def batchnorm_forward(out, mean, inv_std, x, gamma, beta, running_mean, running_var, training=True,
                      momentum=0.1, eps=1e-5, act="identity", alpha=0.01, nthreads=None):
    """BatchNorm (+ activation) forward.

    Writes ``out`` (N, F) and the saved ``mean``/``inv_std`` (F,) that backward needs; in training
    also updates ``running_mean``/``running_var`` in place.  Eval reads the running stats only.
    """
    a = act_code(act)
    _check.array("x", x, ndim=2, finite=True)
    N, F = x.shape
    _check.nonempty("x", N)
    if training and N < 2:
        raise ValueError("x: batch normalization in training needs at least 2 rows per batch")
    _check.array("out", out, ndim=2, dtype=x.dtype, writeable=True)
    _check.shape("out", out, x.shape)
    _check.no_overlap("out", out, ("x", x))
    _vec("gamma", gamma, F, x.dtype)
    _vec("beta", beta, F, x.dtype)
    _vec("running_mean", running_mean, F, x.dtype, writeable=True)
    _vec("running_var", running_var, F, x.dtype, writeable=True)
    _vec("mean", mean, F, x.dtype, writeable=True, finite=False)
    _vec("inv_std", inv_std, F, x.dtype, writeable=True, finite=False)
    momentum = _check.scalar("momentum", momentum, lo=0, hi=1)
    eps = _check.scalar("eps", eps, lo=0, lo_open=True)
    alpha = _check.scalar("alpha", alpha)
    forward(out, x, gamma, beta, mean, inv_std, running_mean, running_var, momentum, eps, bool(training), a,
            alpha, _check.threads(nthreads))
    return out


def batchnorm_backward(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training=True, nthreads=None):
    """BatchNorm backward, given ``dz`` = gradient w.r.t. the *pre-activation* output
    (apply the activation derivative first, e.g. activation_backward).

    Writes (overwrites) ``dgamma``, ``dbeta`` (F,) and ``dx`` (N, F) unless ``dx`` is None.
    ``mean``/``inv_std`` are the ones saved by the forward call.  One pass for the two sums,
    one for dx.
    """
    _check.array("dz", dz, ndim=2, finite=True)
    N, F = dz.shape
    _check.nonempty("dz", N)
    _check.array("x", x, ndim=2, dtype=dz.dtype, finite=True)
    _check.shape("x", x, dz.shape)
    _vec("gamma", gamma, F, dz.dtype)
    _vec("mean", mean, F, dz.dtype)
    _vec("inv_std", inv_std, F, dz.dtype)
    _vec("dgamma", dgamma, F, dz.dtype, writeable=True, finite=False)
    _vec("dbeta", dbeta, F, dz.dtype, writeable=True, finite=False)
    want_dx = dx is not None
    if want_dx:
        _check.array("dx", dx, ndim=2, dtype=dz.dtype, writeable=True)
        _check.shape("dx", dx, dz.shape)
        _check.no_overlap("dx", dx, ("dz", dz), ("x", x))
    else:
        dx = dz[:0]
    backward(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, bool(training), IDENTITY, 0.0, want_dx,
             _check.threads(nthreads))
    return dx if want_dx else None
