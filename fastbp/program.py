"""A step program: the ordered list of jitted *entries* that one call runs, and its runner.

Every op, loss and optimizer contributes entries with one uniform signature::

    entry(a2, a1, ai, af, ia, fa, t, lr, training, nt) -> float64

* ``a2`` / ``a1``: numba typed Lists of the workspace's 2-D / 1-D arrays of the model dtype
  (batch, outputs, deltas, parameter and gradient views, state, scratch);
* ``ai``: typed List of int64 1-D arrays (class labels); ``af``: float64 1-D arrays
  (``af[0]`` per-chunk partial sums, ``af[1]`` the step statistics ``[loss, correct]``);
* ``ia`` / ``fa``: this entry's own int64 / float64 arguments (list indices, activation
  codes, flags; slopes, momenta, probabilities), packed by name from the entry's declared
  ``Signature`` (``fastbp.signature``) and read by the entry through the same declaration;
* ``t`` step number (dropout key, Adam's bias correction), ``lr``, ``training``, ``nt`` chunks.

An entry returns its contribution to the program's value (losses return the loss, all others
0).  ``run_program`` calls the entries in order through first-class function pointers, so the
whole training step of *any* layer mix is one jitted call from Python: no per-layer dispatch
and no allocation.  With ``NUMBA_DISABLE_JIT=1`` the same code runs as plain Python.
"""
import sys
import threading
import time

import numpy as np
from numba import from_dtype, types
from numba.typed import List

from ._numba_internals import function_value, is_function_value
from .kernels import JIT_DISABLED, jit


def entry_signature(dtype):
    """The numba signature every entry is compiled with, for arrays of ``dtype``."""
    f = from_dtype(np.dtype(dtype))
    return types.float64(types.ListType(f[:, ::1]), types.ListType(f[::1]), types.ListType(types.int64[::1]),
                         types.ListType(types.float64[::1]), types.int64[::1], types.float64[::1], types.int64,
                         types.float64, types.boolean, types.int64)


_COMPILED = {}   # (entry function, dtype name) -> first-class function value

#: seconds spent compiling (or loading from numba's cache) entries in this process
compile_seconds = [0.0]
NOTICE_AFTER = 1.0   # seconds: a compile that takes longer than this says so on stderr, once


class _Notice:
    """Prints one line if compiling takes longer than NOTICE_AFTER (i.e. numba's cache was cold)."""
    shown = False

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype).name
        self.timer = threading.Timer(NOTICE_AFTER, self._say)
        self.timer.daemon = True

    def _say(self):
        if not _Notice.shown:
            _Notice.shown = True
            sys.stderr.write(f"fastbp: compiling kernels for {self.dtype} (first run only; cached afterwards, "
                             f"about 5-20 s; `fastbp warmup` does it ahead of time)...\n")
            sys.stderr.flush()

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        dt = time.perf_counter() - self.t0
        compile_seconds[0] += dt
        if self.timer.finished.is_set() and _Notice.shown and dt > NOTICE_AFTER:
            sys.stderr.write(f"fastbp: compiled in {dt:.1f} s\n")
            sys.stderr.flush()


def _compiled(fn, dtype):
    """``fn`` compiled (or loaded from numba's cache) for ``dtype``, as a first-class function
    value of type FunctionType(entry signature): every entry then has the same numba type, so the
    typed List of entries needs one (cached) compile, not one per entry function."""
    if JIT_DISABLED:
        return fn
    key = (fn, np.dtype(dtype).name)
    wap = _COMPILED.get(key)
    if wap is None:
        from .warmup import wait_for
        wait_for(fn, dtype)      # a helper process may be compiling it into the cache
        sig = entry_signature(dtype)
        fn.compile(sig)
        wap = _COMPILED[key] = function_value(fn, sig)
    return wap


@jit
def _list_of(a):
    out = List()
    out.append(a)
    return out


@jit
def _append(lst, a):
    lst.append(a)


@jit
def _setitem(lst, i, a):
    lst[i] = a


def set_item(lst, i, a):
    """``lst[i] = a`` for a typed List of arrays through a cached jitted call (see typed_list)."""
    if JIT_DISABLED:
        lst[i] = a
    else:
        _setitem(lst, i, a)


def typed_list(items, item_type=None):
    """A numba typed List (a plain list in pure-Python mode).

    Lists of arrays are built by two small cached jitted functions: building them from Python
    would compile numba's list helpers anew in every process (~0.8 s per item type)."""
    items = list(items)
    if JIT_DISABLED:
        return items
    if items and (isinstance(items[0], np.ndarray) or is_function_value(items[0])):
        out = _list_of(items[0])
        for it in items[1:]:
            _append(out, it)
        return out
    out = List.empty_list(item_type) if item_type is not None else List()
    for it in items:
        out.append(it)
    return out


class Program:
    """Entries in call order, ready to run on one workspace."""

    def __init__(self, dtype, entries):
        """``entries``: iterable of (jitted fn, int args, float args)."""
        entries = [e for e in entries if e is not None]
        self.names = [fn.__name__ for fn, _, _ in entries]
        ft = None if JIT_DISABLED else types.FunctionType(entry_signature(dtype))
        with _Notice(dtype):
            from .warmup import helping
            helped = [helping(fn, dtype) for fn, _, _ in entries]
            fns = [None] * len(entries)   # this process's own first, then what helpers compiled
            for i in sorted(range(len(entries)), key=helped.__getitem__):
                if helped[i]:
                    prepare_runner(dtype)    # meanwhile: the list builders and the runner (once)
                fns[i] = _compiled(entries[i][0], dtype)
            self.fns = typed_list(fns, ft)
        self.ias = typed_list([np.asarray(ia, np.int64) for _, ia, _ in entries],
                              None if JIT_DISABLED else types.int64[::1])
        self.fas = typed_list([np.asarray(fa, np.float64) for _, _, fa in entries],
                              None if JIT_DISABLED else types.float64[::1])

    def __repr__(self):
        return f"Program({', '.join(self.names)})"

    def run(self, ws, t, lr, training, nt):
        return run_program(self.fns, self.ias, self.fas, ws.a2, ws.a1, ws.ai, ws.af, t, float(lr),
                           bool(training), nt)


_PREPARED = set()


def prepare_runner(dtype):
    """Compile (or load) the typed-list builders and ``run_program`` for ``dtype`` ahead of their
    first call; a cold first run does it while helper processes compile the entries."""
    name = np.dtype(dtype).name
    if JIT_DISABLED or name in _PREPARED:
        return
    _PREPARED.add(name)
    f = from_dtype(np.dtype(dtype))
    items = list(dict.fromkeys([f[:, ::1], f[::1], types.int64[::1], types.float64[::1],
                                types.FunctionType(entry_signature(dtype))]))
    for it in items:
        _list_of.compile((it,))
        _append.compile((types.ListType(it), it))
    _setitem.compile((types.ListType(f[:, ::1]), types.int64, f[:, ::1]))
    sig = entry_signature(dtype)
    run_program.compile((types.ListType(items[-1]), types.ListType(types.int64[::1]),
                         types.ListType(types.float64[::1])) + tuple(sig.args[:4]) + tuple(sig.args[6:]))


@jit
def run_program(fns, ias, fas, a2, a1, ai, af, t, lr, training, nt):
    """Call every entry in order; returns the sum of what they return."""
    total = 0.0
    for i in range(len(fns)):
        total += fns[i](a2, a1, ai, af, ias[i], fas[i], t, lr, training, nt)
    return total
