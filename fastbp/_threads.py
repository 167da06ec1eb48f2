"""One thread domain: numba's.  BLAS is always called single-threaded from inside
numba's parallel regions (see kernels/_blas.py), so one number governs both."""
import os

import numba

from .kernels.validate import max_threads

_state = {"chosen": False}


def usable_cpus():
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup v2
    or v1 CPU quota (containers); numba's default counts every CPU of the machine instead."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, period = f.read().split()[:2]
            if q != "max":
                quota = int(q) / int(period)
    except (OSError, ValueError):
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
                q = int(f.read())
                if q > 0:
                    quota = q / int(g.read())
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def apply_default_threads():
    """Once, before the first model runs: numba's thread count becomes the CPUs this process may
    use, unless the user chose (NUMBA_NUM_THREADS, or set_num_threads before)."""
    if _state["chosen"]:
        return
    _state["chosen"] = True
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    n = min(usable_cpus(), max_threads())
    if n < numba.get_num_threads():
        numba.set_num_threads(n)


def set_num_threads(n):
    """Use ``n`` threads for every fastbp kernel (numba's pool; BLAS calls stay single-threaded)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads():
        raise ValueError(f"n: expected an int in [1, {max_threads()}] (NUMBA_NUM_THREADS), got {n!r}")
    _state["chosen"] = True
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
