"""The plan: specs + loss -> ops with flat parameter/gradient buffers, and THE schedule.

``Plan.program`` is the only place the order of a step is written:

    train:   forward of every op (training mode)  -> loss (value and gradient)
             -> backward of every op, last to first -> optimizer update (unless fused)
    grads:   the same without the update
    forward: forward of every op;   evaluate: forward -> loss value
    (running statistics move in 'train' only)

Each program is one jitted call (``fastbp.program``), whatever the layer mix.  Plain SGD is
*fused*: the backward launches update the parameters in place and write no gradients.

The plan owns the parameters (``params``/``grads`` flat, per-op views) and the non-trained
state (running statistics); the optimizer owns only its hyperparameters; the caller keeps
the optimizer state and passes it in.
"""
import threading
import warnings

import numpy as np

from . import losses as LS
from ._threads import apply_default_threads
from .kernels import bind_blas
from .ops import IO, accumulate, accumulate_entry, compile_specs
from .program import Program
from .warmup import start_helpers
from .workspace import Workspace, aligned_empty, check_memory


def estimate_bytes(specs, input_dim, dtype, batch, optimizer_slots=2, eval_batch=1024):
    """Memory to train ``specs``: parameters, gradients, optimizer state and the activations of
    one training and one evaluation batch (an estimate, before anything is allocated)."""
    ops = compile_specs(list(specs), int(input_dim))
    P = sum(int(np.prod(sh, dtype=object)) for op in ops for sh in op.param_shapes().values())
    acts = int(input_dim) + 2 * sum(op.out_dim for op in ops)
    return np.dtype(dtype).itemsize * (P * (2 + optimizer_slots) + acts * (int(batch) + int(eval_batch)))


#: precision='bf16' warns when the bf16 GEMM is less than this much faster than the fp32 GEMM
BF16_MIN_SPEEDUP = 1.2


def _check_bf16():
    """A clear error without the CPU instructions or a bf16 GEMM library, before anything runs; a
    Bf16SlowWarning where the bound bf16 GEMM is not faster than fp32 (MKL's, on a non-Intel CPU)."""
    from .kernels import Bf16SlowWarning, bf16_info, bf16_speedup, cpu_model
    info = bf16_info() or {"backend": None, "library": "numpy emulation"}     # None: pure-Python mode
    speed = bf16_speedup()
    if speed is not None and speed < BF16_MIN_SPEEDUP:
        hint = (" (MKL uses its AVX512_BF16/AMX kernels on Intel CPUs only; oneDNN's GEMM does not have "
                "this limit: pip install onednn-cpu-gomp)" if info["backend"] == "mkl" else "")
        warnings.warn(Bf16SlowWarning(
            f"precision='bf16': the bf16 GEMM ({info['library']}) runs at {speed:.2f}x the speed of the fp32 GEMM "
            f"on this CPU ({cpu_model()}), so bf16 training will be slower than precision='fp32' here{hint}"),
            stacklevel=5)


class Plan:
    """Everything compiled from (specs, loss, input_dim, dtype, seed)."""

    def __init__(self, specs, loss, input_dim, dtype, seed, precision="fp32", wiring=None):
        apply_default_threads()
        self.specs, self.loss, self.dtype, self.seed = list(specs), LS.get(loss), np.dtype(dtype), int(seed)
        self.input_dim = int(input_dim)
        self.precision = precision
        if precision == "bf16":
            _check_bf16()
        self.wiring = None if wiring is None else [tuple(w) for w in wiring]
        self.ops = compile_specs(self.specs, self.input_dim, self.wiring)
        self._deltas_of_shared_inputs()
        for op in self.ops:
            op.precision = precision
        if not any(op.param_shapes() for op in self.ops):
            raise ValueError("layers: the model needs at least one layer with parameters (e.g. Dense)")
        last = self.ops[-1]
        if self.loss.needs_logits and last.act != 0:
            raise ValueError(f"layers: with loss={self.loss.name!r} the last layer must output logits "
                             f"(no activation); the loss applies the softmax/sigmoid itself")
        self.output_dim = last.out_dim
        start_helpers([fn for op in self.ops for fn in op.entries] + list(self.loss.entries)
                      + ([accumulate_entry] if self.extra else []), self.dtype)
        sizes = [int(np.prod(sh, dtype=object)) for op in self.ops for sh in op.param_shapes().values()]
        check_memory(2 * sum(sizes) * self.dtype.itemsize, f"the model's {sum(sizes):,} parameters and gradients")
        self.params = aligned_empty(int(sum(sizes)), self.dtype)   # (P,) every trained parameter
        self.grads = aligned_empty(int(sum(sizes)), self.dtype)    # (P,) their gradients (same layout)
        self.params[...] = 0
        self.grads[...] = 0
        self.slots = []                                        # (op index, name, offset, size)
        off = 0
        rng = np.random.default_rng(self.seed)
        for op in self.ops:
            op.seed = self.seed
            for name, shape in op.param_shapes().items():
                n = int(np.prod(shape))
                op.params[name] = self.params[off:off + n].reshape(shape)
                op.grads[name] = self.grads[off:off + n].reshape(shape)
                self.slots.append((op.index, name, off, n))
                off += n
            for name, (shape, fill) in op.state_shapes().items():
                op.state[name] = np.full(shape, fill, self.dtype)
            op.init(rng, self.dtype)
        self.min_train_rows = max(getattr(op, "min_train_rows", 1) for op in self.ops)
        self.stochastic = any(op.stochastic for op in self.ops)
        self._train_ws = {}
        self._pool = {}
        self._lock = threading.Lock()

    def _deltas_of_shared_inputs(self):
        """Who writes each op's delta: of the ops reading op s, the last in the backward order (the
        highest (op, input) pair) writes delta s; every other reader writes into a buffer of its
        own (``extra``), added to delta s right after its backward (``accumulate_after``)."""
        readers = {}
        for op in self.ops:
            for k, s in enumerate(op.inputs):
                if s >= 0:
                    readers.setdefault(s, []).append((op.index, k))
        unread = [op.index for op in self.ops[:-1] if op.index not in readers]
        if unread:
            raise ValueError(f"layers: the output of layer {unread[0]} ({self.ops[unread[0]].describe()}) is not used; "
                             f"the model's output must be the last layer")
        self.extra, self.accumulate_after = {}, {}
        for s, rs in readers.items():
            for i, k in sorted(rs)[:-1]:
                self.extra[(i, k)] = s
                self.accumulate_after.setdefault(i, []).append((k, s))

    def backward_entries(self, ws, ios, i, fused, wd):
        """Op i's backward, then the additions of the deltas it handed back into buffers."""
        out = [self.ops[i].backward_entry(ios[i], fused, wd)]
        for k, s in self.accumulate_after.get(i, ()):
            out.append(accumulate(ws, f"{self.ops[i].where}, input {k}", ws.deltas[s], ws.extra_deltas[(i, k)]))
        return out

    # ------------------------------------------------------------------ workspaces
    def train_workspace(self, N):
        """The training workspace for batches of N rows (one per size; a few sizes are kept)."""
        ws = self._train_ws.get(N)
        if ws is None:
            if len(self._train_ws) >= 4:
                self._train_ws.pop(next(iter(self._train_ws)))
            ws = self._train_ws[N] = Workspace(self, N)
        return ws

    def borrow(self, N):
        """A workspace of N rows owned by the caller until ``give_back`` (thread-safe)."""
        with self._lock:
            free = self._pool.get(N)
            if free:
                return free.pop()
        return Workspace(self, N)

    def give_back(self, ws):
        with self._lock:
            free = self._pool.setdefault(ws.N, [])
            if len(free) < 4 and len(self._pool) <= 8:
                free.append(ws)

    # -------------------------------------------------------------------- schedule
    def program(self, ws, kind, optimizer=None, opt_state=None, count=True, fuse=True):
        """THE schedule.  ``kind``: 'train' | 'grads' | 'forward' | 'evaluate'.  ``fuse``: allow
        plain SGD to be folded into the backward launches (then no gradients are written)."""
        key = (kind, count, fuse, _optimizer_key(optimizer), tuple(id(a) for a in (opt_state or {}).values()))
        prog = ws.programs.get(key)
        if prog is not None:
            return prog
        ops, n = self.ops, len(self.ops)
        ios = [IO(ws, ops, i) for i in range(n)]
        # running statistics move in training steps only: never in 'grads', 'forward' or 'evaluate'
        entries = [op.forward_entry(io, update_stats=(kind == "train")) for op, io in zip(ops, ios)]
        if kind in ("train", "grads", "evaluate"):
            want_grad = kind != "evaluate"
            entries.append(self.loss.entry(ios[-1], ops[-1], want_grad, count))
        if kind in ("train", "grads"):
            fused = kind == "train" and fuse and optimizer.fusable
            wd = optimizer.weight_decay if fused else 0.0
            entries += [e for i in range(n - 1, -1, -1) for e in self.backward_entries(ws, ios, i, fused, wd)]
            if kind == "train" and not fused:
                entries.append(optimizer.entry(ws, self.params, self.grads, opt_state))
        prog = ws.programs[key] = Program(self.dtype, entries)
        ws.finish()
        return prog

    def run(self, ws, kind, t, lr=0.0, training=True, nt=1, optimizer=None, opt_state=None, count=True,
            fuse=True, bf16_current=False, x=None):
        """Run one program on the batch already in ``ws.x`` / ``ws.y``; returns the loss (or 0).

        ``x``: read the batch from this (N, D0) C-contiguous array instead (no copy; 'forward' and
        'evaluate' only: those programs never write their input).
        bf16: the workspace's bf16 weight copies are re-rounded unless ``bf16_current`` (the caller
        knows nothing but this workspace's own fused steps wrote the weights since its last run)."""
        if x is not None and kind not in ("forward", "evaluate"):
            raise ValueError(f"x: only 'forward' and 'evaluate' programs read their batch in place, not {kind!r}")
        bind_blas()
        if self.precision == "bf16" and not bf16_current:
            ws.bf16_ok[:] = 0
        prog = self.program(ws, kind, optimizer, opt_state, count, fuse)
        if x is None:
            return prog.run(ws, t, lr, training, nt)
        with ws.reading(x):
            return prog.run(ws, t, lr, training, nt)


def _optimizer_key(opt):
    """Hyperparameters baked into a program (lr is passed at run time)."""
    if opt is None:
        return None
    return (type(opt).__name__,) + tuple((k, v) for k, v in vars(opt).items() if k != "lr")
