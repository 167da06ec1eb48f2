"""Argument checks shared by the public kernel wrappers (plain Python + one jitted scan).

Every public kernel validates *all* of its arguments with these helpers before any
kernel runs, so a bad call raises and writes nothing.
"""
import numpy as np

from ._jit import jit

FLOATS = (np.float32, np.float64)


@jit
def _count_nonfinite(flat):
    n = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        if not (v - v == 0):   # false for nan and +-inf; survives fastmath (no nnan/ninf)
            n += 1
    return n


def array(name, a, ndim=None, dtype=None, writeable=False, finite=False):
    """Check that ``a`` is a C-contiguous float32/float64 ndarray (of ``dtype``)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if dtype is None:
        if a.dtype.type not in FLOATS:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (like the other arrays), got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (use np.ascontiguousarray)")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: output array is read-only")
    if finite and a.size and _count_nonfinite(a.reshape(-1)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def shape(name, a, expected):
    """``expected`` is a tuple; the message names the argument and both shapes."""
    if a.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {a.shape}")


def nonempty(name, n):
    if n == 0:
        raise ValueError(f"{name}: empty batch (0 rows)")


def no_overlap(out_name, out, *others):
    """Outputs must not alias inputs (the kernels stream over them in parallel)."""
    for oname, o in others:
        if o is not None and np.may_share_memory(out, o):
            raise ValueError(f"{out_name}: must not share memory with {oname}")


def scalar(name, v, lo=None, hi=None, lo_open=False):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}") from None
    if not np.isfinite(f):
        raise ValueError(f"{name}: must be finite, got {v!r}")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise ValueError(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and f > hi:
        raise ValueError(f"{name}: must be <= {hi}, got {v!r}")
    return f


def threads(nthreads):
    from numba import get_num_threads
    if nthreads is None:
        return get_num_threads()
    n = int(nthreads)
    if n < 1:
        raise ValueError(f"nthreads: must be >= 1, got {nthreads!r}")
    return n
