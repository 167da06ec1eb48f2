"""Compile every kernel fastbp's models use, ahead of time (``fastbp warmup``).

numba compiles on first use and caches the machine code on disk; a cold first ``fit`` of the
default MLP spends 10-20 s compiling.  ``warmup`` runs each op, loss and optimizer once on tiny
data so that later processes only load from the cache.
"""
import time

import numpy as np


def steps(dtype):
    """(description, callable) pairs that together compile every entry for ``dtype``."""
    from .layers import Activation, BatchNorm, Dense, Dropout
    from .model import Model
    from .optim import SGD, Adam, AdamW
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 4)).astype(dtype)
    labels = rng.integers(0, 3, 8)
    floats = rng.random((8, 3)).astype(dtype)
    layers = [Dense(5, "tanh"), BatchNorm("relu"), Dropout(0.5), Dense(4), Activation("sigmoid"), Dense(3)]
    out = []
    for loss, y in (("softmax_ce", labels), ("mse", floats), ("sigmoid_bce", floats)):
        for opt in (SGD(lr=0.01), SGD(lr=0.01, momentum=0.9), Adam(), AdamW()):
            def run(loss=loss, y=y, opt=opt):
                m = Model(layers, loss=loss, dtype=dtype)
                m.fit(X, y, epochs=1, batch_size=8, optimizer=opt)
                m.evaluate(X, y)
                m.predict_proba(X)
                m.loss_and_grads(X, y)
            out.append((f"{loss} + {type(opt).__name__}{' momentum' if getattr(opt, 'momentum', 0) else ''}",
                        run))
    return out


def warmup(dtypes=("float32",), progress=True):
    """Compile (or load from cache) everything for ``dtypes``; returns the seconds it took."""
    from tqdm import tqdm
    t0 = time.perf_counter()
    todo = [(dt, d, f) for dt in dtypes for d, f in steps(dt)]
    with tqdm(total=len(todo), unit="step", disable=not progress, desc="compiling") as bar:
        for dt, desc, fn in todo:
            bar.set_postfix_str(f"{dt} {desc}")
            fn()
            bar.update()
    return time.perf_counter() - t0
