"""Model: the facade users touch.  Build, fit, evaluate, predict, gradients, save/load.

The work happens below it: ``fastbp.plan`` (ops, flat buffers, the schedule),
``fastbp.train`` (the epoch loop), ``fastbp.checkpoint`` (files).  See ARCHITECTURE.md.

Thread safety: ``predict``, ``predict_proba``, ``evaluate``, ``forward`` and ``loss_and_grads``
may run concurrently from several threads on one model (each call borrows its own
workspace); ``fit`` and ``train_on_batch`` change the parameters and must not run
concurrently with any other call on the same model.
"""
import numpy as np

from . import checkpoint, inputs
from . import layers as L
from . import losses as LS
from ._threads import chunk_count
from .plan import Plan


class Model:
    """A feed-forward network: ``Model([Dense(512, "tanh"), Dense(10)], loss="softmax_ce")``, or a
    graph given by its output node (``fastbp.graph``): ``Model(Dense(10)(Add()(h, r)))``.

    ``loss``: ``softmax_ce`` (int labels; last layer gives logits), ``mse`` (float targets (N, C))
    or ``sigmoid_bce`` (targets in [0, 1]; last layer gives logits).  ``dtype``: float32 (default)
    or float64.  ``seed`` fixes the initial weights and the dropout masks.  ``precision``: ``fp32``
    (default) or ``bf16``: dense layers multiply bf16-rounded copies of their inputs and weights
    with fp32 accumulation (master weights, gradients, optimizer state and every other op stay
    fp32; float32 models on CPUs with AVX512_BF16/AMX only, needs ``fastbp[bf16]``).

    ``params`` / ``grads``: one flat buffer each; ``layers[i].W``, ``.dW``, ``.running_mean`` ... are
    views.  ``grads`` holds the gradients of the last call that computed them (``loss_and_grads``,
    ``fit`` with a non-SGD optimizer or ``track_grad_norms``); plain SGD in ``fit`` is fused into the
    backward pass and leaves ``grads`` untouched.
    """

    def __init__(self, layers, loss="softmax_ce", input_dim=None, dtype="float32", seed=0, precision="fp32",
                 wiring=None):
        """``wiring``: with a list of specs, the inputs of each layer (what ``fastbp.graph.flatten``
        gives and checkpoints store); None: a chain."""
        from .graph import Node, flatten
        if isinstance(layers, Node):
            layers, wiring, features = flatten(layers)
            if input_dim is not None and input_dim != features:
                raise ValueError(f"input_dim: {input_dim} differs from the graph's Input({features})")
            input_dim = features
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError("layers: expected a non-empty list of layer specs, or a graph's output node")
        for i, s in enumerate(layers):
            if not isinstance(s, L.SPECS):
                raise TypeError(f"layers[{i}]: expected a fastbp layer spec, got {type(s).__name__}")
        if wiring is not None and (not isinstance(wiring, (list, tuple)) or len(wiring) != len(layers)):
            raise ValueError(f"wiring: expected one tuple of input indices per layer ({len(layers)})")
        self.wiring = None if wiring is None else [tuple(int(v) for v in w) for w in wiring]
        self.loss = LS.get(loss).name
        self.dtype = np.dtype(dtype)
        if self.dtype.type not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.seed = inputs.integer("seed", seed, 0, 2 ** 63 - 1)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: expected 'fp32' or 'bf16', got {precision!r}")
        if precision == "bf16" and self.dtype != np.float32:
            raise ValueError(f"precision: 'bf16' keeps float32 master weights; dtype must be float32, got {self.dtype}")
        self.precision = precision
        self.specs, self.training, self.plan = list(layers), True, None
        self.optimizer, self.opt_state, self.step_count, self.epochs_done, self.history = None, {}, 0, 0, None
        self.stop_training = False   # set by a callback to end fit
        self.rank = 0                # this process's rank during distributed fit
        if input_dim is not None:
            self.build(input_dim)

    def build(self, input_dim):
        """Create the ops and parameters for inputs of ``input_dim`` features."""
        self.plan = Plan(self.specs, self.loss, inputs.positive_int("input_dim", input_dim), self.dtype, self.seed,
                         self.precision, self.wiring)
        return self

    built = property(lambda self: self.plan is not None)
    input_dim = property(lambda self: self.plan.input_dim if self.plan else None)
    output_dim = property(lambda self: self.plan.output_dim if self.plan else None)
    params = property(lambda self: self._need_plan().params)
    grads = property(lambda self: self._need_plan().grads)
    layers = property(lambda self: list(self._need_plan().ops))

    def _need_plan(self):
        if self.plan is None:
            raise ValueError("the model has no parameters yet: pass input_dim, call build(n) or fit first")
        return self.plan

    def train(self):
        """Training mode: batch statistics in BatchNorm, dropout active."""
        self.training = True
        return self

    def eval(self):
        """Eval mode: running statistics in BatchNorm, dropout is the identity."""
        self.training = False
        return self

    def layer_params(self):
        """[(layer index, name, view)] for every parameter array."""
        return [(op.index, k, v) for op in self._need_plan().ops for k, v in op.params.items()]

    def summary(self):
        """A table of layers, output shapes and parameter counts (a string)."""
        rows = [f"{'#':>3}  {'layer':<28} {'output':>10} {'params':>10}"]
        for op in self._need_plan().ops:
            n = sum(v.size for v in op.params.values())
            rows.append(f"{op.index:>3}  {op.describe():<28} {f'(N, {op.out_dim})':>10} {n:>10,}")
        rows.append(f"total {self.params.size:,} parameters ({self.dtype.name}), loss {self.loss}, "
                    f"input {self.input_dim} features")
        return "\n".join(rows)

    def __repr__(self):
        arch = ", ".join(repr(s) for s in self.specs)
        extra = f", input_dim={self.input_dim}" if self.built else " (not built)"
        if self.wiring is not None:
            extra += f", wiring={self.wiring}"
        return f"Model([{arch}], loss={self.loss!r}, dtype={self.dtype.name!r}, seed={self.seed}{extra})"

    # ------------------------------------------------------------------ checks
    def _x(self, X, name="X"):
        X = inputs.features(X, self.dtype, self.input_dim, name)
        if not self.built:
            self.build(X.shape[1])
        return X

    def _xy(self, X, y, name="X", yname="y"):
        X = self._x(X, name)
        return X, inputs.targets(self.plan.loss, y, X.shape[0], self.output_dim, self.dtype, yname)

    # ------------------------------------------------------------------ training
    def fit(self, X, y=None, epochs=1, batch_size=128, lr=None, optimizer=None, **kw):
        """Train on arrays (X, y) or on a stream of (X_batch, y_batch) pairs (``y=None``); returns
        the history dict.  See ``fastbp.train.fit`` for every option."""
        from .train import fit
        return fit(self, X, y, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, **kw)

    def train_on_batch(self, X, y, lr=None, optimizer=None):
        """One training step on exactly this batch; returns its loss (see ``fastbp.train``)."""
        from .train import train_on_batch
        return train_on_batch(self, X, y, lr=lr, optimizer=optimizer)

    def loss_and_grads(self, X, y, step=None):
        """Loss of the batch (X, y) in the current mode and its gradients, written to ``grads``.

        Changes no parameter, step count or running statistic.  The rows are one batch (BatchNorm
        statistics over all of them); dropout uses the mask of ``step`` (default: the next step).
        Returns ``(loss, grads)`` (``grads`` is the model's buffer, not a copy)."""
        X, y = self._xy(X, y)
        t = self.step_count + 1 if step is None else inputs.integer("step", step, 0)
        training = self.training
        ws = self._borrow(X.shape[0], training)
        try:
            ws.x[...] = X
            ws.y[...] = y
            loss = self.plan.run(ws, "grads", t, training=training, nt=chunk_count())
        finally:
            self.plan.give_back(ws)
        return loss, self.plan.grads

    # ----------------------------------------------------------------- inference
    def _borrow(self, N, training):
        if training and N < self.plan.min_train_rows:
            raise ValueError(f"X: BatchNorm in training mode needs at least {self.plan.min_train_rows} rows "
                             f"per batch, got {N}")
        return self.plan.borrow(N)

    def _batches(self, X, batch_size, kind, training, y=None):
        """Run ``kind`` over X in chunks; yields (start, ws, value).  ``training`` is passed in, never
        read from or written to the model (concurrent calls must not see each other's mode).
        Training-mode stochastic layers see all rows as one batch."""
        B = inputs.positive_int("batch_size", batch_size)
        training = training and self.plan.stochastic
        if training:
            B = X.shape[0]
        nt = chunk_count()
        done = set()   # workspaces whose bf16 weight copies this call has made current
        for s in range(0, X.shape[0], B):
            ws = self._borrow(min(B, X.shape[0] - s), training)
            try:
                # C-contiguous (inputs.features): inference reads the rows in place, without a copy;
                # training-mode programs may write their input, and a read-only array cannot enter
                # the workspace's typed List of writable arrays: those are copied
                rows = X[s:s + ws.N]
                in_place = not training and rows.flags.writeable
                if not in_place:
                    ws.x[...] = rows
                if y is not None:
                    ws.y[...] = y[s:s + ws.N]
                v = self.plan.run(ws, kind, self.step_count, training=training, nt=nt, bf16_current=id(ws) in done,
                                  x=rows if in_place else None)
                done.add(id(ws))
                yield s, ws, v
            finally:
                self.plan.give_back(ws)

    def _outputs(self, X, batch_size, training):
        X = self._x(X)
        out = np.empty((X.shape[0], self.output_dim), self.dtype)
        for s, ws, _ in self._batches(X, batch_size, "forward", training):
            out[s:s + ws.N] = ws.outs[-1]
        return out

    def forward(self, X, batch_size=1024, training=False):
        """Outputs of the last layer (logits for softmax_ce/sigmoid_bce).  Inference (running statistics
        in BatchNorm, no dropout) unless ``training=True``: then BatchNorm uses the statistics of all
        rows as one batch and dropout the mask of the next step.  Neither changes any state: only
        training (``fit``, ``train_on_batch``) moves running statistics."""
        if not isinstance(training, (bool, np.bool_)):
            raise TypeError(f"training: expected True or False, got {type(training).__name__}")
        return self._outputs(X, batch_size, bool(training))

    def predict_proba(self, X, batch_size=1024):
        """Class probabilities (softmax_ce), sigmoid probabilities (sigmoid_bce) or outputs (mse); eval mode."""
        z = self._outputs(X, batch_size, training=False)
        return self.plan.loss.proba(z).astype(self.dtype, copy=False)

    def predict(self, X, batch_size=1024):
        """Class labels (softmax_ce), 0/1 (sigmoid_bce, threshold 0.5) or outputs (mse); eval mode."""
        return self.plan.loss.labels(self._outputs(X, batch_size, training=False))

    def evaluate(self, X, y, batch_size=1024):
        """Mean loss and accuracy (classification) in eval mode: {'loss': ..., 'accuracy': ...}."""
        X, y = self._xy(X, y)
        total, correct = 0.0, 0.0
        for _, ws, loss in self._batches(X, batch_size, "evaluate", False, y):
            total += loss * ws.N
            correct += float(ws.stats[1])
        res = {"loss": total / X.shape[0]}
        if self.plan.loss.has_accuracy:
            res["accuracy"] = correct / X.shape[0]
        return res

    # ----------------------------------------------------------- files and copies
    def state_dict(self):
        """{name: array copy} as PyTorch's ``nn.Sequential`` of Linear/BatchNorm1d/... names it."""
        from .interop import state_dict
        return state_dict(self)

    def load_state_dict(self, state_dict, strict=True):
        """Copy weights named as ``state_dict()`` names them (numpy arrays or torch tensors)."""
        from .interop import load_state_dict
        return load_state_dict(self, state_dict, strict=strict)

    @classmethod
    def from_state_dict(cls, state_dict, layers, loss="softmax_ce", dtype=None, seed=0, input_dim=None):
        """A model with ``layers`` and the weights of ``state_dict`` (width and dtype inferred)."""
        from .interop import from_state_dict
        return from_state_dict(state_dict, layers, loss, dtype, seed, input_dim, cls=cls)

    def to_onnx(self, path, output="logits"):
        """Write an ONNX graph of the eval-mode model (needs ``fastbp[onnx]``)."""
        from .interop import to_onnx
        return to_onnx(self, path, output)

    def save(self, path):
        """Write a checkpoint atomically: ``.safetensors`` or else npz (no pickle either way)."""
        return checkpoint.save(self, path)

    @classmethod
    def load(cls, path):
        """Rebuild a model saved with ``save``; raises ValueError naming the file on a bad one."""
        return checkpoint.load(cls, path)

    def __getstate__(self):
        return checkpoint.to_state(self)

    def __setstate__(self, state):
        checkpoint.from_state(self, state)
