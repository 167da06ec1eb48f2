"""Checks and conversions of user data (X, y, batch sizes) before anything runs."""
import numpy as np

from .kernels import scan_nonfinite
from .kernels.validate import flag, integer, scalar  # noqa: F401  (re-exported for the facade)


def positive_int(name, v):
    return integer(name, v, 1)


def as_array(v, name):
    """Any array-like as a numpy array: arrays and memmaps as they are, torch tensors through
    ``.numpy()`` (detached, on the CPU), lists and other ``np.asarray``-convertible objects."""
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):   # torch, without importing it
        return v.detach().cpu().numpy()
    if v is None or isinstance(v, (str, bytes, dict, set)):
        raise TypeError(f"{name}: expected an array-like of numbers, got {type(v).__name__}")
    try:
        a = np.asarray(v)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name}: cannot be read as an array ({e})") from None
    if a.dtype == object:
        raise TypeError(f"{name}: expected an array-like of numbers, got objects of {type(v).__name__}")
    return a


def nonfinite(flat):
    """Number of NaN/inf entries of a 1-D array: numba's threads scan large arrays (one slice each)."""
    import numba
    return scan_nonfinite(flat, numba.get_num_threads())


def features(X, dtype, input_dim, name="X"):
    """X as a C-contiguous (n, input_dim) array of ``dtype``: a copy unless it already is one
    (any array-like is accepted, see ``as_array``).  ``input_dim`` None accepts any width."""
    X = as_array(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: empty (0 samples)")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got {X.dtype}")
    if input_dim is not None and X.shape[1] != input_dim:
        raise ValueError(f"{name}: expected {input_dim} features, got {X.shape[1]}")
    X = np.ascontiguousarray(X, dtype=dtype)
    if nonfinite(X.reshape(-1)):
        raise ValueError(f"{name}: contains NaN or inf")
    return X


def targets(loss, y, n, C, dtype, name="y"):
    y = as_array(y, name)
    if y.ndim == 0:
        raise ValueError(f"{name}: expected one target per row of X ({n}), got a scalar")
    if y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows like X, got {y.shape[0]}")
    return loss.check_targets(y, n, C, dtype, name)
