"""Gradient check: backprop gradients of every parameter vs central finite differences (float64)."""
import numpy as np


def gradcheck(model, X, y, eps=1e-6, max_per_tensor=50, seed=0, step=1, atol=1e-4):
    """Max relative error per parameter tensor, ``{"layer{i}.{name}": err}``.

    The model must be float64.  One batch = all of X (training mode: batch statistics in BatchNorm,
    the dropout mask of ``step``, identical in every evaluation).  At most ``max_per_tensor``
    randomly chosen entries per tensor are differenced.  Relative error is
    |g - n| / max(|g| + |n|, atol): central differences in float64 carry ~1e-10 of rounding noise,
    so gradients that are exactly zero (e.g. a Dense bias right before BatchNorm) would otherwise
    show huge "relative" errors; below ``atol`` the comparison is effectively absolute.
    Running statistics are restored afterwards.
    """
    if model.dtype != np.float64:
        raise ValueError("model: gradcheck needs a float64 model (Model(..., dtype='float64'))")
    X, y = model._check_xy(X, y)
    model._threads()
    ws = model._workspace(X.shape[0])
    ws.x[...] = X
    ws.y[...] = y
    saved = [(nd.running_mean.copy(), nd.running_var.copy()) for nd in model.nodes if nd.kind == "bn"]

    def loss():
        model._forward(ws, True, step)
        return model._loss(ws, False)

    try:
        model._forward(ws, True, step)
        model._loss(ws, True)
        model._backward(ws, False, 0.0, 0.0, step)
        grads = model.grads.copy()
        rng = np.random.default_rng(seed)
        out = {}
        for i, nd in enumerate(model.nodes):
            for name, off, n in nd.slots:
                idx = rng.choice(n, size=min(n, max_per_tensor), replace=False) + off
                worst = 0.0
                for j in idx:
                    old = model.params[j]
                    model.params[j] = old + eps
                    lp = loss()
                    model.params[j] = old - eps
                    lm = loss()
                    model.params[j] = old
                    num = (lp - lm) / (2 * eps)
                    worst = max(worst, abs(grads[j] - num) / max(abs(grads[j]) + abs(num), atol))
                out[f"layer{i}.{name}"] = worst
        return out
    finally:
        for nd, (m, v) in zip([nd for nd in model.nodes if nd.kind == "bn"], saved):
            nd.running_mean[...] = m
            nd.running_var[...] = v
