"""Compiling ahead: ``fastbp warmup``, and a cold first run spread over helper processes.

numba compiles on first use and caches the machine code on disk; a cold first ``fit`` of the
default MLP spends ~10 s compiling on one core.  ``warmup`` runs each op, loss and optimizer once
on tiny data so that later processes only load from the cache.

On a cold cache, a new plan (``start_helpers``) hands the costliest of its uncached entries to
helper processes (one per spare CPU, at most 3) that compile them into numba's cache, while this
process compiles the rest and builds its typed lists; ``wait_for`` then waits for the helper
that owns an entry before this process loads it from the cache.  numba writes cache files
atomically, so a reader never sees half an entry; a helper that fails or is too slow only means
this process compiles the entry itself.  FASTBP_PARALLEL_COMPILE=0 turns it off.
"""
import atexit
import os
import subprocess
import sys
import threading
import time

import numpy as np

#: seconds each entry took to compile, serially, on the 2-core AMD EPYC VM (2026-12-04, with its
#: callees): only to balance the helpers
COST = {"dense_backward_entry": 6.5, "dense_forward_entry": 3.5, "dense_forward_small_entry": 5.5,
        "softmax_ce_entry": 2.3, "batchnorm_backward_entry": 2.0, "batchnorm_forward_entry": 1.5}
#: s the first process spends meanwhile: the input check and batch gather kernels, typed lists, the runner
OWN_WORK = 4.0
HELPER_START = 0.6   # s a helper needs to import numba and fastbp
WAIT_LIMIT = 300.0   # s after which a helper is given up (this process then compiles the entry)
ENV = "FASTBP_PARALLEL_COMPILE"

_helpers = {}        # (entry function, dtype name) -> the helper process compiling it
_LOCK = threading.Lock()   # plans built at once in threads (simulated ranks) must not both spawn
spawned = []         # the entry names each helper was given, in start order (for tests and bench)

_HELPER = """
import importlib, sys
from fastbp.program import _compiled
if any("bf16" in name for name in sys.argv[2:]):
    from fastbp.kernels import bind_bf16
    bind_bf16()
for name in sys.argv[2:]:
    mod, fn = name.split(":")
    _compiled(getattr(importlib.import_module(mod), fn), sys.argv[1])
"""


def cached(fn, dtype):
    """Whether numba's disk cache holds ``fn`` compiled for ``dtype`` (None: cannot tell)."""
    from ._numba_internals import disk_cached
    from .program import entry_signature
    return disk_cached(fn, entry_signature(dtype))


def start_helpers(fns, dtype):
    """Hand the costliest uncached entries of a new plan to helper processes (see module doc)."""
    with _LOCK:
        return _start_helpers(fns, dtype)


def _start_helpers(fns, dtype):
    from ._threads import env_off, usable_cpus
    from .distributed import launched_ranks
    from .kernels import JIT_DISABLED
    from .program import _COMPILED
    if JIT_DISABLED or env_off(ENV):
        return []
    if (launched_ranks() or 1) > 1:    # MPI ranks: each compiles on its own CPU already
        return []
    dtype = np.dtype(dtype).name
    cold = [fn for fn in dict.fromkeys(fns)
            if (fn, dtype) not in _COMPILED and (fn, dtype) not in _helpers and cached(fn, dtype) is False]
    k = min(usable_cpus() - 1, len(cold) - 1, 3)
    if k < 1:
        return []
    loads, parts = [OWN_WORK] + [HELPER_START] * k, [[] for _ in range(k + 1)]
    for fn in sorted(cold, key=lambda f: COST.get(f.__name__, 1.0), reverse=True):   # longest first
        i = loads.index(min(loads))
        parts[i].append(fn)
        loads[i] += COST.get(fn.__name__, 1.0)
    env = dict(os.environ)
    from numba import config
    if config.CACHE_DIR:
        env["NUMBA_CACHE_DIR"] = config.CACHE_DIR    # the read-only-install fallback, said once here
    procs = []
    for part in parts[1:]:
        if not part:
            continue
        names = [f"{fn.py_func.__module__}:{fn.__name__}" for fn in part]
        try:
            p = subprocess.Popen([sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _HELPER, dtype,
                                  *names], env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            continue
        if not _helpers:
            atexit.register(stop_helpers)
        spawned.append(names)
        procs.append(p)
        for fn in part:
            _helpers[(fn, dtype)] = p
    return procs


def helping(fn, dtype):
    return (fn, np.dtype(dtype).name) in _helpers


def wait_for(fn, dtype):
    """If a helper compiles ``fn`` for ``dtype``, wait until it is done (it wrote numba's cache)."""
    p = _helpers.pop((fn, np.dtype(dtype).name), None)
    if p is None:
        return
    try:
        p.wait(timeout=WAIT_LIMIT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def stop_helpers():
    """End helpers still running (at exit, or a plan given up)."""
    for p in set(_helpers.values()):
        if p.poll() is None:
            p.kill()
            p.wait()
    _helpers.clear()


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

    def small_batches():     # the forward cut along D: scheduled only for small batches of wide layers
        from .ops import dense_forward_small_entry
        from .program import _compiled
        _compiled(dense_forward_small_entry, dtype)
    out.append(("small-batch dense forward", small_batches))

    def graph():             # Add, Concat and the sum of the deltas of a tensor read twice
        from .graph import Input
        from .layers import Add, Concat
        h = Dense(5, "tanh")(Input(4))
        m = Model(Dense(3)(Concat()(Add()(h, Dense(5, "tanh")(h)), h)), dtype=dtype)
        m.fit(X, labels, epochs=1, batch_size=8)
        m.predict_proba(X)
    out.append(("graph (Add, Concat)", graph))
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
