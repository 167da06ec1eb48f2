"""Losses, forward and backward in one pass over the predictions.

Shapes: N=batch, C=classes/outputs.  logits/pred/dlogits/dpred are (N, C);
integer labels are (N,) with values in [0, C); soft/one-hot labels and
regression targets are (N, C) of the logits' dtype.

Levels: ``*_rows`` (serial over a row range); ``softmax_ce_launch`` (int labels),
``softmax_ce_soft_launch``, ``mse_launch``, ``sigmoid_bce_launch`` (one parallel region each,
no checks: the documented jitted level, each returning the mean loss); the checked
wrappers ``softmax_cross_entropy``, ``mse``, ``sigmoid_bce``.  ``count_argmax_correct`` and
``count_threshold_correct`` count right predictions (jitted helpers).

Every loss is a *mean* (over rows for softmax-CE, over all N*C elements for MSE
and BCE, like PyTorch's defaults) and writes the gradient of that mean,
overwriting ``d*``.  Per-chunk partial sums go to a small ``partial`` buffer
(one slot per chunk) and are reduced serially in chunk order, so the loss is
bitwise reproducible for a given thread count.
"""
import math

import numpy as np
from numba import prange

from . import _check
from ._jit import cast_like, jit
from ._parallel import serial_sum, split
from .mathfn import exp, sigmoid


@jit
def softmax_ce_rows_int(d, z, labels, r0, r1, inv_n, want_grad):
    """Rows [r0, r1): returns sum of -log softmax(z)[label]; writes d (if want_grad)."""
    C = z.shape[1]
    total = 0.0
    sc = cast_like(inv_n, z)
    for n in range(r0, r1):
        row = z[n]
        m = row[0]
        for j in range(1, C):
            m = max(m, row[j])
        s = cast_like(0.0, z)
        if want_grad:
            out = d[n]
            for j in range(C):
                e = exp(row[j] - m)
                out[j] = e
                s += e
        else:
            for j in range(C):
                s += exp(row[j] - m)
        y = labels[n]
        total += math.log(s) + m - row[y]
        if want_grad:
            k = sc / s
            for j in range(C):
                out[j] *= k
            out[y] -= sc
    return total


@jit
def softmax_ce_rows_soft(d, z, t, r0, r1, inv_n, want_grad):
    """Rows [r0, r1) with soft targets t: returns sum_n sum_j -t_nj log p_nj; writes d."""
    C = z.shape[1]
    total = 0.0
    sc = cast_like(inv_n, z)
    for n in range(r0, r1):
        row = z[n]
        tr = t[n]
        m = row[0]
        for j in range(1, C):
            m = max(m, row[j])
        s = cast_like(0.0, z)
        for j in range(C):
            s += exp(row[j] - m)
        lse = math.log(s) + m
        tsum = 0.0
        for j in range(C):
            total += tr[j] * (lse - row[j])
            tsum += tr[j]
        if want_grad:
            out = d[n]
            k = sc * cast_like(tsum, z) / s
            for j in range(C):
                out[j] = exp(row[j] - m) * k - sc * tr[j]
    return total


@jit(parallel=True)
def softmax_ce_launch(d, z, labels, want_grad, partial, nchunks):
    N = z.shape[0]
    inv_n = 1.0 / N
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        partial[c] = softmax_ce_rows_int(d, z, labels, r0, r1, inv_n, want_grad)
    return serial_sum(partial, nchunks) * inv_n


@jit(parallel=True)
def softmax_ce_soft_launch(d, z, t, want_grad, partial, nchunks):
    N = z.shape[0]
    inv_n = 1.0 / N
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        partial[c] = softmax_ce_rows_soft(d, z, t, r0, r1, inv_n, want_grad)
    return serial_sum(partial, nchunks) * inv_n


@jit
def mse_rows(d, p, t, r0, r1, inv_count, want_grad):
    total = 0.0
    C = p.shape[1]
    g = cast_like(2.0 * inv_count, p)
    for n in range(r0, r1):
        pr = p[n]
        tr = t[n]
        for j in range(C):
            e = pr[j] - tr[j]
            total += e * e
            if want_grad:
                d[n, j] = g * e
    return total


@jit
def bce_rows(d, z, t, r0, r1, inv_count, want_grad):
    """Sigmoid + binary cross-entropy from logits: max(z,0) - z t + log1p(exp(-|z|))."""
    total = 0.0
    C = z.shape[1]
    g = cast_like(inv_count, z)
    for n in range(r0, r1):
        zr = z[n]
        tr = t[n]
        for j in range(C):
            v = zr[j]
            total += max(v, 0.0) - v * tr[j] + math.log1p(math.exp(-abs(v)))
            if want_grad:
                d[n, j] = g * (sigmoid(v) - tr[j])
    return total


@jit(parallel=True)
def mse_launch(d, p, t, want_grad, partial, nchunks):
    N, C = p.shape
    inv = 1.0 / (N * C)
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        partial[c] = mse_rows(d, p, t, r0, r1, inv, want_grad)
    return serial_sum(partial, nchunks) * inv


@jit(parallel=True)
def sigmoid_bce_launch(d, z, t, want_grad, partial, nchunks):
    N, C = z.shape
    inv = 1.0 / (N * C)
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        partial[c] = bce_rows(d, z, t, r0, r1, inv, want_grad)
    return serial_sum(partial, nchunks) * inv


@jit
def count_argmax_correct(logits, labels):
    """Number of rows whose first largest logit is at ``labels[row]``."""
    n = 0
    for i in range(logits.shape[0]):
        row = logits[i]
        best = 0
        for j in range(1, row.shape[0]):
            if row[j] > row[best]:
                best = j
        if best == labels[i]:
            n += 1
    return n


@jit
def count_threshold_correct(logits, targets):
    """Number of rows where every (logit >= 0) equals (target >= 0.5): sigmoid-BCE accuracy."""
    n = 0
    for i in range(logits.shape[0]):
        ok = True
        for j in range(logits.shape[1]):
            if (logits[i, j] >= 0) != (targets[i, j] >= 0.5):
                ok = False
        if ok:
            n += 1
    return n


def check_int_labels(labels, N, C, name="labels"):
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array (class indices), got {labels.dtype}")
    _check.shape(name, labels, (N,))
    if not labels.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    bad = _check.first_out_of_range(labels, C)
    if bad >= 0:
        raise ValueError(f"{name}: value {labels[bad]} at index {bad} is out of range [0, {C})")


def _prepare(dname, d, zname, z, tname, t, float_targets):
    _check.array(zname, z, ndim=2, finite=True)
    N, C = z.shape
    _check.nonempty(zname, N)
    if C == 0:
        raise ValueError(f"{zname}: expected at least one column, got shape {z.shape}")
    if float_targets:
        _check.array(tname, t, ndim=2, dtype=z.dtype, finite=True)
        _check.shape(tname, t, (N, C))
    else:
        check_int_labels(t, N, C, tname)
    if d is not None:
        _check.array(dname, d, ndim=2, dtype=z.dtype, writeable=True)
        _check.shape(dname, d, (N, C))
        _check.no_overlap([(dname, d)], [(zname, z), (tname, t)])
        return d, True
    return np.empty((0, z.shape[1]), z.dtype), False   # written: never a view of a read-only z


def softmax_cross_entropy(dlogits, logits, labels, nthreads=None):
    """Mean softmax cross-entropy; writes ``dlogits`` = d(mean loss)/d(logits) unless None.

    ``labels``: int (N,) class indices, or float (N, C) soft/one-hot targets.
    Max-shifted, so logits of +-1e4 stay finite.  Returns the loss as a float.
    """
    nt = _check.threads(nthreads)
    soft = isinstance(labels, np.ndarray) and labels.ndim == 2
    d, want = _prepare("dlogits", dlogits, "logits", logits, "labels", labels, soft)
    partial = np.empty(nt, np.float64)
    fn = softmax_ce_soft_launch if soft else softmax_ce_launch
    return float(fn(d, logits, labels, want, partial, nt))


def mse(dpred, pred, target, nthreads=None):
    """Mean squared error over all N*C elements; writes ``dpred`` = 2 (pred - target) / (N C)."""
    nt = _check.threads(nthreads)
    d, want = _prepare("dpred", dpred, "pred", pred, "target", target, True)
    return float(mse_launch(d, pred, target, want, np.empty(nt, np.float64), nt))


def sigmoid_bce(dlogits, logits, target, nthreads=None):
    """Mean binary cross-entropy of sigmoid(logits) vs ``target`` in [0, 1] (N, C);
    writes ``dlogits`` = (sigmoid(logits) - target) / (N C)."""
    nt = _check.threads(nthreads)
    d, want = _prepare("dlogits", dlogits, "logits", logits, "target", target, True)
    if target.min() < 0 or target.max() > 1:
        raise ValueError("target: sigmoid_bce targets must lie in [0, 1]")
    return float(sigmoid_bce_launch(d, logits, target, want, np.empty(nt, np.float64), nt))
