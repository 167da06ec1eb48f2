"""One thread domain: numba's.  BLAS is always called single-threaded from inside
numba's parallel regions (see kernels/_blas.py), so one number governs both."""
import os
import threading
import time
from contextlib import contextmanager

import numba

from .kernels.validate import max_threads

_state = {"applied": False, "explicit": False}

#: FASTBP_ADAPTIVE_THREADS=0 turns the governor off (the thread count then stays as chosen)
ADAPTIVE_ENV = "FASTBP_ADAPTIVE_THREADS"


def cpu_quota():
    """CPUs a cgroup v2 or v1 CPU quota allows this process (containers), or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, period = f.read().split()[:2]
            return int(q) / int(period) if q != "max" else None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
            q = int(f.read())
            return q / int(g.read()) if q > 0 else None
    except (OSError, ValueError):
        return None


def affinity():
    """The set of CPU ids this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def usable_cpus():
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup v2
    or v1 CPU quota (containers); numba's default counts every CPU of the machine instead."""
    n = len(affinity())
    quota = cpu_quota()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def apply_default_threads():
    """Once, before the first model runs: numba's thread count becomes the CPUs this process may
    use, unless the user chose (NUMBA_NUM_THREADS, or set_num_threads before)."""
    if _state["applied"]:
        return
    _state["applied"] = True
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    n = min(usable_cpus(), max_threads())
    if n < numba.get_num_threads():
        numba.set_num_threads(n)


def set_num_threads(n):
    """Use ``n`` threads for every fastbp kernel (numba's pool; BLAS calls stay single-threaded).
    An explicit count is a ceiling: training still steps down while other processes hold the cores
    (results do not change); FASTBP_ADAPTIVE_THREADS=0 pins it."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads():
        raise ValueError(f"n: expected an int in [1, {max_threads()}] (NUMBA_NUM_THREADS), got {n!r}")
    _state["applied"] = _state["explicit"] = True
    numba.set_num_threads(n)


@contextmanager
def pinned(n):
    """``n`` threads (None: unchanged) inside the block, then the count and whether it was the
    user's explicit choice are restored (the sklearn estimators' ``n_threads``, bench tables)."""
    if n is None:
        yield
        return
    old, explicit = numba.get_num_threads(), _state["explicit"]
    set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)
        _state["explicit"] = explicit


@contextmanager
def capped(n):
    """At most ``n`` threads inside the block (a rank's share of its CPUs), then the count before."""
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(old, int(n))))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def cap(n):
    """At most ``n`` threads from now on (``fastbp bench --distributed``: the process is a rank)."""
    numba.set_num_threads(max(1, min(numba.get_num_threads(), int(n))))


def get_num_threads():
    return numba.get_num_threads()


_chunks = threading.local()    # per calling thread, as numba's own thread count is


def chunk_count():
    """How many chunks the kernels cut their work into: the count a running ``fit`` fixed at its
    start (the governor may run fewer threads meanwhile; validation and callbacks' predictions
    inside the fit must not change with it), else the calling thread's thread count."""
    return getattr(_chunks, "n", None) or numba.get_num_threads()


@contextmanager
def fixed_chunks(n):
    """Inside the block, ``chunk_count()`` is ``n`` whatever the thread count becomes."""
    old = getattr(_chunks, "n", None)
    _chunks.n = int(n)
    try:
        yield
    finally:
        _chunks.n = old


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


def env_off(name):
    """True when environment variable ``name`` is set to 0 / false / no / off."""
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def adaptive():
    """Whether training adapts its thread count to the CPUs it actually gets: yes unless
    FASTBP_ADAPTIVE_THREADS=0.  A count the user chose (NUMBA_NUM_THREADS, ``set_num_threads``,
    ``--threads``) is the ceiling the governor starts from, not a pin: with an explicit 2 on 2
    shared cores, two trainings at once each ran 5.7x slower than alone while the governor stood
    aside for explicit counts."""
    return not env_off(ADAPTIVE_ENV)


def _runnable_elsewhere():
    """Runnable tasks on the machine that are not this process's: /proc/loadavg's running count
    minus this process's threads in state R (None where /proc is missing)."""
    try:
        with open("/proc/loadavg", "rb") as f:
            total = int(f.read().split()[3].split(b"/")[0])
        own = 0
        for t in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{t}/stat", "rb") as f:
                    s = f.read()
            except OSError:      # the thread ended meanwhile
                continue
            k = s.rindex(b")")
            own += s[k + 2:k + 3] == b"R"
        return max(0, total - own)
    except (OSError, ValueError, IndexError):
        return None


class Governor:
    """Keeps the number of running threads within the CPUs the process actually gets.

    Why: numba's OpenMP threads spin-wait at the end of every parallel region, and a step has
    several; when another process holds a core, every region waits for a descheduled thread and
    training collapses (6-13x slower with two trainings on 2 cores, where 2x is the fair share).

    How: the kernels' time is measured in windows of ``window`` seconds (wall clock and process
    CPU time, only around the step program, so data loading does not count).  A process that gets
    less than ``low`` of the CPU time its threads ask for in two windows in a row runs on
    round(CPUs it got) threads.  While below its maximum, it probes one more thread when the
    machine's other runnable tasks leave a CPU free; a probe that again gets too little CPU goes
    back and waits twice as long before the next one.

    Windows in which numba compiled are skipped (compiling runs on one thread).

    Results do not depend on it: the kernels cut their work into ``nt`` chunks fixed for the whole
    fit, whichever number of threads runs them, so weights stay bitwise identical."""

    def __init__(self, window=0.05, low=0.7, cpus=None, compiling=None):
        self.window, self.low = float(window), float(low)
        self.compiling = [0.0] if compiling is None else compiling   # seconds compiled so far (a 1-list)
        self.nmax = numba.get_num_threads()
        self.n = self.nmax
        self.cpus = usable_cpus() if cpus is None else int(cpus)
        self.wall = self.cpu = 0.0
        self.lows = 0
        self.probing = False
        self.backoff = 1
        self.next_probe = 0
        self.windows = 0
        self.changes = []      # (window index, new thread count), for the bench and tests
        self._t = self._c = 0.0

    def __enter__(self):
        self._k = self.compiling[0]
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self._t, time.process_time() - self._c
        if self.compiling[0] != self._k:    # numba compiled on one thread: not a sign of contention
            return False
        self.wall += wall
        self.cpu += cpu
        if self.wall >= self.window:
            self._decide(self.cpu / self.wall)
            self.wall = self.cpu = 0.0
        return False

    def _set(self, n):
        self.n = n
        self.changes.append((self.windows, n))
        numba.set_num_threads(n)

    def _decide(self, rate):
        self.windows += 1
        n = self.n
        if n > 1 and rate < self.low * n:
            self.lows += 1
            if self.lows >= 2 or self.probing:
                if self.probing:
                    self.backoff = min(self.backoff * 2, 64)
                self.probing, self.lows = False, 0
                self.next_probe = self.windows + self.backoff
                self._set(max(1, min(n - 1, int(rate + 0.5))))
            return
        self.lows = 0
        if self.probing:           # the probe got its CPUs: keep it
            self.probing, self.backoff = False, 1
        if n < self.nmax and self.windows >= self.next_probe:
            others = _runnable_elsewhere()
            if others is not None and self.cpus - others > n:
                self.probing = True
                self._set(min(self.nmax, self.cpus - others))

    def close(self):
        """Back to the thread count the fit started with."""
        if self.n != self.nmax:
            numba.set_num_threads(self.nmax)
            self.n = self.nmax
