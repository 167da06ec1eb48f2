"""The single place where fastbp's kernels get their JIT options.

Every jitted function in fastbp (kernels and the model's step entries) is compiled
through :func:`jit`; nothing else calls ``numba.njit`` directly.

Options and why:

* ``cache=True``: the first call in a fresh process otherwise costs seconds of
  compilation; with the on-disk cache later processes load machine code.
* ``fastmath={'contract', 'reassoc', 'nsz', 'arcp'}``: lets LLVM fuse
  multiply-adds and vectorize reductions.  ``nnan``/``ninf`` are *not* set: the
  kernels must keep IEEE semantics for inf (softmax max-shift, exp overflow) and
  the wrappers' NaN checks must not be optimised away.
* ``error_model='numpy'``: no Python-style ZeroDivisionError checks inside loops,
  so loops vectorize; the wrappers validate inputs before any kernel runs.
* ``nogil=True``: kernels release the GIL so callers may run them from threads.
* ``boundscheck=False``: the wrappers check shapes once; kernels trust them.

Pure-Python mode: with ``NUMBA_DISABLE_JIT=1`` every jitted function is plain
Python (``prange`` is ``range``).  The intrinsics below then have numpy
fallbacks, so the kernels run (slowly) under coverage and a debugger.
"""
import os
import sys
import tempfile

import numpy as np
from numba import config, njit, types
from numba.extending import intrinsic

FASTMATH = frozenset({"contract", "reassoc", "nsz", "arcp"})

JIT_OPTIONS = dict(cache=True, fastmath=set(FASTMATH), error_model="numpy",
                   nogil=True, boundscheck=False)

#: True when numba runs everything as Python (``NUMBA_DISABLE_JIT=1``).
JIT_DISABLED = bool(config.DISABLE_JIT)


def _writable(folder):
    while not os.path.isdir(folder):          # the nearest existing ancestor decides
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.access(folder, os.W_OK | os.X_OK)


def cache_dir_fallback():
    """Where numba caches fastbp's machine code when it cannot next to the package (a read-only
    install): a per-user cache folder, else one in the temporary directory; None when no fallback
    is needed or ``NUMBA_CACHE_DIR`` is set (the user's choice wins)."""
    if JIT_DISABLED or os.environ.get("NUMBA_CACHE_DIR"):
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    if _writable(os.path.join(here, "__pycache__")):
        return None
    home = os.environ.get("HOME")
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(home, ".cache") if home else None)
    for cand in ([os.path.join(base, "fastbp", "numba")] if base else []) + [
            os.path.join(tempfile.gettempdir(), f"fastbp-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")]:
        if _writable(cand):
            return cand
    return None


_FALLBACK = cache_dir_fallback()
if _FALLBACK is not None:   # set before any function is decorated: numba resolves the cache locator then
    config.CACHE_DIR = _FALLBACK
    sys.stderr.write(f"fastbp: the install folder is read-only; numba caches compiled kernels in {_FALLBACK} "
                     f"(set NUMBA_CACHE_DIR to choose)\n")


def jit(fn=None, *, parallel=False, inline="never"):
    """Compile ``fn`` with fastbp's options (``parallel`` for prange kernels).

    In pure-Python mode the function runs as Python under ``np.errstate(all="ignore")``, so that
    it behaves like the machine code: IEEE results (inf, NaN, uint64 wrap-around) and no warnings."""
    def wrap(f):
        if JIT_DISABLED:
            return _as_machine(f)
        return njit(parallel=parallel, inline=inline, **JIT_OPTIONS)(f)
    return wrap(fn) if fn is not None else wrap


def _as_machine(f):
    import functools

    @functools.wraps(f)
    def run(*args):
        with np.errstate(all="ignore"):
            return f(*args)
    run.py_func = f
    return run


if JIT_DISABLED:
    def cast_like(value, like):
        """Pure-Python fallback: ``value`` as a scalar of ``like``'s dtype (overflow to inf, silently,
        as LLVM's conversion does)."""
        dt = like.dtype if isinstance(like, np.ndarray) else np.asarray(like).dtype
        with np.errstate(over="ignore"):
            return dt.type(value)
else:
    @intrinsic
    def cast_like(typingctx, value, like):
        """``value`` converted to the dtype of array ``like`` (or to ``like``'s type).

        Lets one generic kernel keep float32 arithmetic in float32: a Python float
        literal is float64 in numba and would otherwise promote the whole loop.
        """
        target = like.dtype if isinstance(like, types.Array) else like
        if not isinstance(value, (types.Number, types.Boolean)) or not isinstance(target, types.Number):
            return None

        def codegen(context, builder, sig, args):
            return context.cast(builder, args[0], sig.args[0], target)

        return target(value, like), codegen
