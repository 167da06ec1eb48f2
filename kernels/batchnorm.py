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
With ``momentum = 0`` the running statistics are left bitwise unchanged.

Levels: ``batchnorm_forward_block`` / ``batchnorm_backward_block`` (serial, one feature
block); ``batchnorm_forward_launch`` / ``batchnorm_backward_launch`` (one parallel region,
no checks: the documented jitted level); ``batchnorm_forward`` / ``batchnorm_backward``
(checked wrappers).
"""
import math

import numpy as np
from numba import prange

from . import _check
from ._jit import cast_like, jit
from ._parallel import split
from .activation import IDENTITY, act_code, act_grad_block, bias_act_block, check_alpha


@jit
def batchnorm_forward_block(out, x, gamma, beta, mean, inv_std, rmean, rvar, momentum, eps, training, act, alpha,
                  f0, f1):
    # loops run over slices from 0 so they vectorize (see activation.bias_act_block)
    N = x.shape[0]
    nf = f1 - f0
    mu, istd, g = mean[f0:f1], inv_std[f0:f1], gamma[f0:f1]
    rm, rv = rmean[f0:f1], rvar[f0:f1]
    if training:
        for f in range(nf):
            mu[f] = 0
            istd[f] = 0
        for n in range(N):
            row = x[n, f0:f1]
            for f in range(nf):
                mu[f] += row[f]
        inv_n = cast_like(1.0 / N, x)
        for f in range(nf):
            mu[f] *= inv_n
        for n in range(N):       # second pass: variance about the mean (stable)
            row = x[n, f0:f1]
            for f in range(nf):
                d = row[f] - mu[f]
                istd[f] += d * d
        mom = cast_like(momentum, x)
        keep = cast_like(1.0 - momentum, x)
        unbias = cast_like(N / (N - 1.0) if N > 1 else 1.0, x)
        for f in range(nf):
            var = istd[f] * inv_n
            rm[f] = keep * rm[f] + mom * mu[f]
            rv[f] = keep * rv[f] + mom * var * unbias
            istd[f] = 1.0 / math.sqrt(var + eps)
    else:
        for f in range(nf):
            mu[f] = rm[f]
            istd[f] = 1.0 / math.sqrt(rv[f] + eps)
    for n in range(N):
        xr = x[n, f0:f1]
        orow = out[n, f0:f1]
        for f in range(nf):
            orow[f] = g[f] * ((xr[f] - mu[f]) * istd[f])
    bias_act_block(out, beta, act, alpha, 0, N, f0, f1)


@jit(parallel=True)
def batchnorm_forward_launch(out, x, gamma, beta, mean, inv_std, rmean, rvar, momentum, eps, training, act, alpha,
                             nchunks):
    """out = act(gamma (x - mean) inv_std + beta), overwriting ``out``, ``mean``, ``inv_std``;
    in training also updates ``rmean``/``rvar`` in place (momentum 0: unchanged)."""
    F = x.shape[1]
    for c in prange(nchunks):
        f0, f1 = split(F, nchunks, c)
        batchnorm_forward_block(out, x, gamma, beta, mean, inv_std, rmean, rvar, momentum, eps, training, act, alpha,
                      f0, f1)


@jit
def batchnorm_backward_block(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, prev_act, prev_alpha, want_dx,
                   f0, f1):
    N = x.shape[0]
    nf = f1 - f0
    mu, istd, g = mean[f0:f1], inv_std[f0:f1], gamma[f0:f1]
    dg, db = dgamma[f0:f1], dbeta[f0:f1]
    for f in range(nf):
        dg[f] = 0
        db[f] = 0
    for n in range(N):
        d = dz[n, f0:f1]
        xr = x[n, f0:f1]
        for f in range(nf):
            db[f] += d[f]
            dg[f] += d[f] * ((xr[f] - mu[f]) * istd[f])
    if not want_dx:
        return
    inv_n = cast_like(1.0 / N, x)
    for n in range(N):
        d = dz[n, f0:f1]
        xr = x[n, f0:f1]
        o = dx[n, f0:f1]
        if training:
            for f in range(nf):
                xhat = (xr[f] - mu[f]) * istd[f]
                o[f] = g[f] * istd[f] * (d[f] - inv_n * (db[f] + xhat * dg[f]))
        else:
            for f in range(nf):
                o[f] = g[f] * istd[f] * d[f]
    act_grad_block(dx, x, prev_act, prev_alpha, 0, N, f0, f1)


@jit(parallel=True)
def batchnorm_backward_launch(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, prev_act, prev_alpha, want_dx,
                              nchunks):
    """Given dz = dL/d(pre-activation output), overwrites ``dgamma``, ``dbeta`` and (``want_dx``)
    ``dx``, then multiplies dx by the previous layer's activation derivative at ``x``."""
    F = x.shape[1]
    for c in prange(nchunks):
        f0, f1 = split(F, nchunks, c)
        batchnorm_backward_block(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, prev_act, prev_alpha,
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
    alpha = check_alpha(alpha)
    nt = _check.threads(nthreads)
    training = _check.flag("training", training)
    _check.array("x", x, ndim=2, finite=True)
    N, F = x.shape
    _check.nonempty("x", N)
    if training and N < 2:
        raise ValueError("x: batch normalization in training needs at least 2 rows per batch")
    _check.array("out", out, ndim=2, dtype=x.dtype, writeable=True)
    _check.shape("out", out, x.shape)
    _vec("gamma", gamma, F, x.dtype)
    _vec("beta", beta, F, x.dtype)
    _vec("running_mean", running_mean, F, x.dtype, writeable=True)
    _vec("running_var", running_var, F, x.dtype, writeable=True)
    _vec("mean", mean, F, x.dtype, writeable=True, finite=False)
    _vec("inv_std", inv_std, F, x.dtype, writeable=True, finite=False)
    momentum = _check.scalar("momentum", momentum, lo=0, hi=1)
    eps = _check.scalar("eps", eps, lo=0, lo_open=True)
    if x.dtype.type(eps) == 0:   # the kernel adds eps in x's dtype: a constant feature would give 1/sqrt(0)
        raise ValueError(f"eps: {eps!r} rounds to 0 in {x.dtype}; expected a value that is positive in {x.dtype}")
    if not training and running_var.min() < 0:
        raise ValueError("running_var: must be >= 0 (a variance)")
    _check.no_overlap([("out", out), ("mean", mean), ("inv_std", inv_std), ("running_mean", running_mean),
                       ("running_var", running_var)], [("x", x), ("gamma", gamma), ("beta", beta)])
    batchnorm_forward_launch(out, x, gamma, beta, mean, inv_std, running_mean, running_var, momentum, eps,
                             training, a, alpha, nt)
    return out


def batchnorm_backward(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training=True, nthreads=None):
    """BatchNorm backward, given ``dz`` = gradient w.r.t. the *pre-activation* output
    (apply the activation derivative first, e.g. activation_backward).

    Writes (overwrites) ``dgamma``, ``dbeta`` (F,) and ``dx`` (N, F) unless ``dx`` is None.
    ``mean``/``inv_std`` are the ones saved by the forward call.  One pass for the two sums,
    one for dx.
    """
    training = _check.flag("training", training)
    nt = _check.threads(nthreads)
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
    else:
        dx = np.empty((0, F), dz.dtype)   # written: must not be a view of a read-only dz
    _check.no_overlap([("dx", dx if want_dx else None), ("dgamma", dgamma), ("dbeta", dbeta)],
                      [("dz", dz), ("x", x), ("gamma", gamma), ("mean", mean), ("inv_std", inv_std)])
    batchnorm_backward_launch(dx, dgamma, dbeta, dz, x, gamma, mean, inv_std, training, IDENTITY, 0.0, want_dx, nt)
    return dx if want_dx else None
