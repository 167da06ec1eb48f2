"""Scalar argument checks in plain Python (no numba import at module level): shared by the checked kernel
wrappers and by fastbp's layer specs and optimizers.  Bool is never a number; numpy
scalars are accepted wherever Python numbers are."""
import math
import numbers

import numpy as np


def real(name, v):
    """A real number (Python or numpy; bool is not a number) as float; finite."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__} {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name}: must be finite, got {v!r}")
    return f


def scalar(name, v, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite real in [lo, hi] (open ends with ``lo_open``/``hi_open``)."""
    f = real(name, v)
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise ValueError(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (f > hi or (hi_open and f == hi)):
        raise ValueError(f"{name}: must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return f


def integer(name, v, lo=None, hi=None):
    """A Python or numpy integer (bool is not) in [lo, hi], as int; ValueError names ``name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name}: expected {_what(lo, hi)}, got {type(v).__name__} {v!r}")
    n = int(v)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise ValueError(f"{name}: expected {_what(lo, hi)}, got {v!r}")
    return n


def _what(lo, hi):
    if lo == 1 and hi is None:
        return "a positive int"
    if hi is None:
        return f"an int >= {lo}" if lo is not None else "an int"
    return f"an int in [{lo}, {hi}]"


def flag(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def max_threads():
    """The largest thread count numba's pool has (NUMBA_NUM_THREADS)."""
    from numba import config
    return int(config.NUMBA_NUM_THREADS)


def max_chunks():
    """The most chunks a kernel call may be cut into (``nthreads`` of the checked wrappers):
    chunks beyond the pool's threads are legal (they queue), a runaway count is not."""
    return max(64, 4 * max_threads())


def threads(nthreads, name="nthreads"):
    """``None`` -> numba's current thread count; else a positive int no larger than ``max_chunks()``."""
    if nthreads is None:
        from numba import get_num_threads
        return get_num_threads()
    if isinstance(nthreads, (bool, np.bool_)) or not isinstance(nthreads, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(nthreads).__name__} {nthreads!r}")
    if nthreads < 1:
        raise ValueError(f"{name}: must be >= 1, got {nthreads!r}")
    if nthreads > max_chunks():
        raise ValueError(f"{name}: must be <= {max_chunks()} (4 x NUMBA_NUM_THREADS, at least 64), got {nthreads!r}")
    return int(nthreads)


class Bf16Unavailable(RuntimeError):
    """precision='bf16' cannot run here: the CPU lacks the instructions or MKL is not installed."""


class Bf16SlowWarning(RuntimeWarning):
    """precision='bf16' runs here, but MKL's bf16 GEMM is not faster than fp32 on this CPU."""
