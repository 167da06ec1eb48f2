"""Layer ops: one unit per layer kind, compiled from the specs in ``fastbp.layers``.

An op owns its parameter shapes, their initialisation, its state (running statistics),
per-workspace scratch, and the jitted forward/backward *entries* the plan schedules
(see ``fastbp.program`` for the entry signature).

The delta rule (written once, here): ``deltas[i]`` = dL/d(pre-activation output of op i).
Op i's backward reads ``deltas[i]`` and writes ``deltas[i-1]`` already multiplied by the
*previous* op's activation derivative (at ``outs[i-1]``, this op's input), so each backward
hands its predecessor a finished delta; the loss applies the last op's derivative.

Backward entries *overwrite* gradients (never accumulate); with ``fused_sgd`` they update the
parameters in place instead of writing gradients.

Each entry's arguments are declared by name in a ``Signature`` (``fastbp.signature``) next to it:
the entry reads ``ia[F.name]`` and the op hands the plan ``SIGNATURE.bind(ws, self.where, name=...)``,
which checks names, kinds and shapes (a miswired op fails there, naming the op and the tensor).

Adding a layer kind: subclass ``Op``, set ``spec_type`` to its spec (``fastbp.layers``),
implement shapes, ``init`` and the two entries with their signatures, and decorate it with ``@register``.
The plan, the training loop and the facade need no edit.
"""

import numpy as np

from . import init as initializers
from . import layers as L
from .kernels import (
    IDENTITY,
    KSPLIT_BELOW_ROWS,
    activation_backward,
    activation_backward_launch,
    activation_forward,
    activation_forward_launch,
    add_backward_launch,
    add_into_launch,
    add_launch,
    batchnorm_backward_launch,
    batchnorm_forward_launch,
    bf16_store_shape,
    concat_backward_launch,
    concat_launch,
    dense_backward_bf16_launch,
    dense_backward_launch,
    dense_forward_bf16_launch,
    dense_forward_ksplit_launch,
    dense_forward_launch,
    dropout_backward_launch,
    dropout_forward_launch,
    forward_by_k,
    forward_rows_from,
    jit,
    sgd_launch,
)
from .kernels.names import CODE_NAMES, act_code
from .kernels.validate import max_threads
from .signature import A1, A2, AI, Float, Int, Signature

OPS = {}   # spec class -> op class
KSPLIT_SCRATCH = 1 << 21   # elements: the largest per-layer scratch for the forward cut along D


def register(cls):
    OPS[cls.spec_type] = cls
    return cls


class IO:
    """Where op ``i`` reads and writes in one workspace (arrays; the op hands them to its entries).

    ``xs[k]``: input k, the output of op ``inputs[k]`` (or the batch, index -1); ``dxs[k]``: where
    the op's backward writes input k's delta (None for the batch), already multiplied by the
    derivative of ``prevs[k]``'s activation: the input's delta itself, or, when another op also
    reads that input and writes its delta first, a buffer the plan then adds into it.
    ``x``, ``dx``, ``prev``: input 0's (the only one of every op but Add and Concat)."""

    def __init__(self, ws, ops, i):
        self.ws, self.i = ws, i
        srcs = ops[i].inputs
        self.xs = [ws.outs[s] if s >= 0 else ws.x for s in srcs]           # (N, F_s) inputs
        self.dxs = [ws.delta_target(i, k) for k in range(len(srcs))]      # (N, F_s) or None
        self.prevs = [ops[s] if s >= 0 else None for s in srcs]
        self.x, self.dx, self.prev = self.xs[0], self.dxs[0], self.prevs[0]
        self.out, self.delta = ws.outs[i], ws.deltas[i]       # (N, F_i)
        self.scratch = ws.scratch[i]

    def act_of(self, k):
        """(activation code, slope) of input k's producer (identity for the batch)."""
        p = self.prevs[k]
        return (p.act, p.alpha) if p is not None else (IDENTITY, 0.0)

    @property
    def prev_act(self):
        return self.act_of(0)


class Op:
    """Base unit.  ``act``/``alpha``: the activation fused into this op's output."""
    spec_type = None
    act, alpha = IDENTITY, 0.0
    entries = ()              # the jitted entries forward_entry/backward_entry return (a cold first
                              # run compiles them, spread over helper processes: fastbp.warmup)
    precision = "fp32"        # set by the plan: "bf16" for bf16 GEMM operands where the op has GEMMs
    stochastic = False        # True when training-mode output differs from eval (dropout, BN)
    batch_coupled = False     # True when a row's output depends on other rows (BN): data-parallel
                              # training then runs the op's sync_forward/sync_backward instead

    def __init__(self, spec, in_dim, index):
        self.spec, self.in_dim, self.index = spec, in_dim, index
        self.out_dim = in_dim
        self.inputs = (index - 1,)     # the ops it reads (-1: the batch); set by compile_specs
        self.params, self.grads, self.state = {}, {}, {}   # name -> view (filled by the plan)

    def absorb(self, spec):
        """Take a following standalone Activation into this op; True if absorbed."""
        if isinstance(spec, L.Activation) and self.fuses_activation and self.act == IDENTITY:
            self.act, self.alpha = act_code(spec.name), float(spec.alpha)
            return True
        return False

    fuses_activation = False

    def param_shapes(self):
        """Ordered {name: shape} of trained parameters (views into the flat buffer)."""
        return {}

    def state_shapes(self):
        """{name: (shape, fill)} of non-trained state kept with the model (e.g. running stats)."""
        return {}

    def scratch_shapes(self):
        """{name: shape} of per-workspace scratch (e.g. BN's saved batch statistics)."""
        return {}

    def init(self, rng, dtype):
        """Initialise ``self.params`` in place."""

    def forward_entry(self, io, update_stats):
        raise NotImplementedError

    def backward_entry(self, io, fused_sgd, wd):
        raise NotImplementedError

    # per-layer access: model.layers[i].W, .dW, .running_mean
    def __getattr__(self, name):
        d = self.__dict__
        for table in ("params", "state"):
            if name in d.get(table, {}):
                return d[table][name]
        if name.startswith("d") and name[1:] in d.get("grads", {}):
            return d["grads"][name[1:]]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def portable(self):
        """This op in the exchange vocabulary of ``fastbp.interop``: a list of ``(kind, tensors,
        options)``, tensors as *views* laid out as PyTorch's module holds them (writing into them
        writes the model).  Kinds: linear, batchnorm, dropout and the activation names."""
        raise NotImplementedError(f"{type(self).__name__} has no exchange form")

    def _portable_act(self):
        if self.act == IDENTITY:
            return []
        return [(CODE_NAMES[self.act], {}, {"alpha": self.alpha} if CODE_NAMES[self.act] == "leaky_relu" else {})]

    def describe(self):
        return type(self.spec).__name__ + (f"({CODE_NAMES[self.act]})" if self.act != IDENTITY else "")

    @property
    def where(self):
        """This op in messages: ``layer 2 (Dense(tanh))``."""
        return f"layer {self.index} ({self.describe()})"

    def __repr__(self):
        shapes = ", ".join(f"{k}{tuple(v)}" for k, v in self.param_shapes().items())
        return f"<{self.describe()} {self.in_dim}->{self.out_dim}{' ' + shapes if shapes else ''}>"


# ----------------------------------------------------------------------------- Dense
_DENSE_IN = dict(x=A2("input", "N", "D"), out=A2("output", "N", "F"), W=A2("param", "D", "F"),
                 b=A1("param", "F", optional=True), act=Int("activation code"))
DENSE_FORWARD = Signature("dense forward", **_DENSE_IN, rows_from=Int("cut by rows from this many rows"),
                          alpha=Float("leaky_relu slope"))
DENSE_FORWARD_SMALL = Signature("dense forward small", **_DENSE_IN, rows_from=Int("cut by rows from"),
                                partial=A2("scratch", "*", "F"), alpha=Float("leaky_relu slope"))
_DENSE_BACK = dict(dx=A2("delta of the input", "N", "D", optional=True), dW=A2("grad", "D", "F"),
                   db=A1("grad", "F", optional=True), dz=A2("delta", "N", "F"), x=A2("input", "N", "D"),
                   W=A2("param", "D", "F"), b=A1("param", "F", optional=True),
                   prev_act=Int("previous op's activation"), want_dx=Int("flag"), fused=Int("fused SGD flag"))
DENSE_BACKWARD = Signature("dense backward", **_DENSE_BACK, prev_alpha=Float("previous op's slope"),
                           wd=Float("weight decay"))
_BF16 = dict(x16=A2("scratch", "*", "*"), W16=A2("scratch", "*", "*"), bf16_ok=AI("state", "L"),
             index=Int("op index"))
DENSE_FORWARD_BF16 = Signature("dense forward bf16", **_DENSE_IN, **_BF16, alpha=Float("leaky_relu slope"))
DENSE_BACKWARD_BF16 = Signature("dense backward bf16", **_DENSE_BACK, **_BF16, dz16=A2("scratch", "*", "*"),
                                prev_alpha=Float("previous op's slope"), wd=Float("weight decay"))
_DF, _DFS, _DB = DENSE_FORWARD.at, DENSE_FORWARD_SMALL.at, DENSE_BACKWARD.at
_DF16, _DB16 = DENSE_FORWARD_BF16.at, DENSE_BACKWARD_BF16.at


@DENSE_FORWARD.entry
@jit
def dense_forward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    F = _DF
    dense_forward_launch(a2[ia[F.out]], a2[ia[F.x]], a2[ia[F.W]], a1[ia[F.b]], ia[F.act], fa[F.alpha], nt,
                         ia[F.rows_from])
    return 0.0


@DENSE_FORWARD_SMALL.entry
@jit
def dense_forward_small_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    """The forward of a workspace whose batch is small enough to be cut along D (``forward_by_k``).
    An entry of its own because that cut costs ~2 s to compile: batches that never use it (the
    default 128 rows) do not pay for it on a cold start."""
    F = _DFS
    x, W, part = a2[ia[F.x]], a2[ia[F.W]], a2[ia[F.partial]]
    N = x.shape[0]
    if part.shape[0] >= nt * N and forward_by_k(N, x.shape[1], W.shape[1], nt):
        dense_forward_ksplit_launch(a2[ia[F.out]], x, W, a1[ia[F.b]], ia[F.act], fa[F.alpha], part, nt)
    else:
        dense_forward_launch(a2[ia[F.out]], x, W, a1[ia[F.b]], ia[F.act], fa[F.alpha], nt, ia[F.rows_from])
    return 0.0


@DENSE_BACKWARD.entry
@jit
def dense_backward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    B = _DB
    x = a2[ia[B.x]]
    dense_backward_launch(a2[ia[B.dx]], a2[ia[B.dW]], a1[ia[B.db]], a2[ia[B.dz]], x, a2[ia[B.W]], a1[ia[B.b]], x,
                          ia[B.prev_act], fa[B.prev_alpha], ia[B.want_dx] != 0, ia[B.fused] != 0, lr, fa[B.wd], nt)
    return 0.0


@DENSE_FORWARD_BF16.entry
@jit
def dense_forward_bf16_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    F = _DF16
    ok = ai[ia[F.bf16_ok]]
    dense_forward_bf16_launch(a2[ia[F.out]], a2[ia[F.x]], a2[ia[F.W]], a1[ia[F.b]], a2[ia[F.x16]], a2[ia[F.W16]],
                              ia[F.act], fa[F.alpha], ok[ia[F.index]] == 0, nt)
    ok[ia[F.index]] = 1
    return 0.0


@DENSE_BACKWARD_BF16.entry
@jit
def dense_backward_bf16_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    B = _DB16
    fused = ia[B.fused] != 0
    dense_backward_bf16_launch(a2[ia[B.dx]], a2[ia[B.dW]], a1[ia[B.db]], a2[ia[B.dz]], a2[ia[B.W]], a1[ia[B.b]],
                               a2[ia[B.x16]], a2[ia[B.W16]], a2[ia[B.dz16]], a2[ia[B.x]], ia[B.prev_act],
                               fa[B.prev_alpha], ia[B.want_dx] != 0, fused, lr, fa[B.wd], nt)
    ai[ia[B.bf16_ok]][ia[B.index]] = 1 if fused else 0     # fused: W16 follows W; else the optimizer changes W later
    return 0.0


@register
class DenseOp(Op):
    spec_type = L.Dense
    fuses_activation = True
    entries = property(lambda self: (dense_forward_bf16_entry, dense_backward_bf16_entry) if self.precision == "bf16"
                       else (dense_forward_entry, dense_backward_entry))

    def __init__(self, spec, in_dim, index):
        super().__init__(spec, in_dim, index)
        self.out_dim = spec.units
        self.act, self.alpha = act_code(spec.activation), float(spec.alpha)

    def param_shapes(self):
        shapes = {"W": (self.in_dim, self.out_dim)}
        if self.spec.bias:
            shapes["b"] = (self.out_dim,)
        return shapes

    def portable(self):
        t = {"weight": self.params["W"].T}        # torch.nn.Linear: weight (out, in)
        if "b" in self.params:
            t["bias"] = self.params["b"]
        return [("linear", t, {})] + self._portable_act()

    def init(self, rng, dtype):
        fn = initializers.get(self.spec.init, CODE_NAMES[self.act])
        self.params["W"][...] = fn(rng, self.in_dim, self.out_dim, dtype)
        if "b" in self.params:
            self.params["b"][...] = 0

    def forward_entry(self, io, update_stats):
        args = dict(x=io.x, out=io.out, W=self.params["W"], b=self.params.get("b"), act=self.act, alpha=self.alpha)
        if self.precision == "bf16":
            return DENSE_FORWARD_BF16.bind(io.ws, self.where, **args, x16=self._bf16_store(io, "x16"),
                                           W16=self._bf16_store(io, "W16"), bf16_ok=io.ws.bf16_ok, index=self.index)
        partial = self._ksplit_scratch(io)
        if partial is None:
            return DENSE_FORWARD.bind(io.ws, self.where, **args, rows_from=forward_rows_from())
        return DENSE_FORWARD_SMALL.bind(io.ws, self.where, **args, rows_from=forward_rows_from(), partial=partial)

    def backward_entry(self, io, fused_sgd, wd):
        pact, palpha = io.prev_act
        args = dict(dx=io.dx, dW=self.grads["W"], db=self.grads.get("b"), dz=io.delta, x=io.x, W=self.params["W"],
                    b=self.params.get("b"), prev_act=pact, want_dx=io.dx is not None, fused=fused_sgd,
                    prev_alpha=palpha, wd=wd)
        if self.precision == "bf16":
            return DENSE_BACKWARD_BF16.bind(io.ws, self.where, **args, x16=self._bf16_store(io, "x16"),
                                            W16=self._bf16_store(io, "W16"), dz16=self._bf16_store(io, "dz16"),
                                            bf16_ok=io.ws.bf16_ok, index=self.index)
        return DENSE_BACKWARD.bind(io.ws, self.where, **args)

    def _ksplit_scratch(self, io):
        """(threads * N, F) partial products for the small-batch forward cut along D, or None
        where it is never used (N, D, F) or would exceed KSPLIT_SCRATCH elements."""
        N, nt = io.x.shape[0], max_threads()
        if N >= KSPLIT_BELOW_ROWS or nt < 2 or nt * N * self.out_dim > KSPLIT_SCRATCH:
            return None
        by_k = getattr(forward_by_k, "py_func", forward_by_k)     # the same rule in Python (no compile)
        if not any(by_k(N, self.in_dim, self.out_dim, k) for k in range(2, nt + 1)):
            return None
        scratch = io.ws.scratch[self.index]
        if "partial" not in scratch:
            scratch["partial"] = np.zeros((nt * N, self.out_dim), io.x.dtype)
        return scratch["partial"]

    def _bf16_store(self, io, name):
        """This workspace's float32 store for a bf16 copy (x16: the input, W16, dz16: the delta)."""
        scratch = io.ws.scratch[self.index]
        if name not in scratch:
            N = io.x.shape[0]
            rows, cols = {"x16": (N, self.in_dim), "W16": (self.in_dim, self.out_dim),
                          "dz16": (N, self.out_dim)}[name]
            scratch[name] = np.zeros(bf16_store_shape(rows, cols), np.float32)
        return scratch[name]


# ------------------------------------------------------------------------- BatchNorm
BATCHNORM_FORWARD = Signature(
    "batchnorm forward", x=A2("input", "N", "F"), out=A2("output", "N", "F"), gamma=A1("param", "F"),
    beta=A1("param", "F"), mean=A1("scratch", "F"), inv_std=A1("scratch", "F"), running_mean=A1("state", "F"),
    running_var=A1("state", "F"), act=Int("activation code"), momentum=Float("0: statistics stay"),
    eps=Float(), alpha=Float("leaky_relu slope"))
BATCHNORM_BACKWARD = Signature(
    "batchnorm backward", dx=A2("delta of the input", "N", "F", optional=True), dgamma=A1("grad", "F"),
    dbeta=A1("grad", "F"), dz=A2("delta", "N", "F"), x=A2("input", "N", "F"), gamma=A1("param", "F"),
    beta=A1("param", "F"), mean=A1("scratch", "F"), inv_std=A1("scratch", "F"),
    prev_act=Int("previous op's activation"), want_dx=Int("flag"), fused=Int("fused SGD flag"),
    prev_alpha=Float("previous op's slope"), wd=Float("weight decay"))
_BF, _BB = BATCHNORM_FORWARD.at, BATCHNORM_BACKWARD.at


@BATCHNORM_FORWARD.entry
@jit
def batchnorm_forward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    F = _BF
    batchnorm_forward_launch(a2[ia[F.out]], a2[ia[F.x]], a1[ia[F.gamma]], a1[ia[F.beta]], a1[ia[F.mean]],
                             a1[ia[F.inv_std]], a1[ia[F.running_mean]], a1[ia[F.running_var]], fa[F.momentum],
                             fa[F.eps], training, ia[F.act], fa[F.alpha], nt)
    return 0.0


@BATCHNORM_BACKWARD.entry
@jit
def batchnorm_backward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    B = _BB
    batchnorm_backward_launch(a2[ia[B.dx]], a1[ia[B.dgamma]], a1[ia[B.dbeta]], a2[ia[B.dz]], a2[ia[B.x]],
                              a1[ia[B.gamma]], a1[ia[B.mean]], a1[ia[B.inv_std]], training, ia[B.prev_act],
                              fa[B.prev_alpha], ia[B.want_dx] != 0, nt)
    if ia[B.fused] != 0:   # fused plain SGD: update gamma and beta from the gradients just written
        empty = a1[0]
        sgd_launch(a1[ia[B.gamma]], a1[ia[B.dgamma]], empty, lr, 0.0, False, fa[B.wd], nt)
        sgd_launch(a1[ia[B.beta]], a1[ia[B.dbeta]], empty, lr, 0.0, False, fa[B.wd], nt)
    return 0.0


@register
class BatchNormOp(Op):
    spec_type = L.BatchNorm
    fuses_activation = True
    entries = (batchnorm_forward_entry, batchnorm_backward_entry)
    stochastic = True
    min_train_rows = 2

    def __init__(self, spec, in_dim, index):
        super().__init__(spec, in_dim, index)
        self.act, self.alpha = act_code(spec.activation), float(spec.alpha)

    def param_shapes(self):
        return {"gamma": (self.out_dim,), "beta": (self.out_dim,)}

    nonnegative_state = ("running_var",)   # a checkpoint with a negative variance is refused

    def state_shapes(self):
        return {"running_mean": ((self.out_dim,), 0.0), "running_var": ((self.out_dim,), 1.0)}

    def scratch_shapes(self):
        return {"mean": (self.out_dim,), "inv_std": (self.out_dim,)}

    def portable(self):
        t = {"weight": self.params["gamma"], "bias": self.params["beta"],
             "running_mean": self.state["running_mean"], "running_var": self.state["running_var"]}
        return [("batchnorm", t, {"eps": self.spec.eps, "momentum": self.spec.momentum})] + self._portable_act()

    def init(self, rng, dtype):
        self.params["gamma"][...] = 1
        self.params["beta"][...] = 0

    batch_coupled = True

    def sync_forward(self, io, reduce, n_global, update_stats):
        """Training forward over a batch spread across ranks: the statistics are the global batch's
        (``reduce`` sums an array over ranks in place; ``n_global`` rows in all).  Plain numpy,
        float64 sums; writes ``io.out``, the saved mean/inv_std and the running statistics."""
        x = io.x.astype(np.float64)
        s1 = x.sum(axis=0)
        reduce(s1)
        mean = s1 / n_global
        d = x - mean
        s2 = (d * d).sum(axis=0)
        reduce(s2)
        var = s2 / n_global
        inv = 1.0 / np.sqrt(var + self.spec.eps)
        g, b = self.params["gamma"].astype(np.float64), self.params["beta"].astype(np.float64)
        io.out[...] = g * (d * inv) + b
        if self.act != IDENTITY:
            activation_forward(io.out, io.out, self.act, self.alpha)
        io.scratch["mean"][...] = mean
        io.scratch["inv_std"][...] = inv
        if update_stats:
            m, st = self.spec.momentum, self.state
            st["running_mean"][...] = (1 - m) * st["running_mean"] + m * mean
            st["running_var"][...] = (1 - m) * st["running_var"] + m * var * (n_global / max(n_global - 1, 1))

    def sync_backward(self, io, reduce, n_global):
        """Backward of ``sync_forward``: ``io.delta`` is d(global loss)/d(output rows of this rank);
        writes the (already global) gamma/beta gradients and this rank's rows of ``io.dx``."""
        dz = io.delta.astype(np.float64)
        inv = io.scratch["inv_std"].astype(np.float64)
        xhat = (io.x.astype(np.float64) - io.scratch["mean"]) * inv
        sums = np.concatenate([(dz * xhat).sum(axis=0), dz.sum(axis=0)])
        reduce(sums)
        F = dz.shape[1]
        dg, db = sums[:F], sums[F:]
        self.grads["gamma"][...] = dg
        self.grads["beta"][...] = db
        if io.dx is not None:
            g = self.params["gamma"].astype(np.float64)
            io.dx[...] = inv * (dz * g - (g * db + xhat * (g * dg)) / n_global)
            pact, palpha = io.prev_act
            if pact != IDENTITY:
                activation_backward(io.dx, io.dx, io.x, pact, palpha)

    def forward_entry(self, io, update_stats):
        p, st, sc = self.params, self.state, io.scratch
        if io.out.dtype.type(self.spec.eps) == 0:
            raise ValueError(f"BatchNorm.eps: {self.spec.eps!r} rounds to 0 in {io.out.dtype} (layer {self.index})")
        return BATCHNORM_FORWARD.bind(io.ws, self.where, x=io.x, out=io.out, gamma=p["gamma"], beta=p["beta"],
                                      mean=sc["mean"], inv_std=sc["inv_std"], running_mean=st["running_mean"],
                                      running_var=st["running_var"], act=self.act,
                                      momentum=self.spec.momentum if update_stats else 0.0, eps=self.spec.eps,
                                      alpha=self.alpha)

    def backward_entry(self, io, fused_sgd, wd):
        p, g, sc = self.params, self.grads, io.scratch
        pact, palpha = io.prev_act
        return BATCHNORM_BACKWARD.bind(io.ws, self.where, dx=io.dx, dgamma=g["gamma"], dbeta=g["beta"], dz=io.delta,
                                       x=io.x, gamma=p["gamma"], beta=p["beta"], mean=sc["mean"],
                                       inv_std=sc["inv_std"], prev_act=pact, want_dx=io.dx is not None,
                                       fused=fused_sgd, prev_alpha=palpha, wd=wd)


# --------------------------------------------------------------------------- Dropout
_MASK = dict(layer=Int("op index (mask key)"), seed=Int("model seed (mask key)"),
             row0=Int("first row in the global batch (mask key)"))
DROPOUT_FORWARD = Signature("dropout forward", x=A2("input", "N", "F"), out=A2("output", "N", "F"), **_MASK,
                            p=Float("drop probability"))
DROPOUT_BACKWARD = Signature("dropout backward", dx=A2("delta of the input", "N", "F"), dz=A2("delta", "N", "F"),
                             x=A2("input", "N", "F"), **_MASK, prev_act=Int("previous op's activation"),
                             p=Float("drop probability"), prev_alpha=Float("previous op's slope"))
_XF, _XB = DROPOUT_FORWARD.at, DROPOUT_BACKWARD.at


@DROPOUT_FORWARD.entry
@jit
def dropout_forward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    F = _XF
    if training and fa[F.p] > 0:
        dropout_forward_launch(a2[ia[F.out]], a2[ia[F.x]], ia[F.seed], t, ia[F.layer], fa[F.p], ia[F.row0], nt)
    else:
        activation_forward_launch(a2[ia[F.out]], a2[ia[F.x]], IDENTITY, 0.0, nt)
    return 0.0


@DROPOUT_BACKWARD.entry
@jit
def dropout_backward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    B = _XB
    if training and fa[B.p] > 0:
        dropout_backward_launch(a2[ia[B.dx]], a2[ia[B.dz]], ia[B.seed], t, ia[B.layer], fa[B.p], ia[B.row0],
                                a2[ia[B.x]], ia[B.prev_act], fa[B.prev_alpha], nt)
    else:
        activation_backward_launch(a2[ia[B.dx]], a2[ia[B.dz]], a2[ia[B.x]], ia[B.prev_act], fa[B.prev_alpha], nt)
    return 0.0


@register
class DropoutOp(Op):
    spec_type = L.Dropout
    entries = (dropout_forward_entry, dropout_backward_entry)
    stochastic = True

    def portable(self):
        return [("dropout", {}, {"p": self.spec.p})]

    def forward_entry(self, io, update_stats):
        # row0: the workspace's first row in the global batch (masks are keyed by global row)
        return DROPOUT_FORWARD.bind(io.ws, self.where, x=io.x, out=io.out, layer=self.index, seed=self.seed,
                                    row0=io.ws.row0, p=self.spec.p)

    def backward_entry(self, io, fused_sgd, wd):
        if io.dx is None:
            return None
        pact, palpha = io.prev_act
        return DROPOUT_BACKWARD.bind(io.ws, self.where, dx=io.dx, dz=io.delta, x=io.x, layer=self.index,
                                     seed=self.seed, row0=io.ws.row0, prev_act=pact, p=self.spec.p, prev_alpha=palpha)


# ------------------------------------------------------------------------ Activation
ACTIVATION_FORWARD = Signature("activation forward", x=A2("input", "N", "F"), out=A2("output", "N", "F"),
                               act=Int("activation code"), alpha=Float("leaky_relu slope"))
ACTIVATION_BACKWARD = Signature("activation backward", dx=A2("delta of the input", "N", "F"),
                                dz=A2("delta", "N", "F"), x=A2("input", "N", "F"),
                                prev_act=Int("previous op's activation"), prev_alpha=Float("previous op's slope"))
_AF, _AB = ACTIVATION_FORWARD.at, ACTIVATION_BACKWARD.at


@ACTIVATION_FORWARD.entry
@jit
def activation_forward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    F = _AF
    activation_forward_launch(a2[ia[F.out]], a2[ia[F.x]], ia[F.act], fa[F.alpha], nt)
    return 0.0


@ACTIVATION_BACKWARD.entry
@jit
def activation_backward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    # its own derivative was applied by its successor: pass the delta on, times the previous op's
    B = _AB
    activation_backward_launch(a2[ia[B.dx]], a2[ia[B.dz]], a2[ia[B.x]], ia[B.prev_act], fa[B.prev_alpha], nt)
    return 0.0


@register
class ActivationOp(Op):
    spec_type = L.Activation
    entries = (activation_forward_entry, activation_backward_entry)

    def __init__(self, spec, in_dim, index):
        super().__init__(spec, in_dim, index)
        self.act, self.alpha = act_code(spec.name), float(spec.alpha)

    def describe(self):
        return f"Activation({CODE_NAMES[self.act]})"

    def portable(self):
        return self._portable_act()

    def forward_entry(self, io, update_stats):
        return ACTIVATION_FORWARD.bind(io.ws, self.where, x=io.x, out=io.out, act=self.act, alpha=self.alpha)

    def backward_entry(self, io, fused_sgd, wd):
        if io.dx is None:
            return None
        pact, palpha = io.prev_act
        return ACTIVATION_BACKWARD.bind(io.ws, self.where, dx=io.dx, dz=io.delta, x=io.x, prev_act=pact,
                                        prev_alpha=palpha)


# ------------------------------------------------------------------- Add and Concat
_JOIN_IN = dict(a=A2("input", "N", "Fa"), b=A2("input", "N", "Fb"), out=A2("output", "N", "F"),
                act=Int("activation code"), alpha=Float("leaky_relu slope"))
_JOIN_BACK = dict(da=A2("delta of input a", "N", "Fa", optional=True),
                  db=A2("delta of input b", "N", "Fb", optional=True), dz=A2("delta", "N", "F"),
                  ya=A2("input", "N", "Fa"), yb=A2("input", "N", "Fb"), act_a=Int("a's producer's activation"),
                  act_b=Int("b's producer's activation"), want_a=Int("flag"), want_b=Int("flag"),
                  alpha_a=Float(), alpha_b=Float())
JOIN_FORWARD = Signature("join forward", **_JOIN_IN, concat=Int("0: add, 1: concat"))
JOIN_BACKWARD = Signature("join backward", **_JOIN_BACK, concat=Int("0: add, 1: concat"))
ACCUMULATE = Signature("accumulate", dst=A2("delta", "N", "F"), src=A2("scratch", "N", "F"))
_JF, _JB, _AC = JOIN_FORWARD.at, JOIN_BACKWARD.at, ACCUMULATE.at


@JOIN_FORWARD.entry
@jit
def join_forward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    F = _JF
    if ia[F.concat] != 0:
        concat_launch(a2[ia[F.out]], a2[ia[F.a]], a2[ia[F.b]], ia[F.act], fa[F.alpha], nt)
    else:
        add_launch(a2[ia[F.out]], a2[ia[F.a]], a2[ia[F.b]], ia[F.act], fa[F.alpha], nt)
    return 0.0


@JOIN_BACKWARD.entry
@jit
def join_backward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    B = _JB
    args = (a2[ia[B.da]], a2[ia[B.db]], a2[ia[B.dz]], a2[ia[B.ya]], ia[B.act_a], fa[B.alpha_a], a2[ia[B.yb]],
            ia[B.act_b], fa[B.alpha_b], ia[B.want_a] != 0, ia[B.want_b] != 0, nt)
    if ia[B.concat] != 0:
        concat_backward_launch(*args)
    else:
        add_backward_launch(*args)
    return 0.0


@ACCUMULATE.entry
@jit
def accumulate_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    add_into_launch(a2[ia[_AC.dst]], a2[ia[_AC.src]], nt)
    return 0.0


class _JoinOp(Op):
    """Two inputs joined (Add: summed; Concat: side by side), with a fused activation."""
    entries = (join_forward_entry, join_backward_entry, accumulate_entry)
    fuses_activation = True
    concat = 0

    def __init__(self, spec, in_dims, index):
        super().__init__(spec, in_dims, index)
        self.act, self.alpha = act_code(spec.activation), float(spec.alpha)

    def forward_entry(self, io, update_stats):
        a, b = io.xs
        return JOIN_FORWARD.bind(io.ws, self.where, a=a, b=b, out=io.out, act=self.act, alpha=self.alpha,
                                 concat=self.concat)

    def backward_entry(self, io, fused_sgd, wd):
        (da, db), (ya, yb) = io.dxs, io.xs
        (act_a, alpha_a), (act_b, alpha_b) = io.act_of(0), io.act_of(1)
        return JOIN_BACKWARD.bind(io.ws, self.where, da=da, db=db, dz=io.delta, ya=ya, yb=yb, act_a=act_a,
                                  act_b=act_b, want_a=da is not None, want_b=db is not None, alpha_a=alpha_a,
                                  alpha_b=alpha_b, concat=self.concat)

    def portable(self):
        raise ValueError(f"{self.where}: graph layers (Add, Concat) have no PyTorch/ONNX form in fastbp yet; "
                         f"save the model with Model.save (.npz)")


@register
class AddOp(_JoinOp):
    spec_type = L.Add

    def __init__(self, spec, in_dims, index):
        super().__init__(spec, in_dims, index)
        if len(set(in_dims)) != 1:
            raise ValueError(f"layers[{index}]: Add needs inputs of one width, got widths {in_dims}")
        self.out_dim = in_dims[0]


@register
class ConcatOp(_JoinOp):
    spec_type = L.Concat
    concat = 1

    def __init__(self, spec, in_dims, index):
        super().__init__(spec, in_dims, index)
        self.out_dim = sum(in_dims)


def accumulate(ws, where, dst, src):
    """The entry that adds a delta handed back into ``src`` to the delta ``dst`` of the same tensor."""
    return ACCUMULATE.bind(ws, where, dst=dst, src=src)


def compile_specs(specs, input_dim, wiring=None):
    """Specs -> ops.  A chain (``wiring`` None): each spec becomes its registered op unless the
    previous op absorbs it (a following Activation).  A graph: one op per spec, op i reading the
    ops ``wiring[i]`` (-1: the batch), in the given (topological) order."""
    ops = []
    for i, spec in enumerate(specs):
        if wiring is None and ops and ops[-1].absorb(spec):
            continue
        cls = OPS.get(type(spec))
        if cls is None:
            raise TypeError(f"layers[{i}]: no op is registered for {type(spec).__name__}")
        if wiring is None and getattr(spec, "inputs", 1) != 1:
            raise ValueError(f"layers[{i}]: {type(spec).__name__} joins two branches; build the model from a "
                             f"graph (fastbp.Input and layers called on nodes), not a list")
        srcs = (len(ops) - 1,) if wiring is None else tuple(wiring[i])
        if any(not -1 <= s < len(ops) for s in srcs):
            raise ValueError(f"layers[{i}]: inputs {srcs} must be earlier layers (or -1, the model's input)")
        widths = [ops[s].out_dim if s >= 0 else int(input_dim) for s in srcs]
        op = cls(spec, widths[0] if len(widths) == 1 else tuple(widths), len(ops))
        op.inputs = srcs
        ops.append(op)
    return ops
