"""Argument checks shared by the checked kernel wrappers (plain Python + two jitted scans).

Every checked wrapper validates *all* of its arguments with these helpers before any
kernel runs, so a bad call raises ``TypeError``/``ValueError`` naming the argument and
writes nothing.
"""
import functools

import numpy as np
from numba import prange

from ._jit import JIT_DISABLED, jit
from .validate import flag, integer, max_threads, real, scalar, threads  # noqa: F401  (one import point)


def _jit_or_numpy(fn, parallel=False):
    """``count_nonfinite``(``_launch``): jitted; in pure-Python mode numpy's isfinite (``inf - inf`` would warn)."""
    if JIT_DISABLED:
        return lambda flat, nchunks=1: int(np.count_nonzero(~np.isfinite(flat)))
    return jit(fn, parallel=parallel)

FLOATS = (np.float32, np.float64)


@_jit_or_numpy
def count_nonfinite(flat):
    """Number of NaN/inf entries of a 1-D array, on the calling thread (jitted; documented helper)."""
    n = 0
    for i in range(flat.shape[0]):
        v = flat[i]
        if not (v - v == 0):   # false for nan and +-inf; survives fastmath (no nnan/ninf)
            n += 1
    return n


#: below this many entries a parallel scan costs more than it saves: the launch scans serially
PARALLEL_SCAN_FROM = 1 << 18


@functools.partial(_jit_or_numpy, parallel=True)
def count_nonfinite_launch(flat, nchunks):
    """``count_nonfinite`` by ``nchunks`` slices over numba's threads (a count per slice, summed;
    the result does not depend on ``nchunks``), from ``PARALLEL_SCAN_FROM`` entries on; shorter
    arrays are scanned on the calling thread.  Allocates the per-slice counts."""
    n = flat.shape[0]
    if n < PARALLEL_SCAN_FROM or nchunks <= 1:
        return count_nonfinite(flat)
    partial = np.zeros(nchunks, np.int64)
    for c in prange(nchunks):       # sliced first, then scanned from 0 (see docs/design.md: it vectorizes)
        partial[c] = count_nonfinite(flat[(c * n) // nchunks:((c + 1) * n) // nchunks])
    total = 0
    for c in range(nchunks):
        total += partial[c]
    return total


def scan_nonfinite(flat, nchunks):
    """``count_nonfinite_launch`` from Python: below ``PARALLEL_SCAN_FROM`` entries (or with one chunk)
    the serial scan is called directly, so a process that only checks small inputs never compiles
    the parallel region (1.2 s of a cold start on the 2-core VM)."""
    if flat.shape[0] < PARALLEL_SCAN_FROM or nchunks <= 1:
        return count_nonfinite(flat)
    return count_nonfinite_launch(flat, nchunks)


@jit
def first_out_of_range(labels, C):
    """Index of the first label outside [0, C), or -1 (jitted; documented helper)."""
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= C:
            return i
    return -1


def array(name, a, ndim=None, dtype=None, writeable=False, finite=False):
    """Check that ``a`` is a C-contiguous, native-byte-order float32/float64 ndarray (of ``dtype``)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if dtype is None:
        if a.dtype.type not in FLOATS:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (like the other arrays), got {a.dtype}")
    if not a.dtype.isnative:
        raise TypeError(f"{name}: expected native byte order, got {a.dtype.str} "
                        f"(use a.astype(a.dtype.newbyteorder('=')))")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (use np.ascontiguousarray)")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: output array is read-only")
    if finite and a.size and count_nonfinite(a.reshape(-1)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def shape(name, a, expected):
    """``expected`` is a tuple; the message names the argument and both shapes."""
    if a.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {a.shape}")


def nonempty(name, n):
    if n == 0:
        raise ValueError(f"{name}: empty batch (0 rows)")


def no_overlap(outputs, inputs):
    """No output may share memory with another output or with any input.

    ``outputs`` and ``inputs`` are lists of (name, array or None).  In-place pairs that a
    kernel supports are simply not listed by its wrapper (e.g. ``out`` is ``x``)."""
    outs = [(n, a) for n, a in outputs if a is not None]
    ins = [(n, a) for n, a in inputs if a is not None]
    for i, (on, o) in enumerate(outs):
        for other, a in outs[i + 1:] + ins:
            if np.may_share_memory(o, a):
                raise ValueError(f"{on}: must not share memory with {other}")


def same_or_disjoint(out_name, out, in_name, inp):
    """``out`` may be ``inp`` itself (in place) but must not partly overlap it."""
    if np.may_share_memory(out, inp) and not (out.ctypes.data == inp.ctypes.data and out.shape == inp.shape
                                              and out.strides == inp.strides):
        raise ValueError(f"{out_name}: must be {in_name} itself (in place) or not share memory with it")
