"""Every buffer one batch size needs, and the typed Lists the step programs index into.

A workspace belongs to one call at a time: training uses the plan's workspace for its
batch size; inference takes one from a pool for the duration of the call, so concurrent
``predict`` calls never share buffers.
"""
import numpy as np

from .kernels import take_rows_launch
from .kernels.validate import max_threads
from .program import set_item, typed_list

ALIGN = 64   # bytes: a cache line and an AVX-512 register; numpy itself only guarantees 16


def available_bytes():
    """Memory the OS says is available (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(nbytes, what):
    """MemoryError naming ``what`` if ``nbytes`` exceeds the available memory (an allocation the
    OS would overcommit and then kill the process for)."""
    avail = available_bytes() if nbytes > 1 << 26 else None
    if avail is not None and nbytes > avail:
        raise MemoryError(f"{what} needs {nbytes / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB of memory "
                          f"is available")


def aligned_empty(shape, dtype, what="a buffer"):
    """An uninitialised C-contiguous array whose data starts on an ALIGN-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=object)) * dtype.itemsize
    check_memory(n, what)
    raw = np.empty(n + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off:off + n].view(dtype).reshape(shape)


class Workspace:
    """Buffers for batches of ``N`` rows of ``plan`` (shapes below: L ops, F_i = ops[i].out_dim)."""

    def __init__(self, plan, N, row0=0):
        dt = plan.dtype
        self.N = N
        self.row0 = int(row0)      # first row of this batch in the global batch (dropout masks)
        self.x = aligned_empty((N, plan.input_dim), dt)                       # (N, D0)  the batch
        self.outs = [aligned_empty((N, op.out_dim), dt) for op in plan.ops]   # (N, F_i) output of op i
        self.deltas = [aligned_empty((N, op.out_dim), dt) for op in plan.ops]  # (N, F_i) dL/d pre-activation
        self._ops = plan.ops
        self.extra_deltas = {(i, k): aligned_empty((N, plan.ops[s].out_dim), dt)   # (N, F_s) a second reader's
                             for (i, k), s in plan.extra.items()}                  # delta of its input k
        self.scratch = [{k: np.zeros(s, dt) for k, s in op.scratch_shapes().items()}  # per op, e.g. BN mean (F,)
                        for op in plan.ops]
        self.y = plan.loss.target_buffer(N, plan.output_dim, dt)         # (N,) int64 or (N, C) targets
        self.partial = np.zeros(max_threads(), np.float64)               # (threads,) per-chunk partial sums
        self.stats = np.zeros(2, np.float64)                             # [loss, correct] of the last run
        self.bf16_ok = np.zeros(len(plan.ops), np.int64)                 # (L,) 1: op i's bf16 W copy is current
        self._a2, self._a1, self._ai = [np.empty((0, 0), dt)], [np.empty(0, dt)], [np.empty(0, np.int64)]
        self._ids = {}
        self.programs = {}
        self._finished = False

    def delta_target(self, i, k):
        """Where op i's backward writes the delta of its input k (None: the batch's)."""
        s = self._ops[i].inputs[k]
        if s < 0:
            return None
        return self.extra_deltas.get((i, k), self.deltas[s])

    # -- list slots: index of an array in a2 / a1 / ai (registered once, by identity) --
    def slot(self, a):
        if a is None:
            return 0
        key = id(a)
        if key not in self._ids:
            lst = self._ai if a.dtype == np.int64 else (self._a2 if a.ndim == 2 else self._a1)
            lst.append(a)
            self._ids[key] = (len(lst) - 1, a)
            self._finished = False
        return self._ids[key][0]

    def gather(self, X, y, idx, nt):
        """``x := X[idx]``, ``y := y[idx]``: a batch's rows into this workspace.  X by the threads
        (``nt`` chunks, ``take_rows_launch``) when it is C-contiguous of the model's dtype and
        ``idx`` int64 in range (the trainers' permutations), else ``np.take`` (which raises
        IndexError for a row outside X)."""
        if (X.dtype == self.x.dtype and X.flags.c_contiguous and idx.dtype == np.int64 and idx.size
                and idx.min() >= 0 and idx.max() < X.shape[0]):
            take_rows_launch(self.x, X, idx, nt)
        else:
            np.take(X, idx, axis=0, out=self.x)
        np.take(y, idx, axis=0, out=self.y)

    def reading(self, x):
        """Context: the programs read the batch from ``x`` (N, D0), C-contiguous of this dtype, in
        place of ``self.x`` (inference without copying the caller's rows); ``self.x`` after."""
        return _Reading(self, x)

    def finish(self):
        """Freeze the registered arrays into typed Lists (again whenever slot() added one)."""
        if self._finished:
            return self
        self.a2 = typed_list(self._a2)
        self.a1 = typed_list(self._a1)
        self.ai = typed_list(self._ai)
        self.af = typed_list([self.partial, self.stats])
        self._finished = True
        return self


class _Reading:
    def __init__(self, ws, x):
        self.ws, self.x = ws, x

    def __enter__(self):
        ws = self.ws
        if self.x.shape != ws.x.shape or self.x.dtype != ws.x.dtype or not self.x.flags.c_contiguous:
            raise ValueError(f"x: expected a C-contiguous {ws.x.dtype} array of shape {ws.x.shape}, got "
                             f"{self.x.dtype} {self.x.shape}")
        ws.finish()
        self.slot = ws._ids[id(ws.x)][0] if id(ws.x) in ws._ids else None
        if self.slot is not None and self.x.flags.writeable:
            set_item(ws.a2, self.slot, self.x)
        else:   # no program registered ws.x yet, or x is read-only (not a List item type): copy it
            self.slot = None
            ws.x[...] = self.x
        return ws

    def __exit__(self, *exc):
        if self.slot is not None:
            set_item(self.ws.a2, self.slot, self.ws.x)
