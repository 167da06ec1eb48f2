"""Gradient check: backprop gradients of every parameter vs central finite differences (float64)."""
import numpy as np


def gradcheck(model, X, y, eps=1e-6, max_per_tensor=50, seed=0, step=1, atol=1e-4):
    """Max relative error per parameter tensor, ``{"layer{i}.{name}": err}``.

    The model must be float64.  One batch = all of X (training mode: batch statistics in BatchNorm,
    the dropout mask of ``step``, identical in every evaluation), through the public
    ``model.loss_and_grads``, which changes no running statistic.  At most ``max_per_tensor``
    randomly chosen entries per tensor are differenced.  Relative error is
    |g - n| / max(|g| + |n|, atol): central differences in float64 carry ~1e-10 of rounding noise,
    so gradients that are exactly zero (e.g. a Dense bias right before BatchNorm) would otherwise
    show huge "relative" errors; below ``atol`` the comparison is effectively absolute.
    """
    if model.dtype != np.float64:
        raise ValueError("model: gradcheck needs a float64 model (Model(..., dtype='float64'))")
    was = model.training
    model.train()
    try:
        _, g = model.loss_and_grads(X, y, step=step)
        grads = g.copy()
        params = model.params
        rng = np.random.default_rng(seed)
        out = {}
        for i, name, off, n in model.plan.slots:
            idx = rng.choice(n, size=min(n, max_per_tensor), replace=False) + off
            worst = 0.0
            for j in idx:
                old = params[j]
                params[j] = old + eps
                lp = model.loss_and_grads(X, y, step=step)[0]
                params[j] = old - eps
                lm = model.loss_and_grads(X, y, step=step)[0]
                params[j] = old
                num = (lp - lm) / (2 * eps)
                worst = max(worst, abs(grads[j] - num) / max(abs(grads[j]) + abs(num), atol))
            out[f"layer{i}.{name}"] = worst
        model.grads[...] = grads
        return out
    finally:
        model.training = was
