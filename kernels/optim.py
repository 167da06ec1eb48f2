"""Optimizer updates over one flat parameter buffer (one launch per step).

Shapes: P = total parameter count.  params, grads and every state buffer
(velocity, m, v) are 1-D (P,) C-contiguous arrays of one float dtype.

Update rules (PyTorch's conventions; ``wd`` = weight decay):

* SGD:       g = grad + wd p;  v = mu v + g;  step = g + mu v (Nesterov) or v;
             p -= lr step      (mu = 0: plain p -= lr g, velocity untouched)
* Adam:      g = grad + wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
             p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
* AdamW:     p -= lr wd p first (decoupled), then Adam with g = grad.

``params`` and the state are updated in place; ``grads`` is only read.

Levels: ``sgd_block`` / ``adam_block`` (serial over [i0, i1)); ``sgd_launch`` / ``adam_launch``
(one parallel region, no checks: the documented jitted level); ``sgd`` / ``adam`` / ``adamw``
(checked wrappers).
"""
import math

import numpy as np
from numba import prange

from . import _check
from ._jit import cast_like, jit
from ._parallel import split


@jit
def sgd_block(p, g, vel, lr, mu, nesterov, wd, i0, i1):
    lr_ = cast_like(lr, p)
    mu_ = cast_like(mu, p)
    wd_ = cast_like(wd, p)
    p = p[i0:i1]
    g = g[i0:i1]
    vel = vel[i0:i1] if mu != 0.0 else vel
    i0, i1 = 0, p.shape[0]
    if mu == 0.0:
        for i in range(i1):
            p[i] -= lr_ * (g[i] + wd_ * p[i])
    elif nesterov:
        for i in range(i1):
            gi = g[i] + wd_ * p[i]
            v = mu_ * vel[i] + gi
            vel[i] = v
            p[i] -= lr_ * (gi + mu_ * v)
    else:
        for i in range(i1):
            v = mu_ * vel[i] + g[i] + wd_ * p[i]
            vel[i] = v
            p[i] -= lr_ * v


@jit
def adam_block(p, g, m, v, t, lr, b1, b2, eps, wd, decoupled, i0, i1):
    c1 = 1.0 / (1.0 - b1 ** t)
    c2 = 1.0 / (1.0 - b2 ** t)
    # p -= lr c1 m / (sqrt(v c2) + eps) == p -= (lr c1 / sqrt(c2)) m / (sqrt(v) + eps sqrt(1/c2))
    step_ = cast_like(lr * c1 / math.sqrt(c2), p)
    eps_ = cast_like(eps / math.sqrt(c2), p)
    b1_ = cast_like(b1, p)
    b2_ = cast_like(b2, p)
    a1 = cast_like(1.0 - b1, p)
    a2 = cast_like(1.0 - b2, p)
    wd_ = cast_like(0.0 if decoupled else wd, p)
    shrink = cast_like(1.0 - lr * wd if decoupled else 1.0, p)
    p, g, m, v = p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1]
    for i in range(p.shape[0]):
        gi = g[i] + wd_ * p[i]
        mi = b1_ * m[i] + a1 * gi
        vi = b2_ * v[i] + a2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = shrink * p[i] - step_ * mi / (math.sqrt(vi) + eps_)


@jit(parallel=True)
def sgd_launch(p, g, vel, lr, mu, nesterov, wd, nchunks):
    """One SGD step over flat (P,) buffers: updates ``p`` (and ``vel`` when mu > 0; else vel may be empty)."""
    for c in prange(nchunks):
        i0, i1 = split(p.shape[0], nchunks, c)
        sgd_block(p, g, vel, lr, mu, nesterov, wd, i0, i1)


@jit(parallel=True)
def adam_launch(p, g, m, v, t, lr, b1, b2, eps, wd, decoupled, nchunks):
    """Adam step ``t`` (1-based, float) over flat (P,) buffers: updates ``p``, ``m``, ``v``."""
    for c in prange(nchunks):
        i0, i1 = split(p.shape[0], nchunks, c)
        adam_block(p, g, m, v, t, lr, b1, b2, eps, wd, decoupled, i0, i1)


def _flat(params, grads, *state):
    _check.array("params", params, ndim=1, writeable=True, finite=True)
    _check.array("grads", grads, ndim=1, dtype=params.dtype, finite=True)
    _check.shape("grads", grads, params.shape)
    for name, s in state:
        _check.array(name, s, ndim=1, dtype=params.dtype, writeable=True, finite=True)
        _check.shape(name, s, params.shape)
    _check.no_overlap([("params", params)] + list(state), [("grads", grads)])


def sgd(params, grads, lr, momentum=0.0, velocity=None, nesterov=False, weight_decay=0.0, nthreads=None):
    """SGD step over the flat buffer.  Writes ``params`` (and ``velocity`` if momentum > 0)."""
    nt = _check.threads(nthreads)
    lr = _check.scalar("lr", lr, lo=0)
    momentum = _check.scalar("momentum", momentum, lo=0, hi=1, hi_open=True)
    weight_decay = _check.scalar("weight_decay", weight_decay, lo=0)
    nesterov = _check.flag("nesterov", nesterov)
    if momentum > 0 and velocity is None:
        raise ValueError("velocity: required (a (P,) buffer) when momentum > 0")
    if nesterov and momentum == 0:
        raise ValueError("nesterov: requires momentum > 0")
    _flat(params, grads, *([("velocity", velocity)] if momentum > 0 else []))
    vel = velocity if momentum > 0 else params[:0]
    sgd_launch(params, grads, vel, lr, momentum, nesterov, weight_decay, nt)
    return params


def adam(params, grads, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         decoupled=False, nthreads=None):
    """Adam step ``step`` (1-based) over the flat buffer.  Writes ``params``, ``m`` and ``v``.

    ``decoupled=True`` is AdamW (weight decay applied to the weights, not the gradient).
    """
    nt = _check.threads(nthreads)
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step: must be an integer >= 1 (1 for the first update), got {step!r}")
    decoupled = _check.flag("decoupled", decoupled)
    lr = _check.scalar("lr", lr, lo=0)
    beta1 = _check.scalar("beta1", beta1, lo=0, hi=1)
    beta2 = _check.scalar("beta2", beta2, lo=0, hi=1)
    if beta1 >= 1 or beta2 >= 1:
        raise ValueError("beta1, beta2: must be < 1")
    eps = _check.scalar("eps", eps, lo=0, lo_open=True)
    weight_decay = _check.scalar("weight_decay", weight_decay, lo=0)
    _flat(params, grads, ("m", m), ("v", v))
    if params.dtype.type(eps) == 0:
        raise ValueError(f"eps: {eps!r} underflows to 0 in {params.dtype}")
    if v.size and v.min() < 0:
        raise ValueError("v: Adam's second-moment buffer must be >= 0")
    adam_launch(params, grads, m, v, float(step), lr, beta1, beta2, eps, weight_decay, decoupled, nt)
    return params


def adamw(params, grads, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2,
          nthreads=None):
    """AdamW: Adam with decoupled weight decay.  Writes ``params``, ``m``, ``v``."""
    return adam(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, True, nthreads)
