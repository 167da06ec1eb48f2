"""One thread domain: numba's.  BLAS is always called single-threaded from inside
numba's parallel regions (see kernels/_blas.py), so one number governs both."""
import numba

from .kernels.validate import max_threads


def set_num_threads(n):
    """Use ``n`` threads for every fastbp kernel (numba's pool; BLAS calls stay single-threaded)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads():
        raise ValueError(f"n: expected an int in [1, {max_threads()}] (NUMBA_NUM_THREADS), got {n!r}")
    numba.set_num_threads(n)


def get_num_threads():
    return numba.get_num_threads()


def threading_info():
    """Which threading layer and BLAS fastbp runs on (the layer is known after the first parallel call)."""
    from .kernels import blas_info
    blas = blas_info()
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {"numba_threads": numba.get_num_threads(), "threading_layer": layer,
            "blas": blas["backend"], "blas_library": blas["library"], "blas_threads_per_call": 1}
