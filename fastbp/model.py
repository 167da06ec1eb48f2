"""Model: compiles layer specs into kernel calls over one workspace of buffers.

Parameters live in one flat buffer ``model.params`` and gradients in one flat
buffer ``model.grads``; every layer's W, b, gamma, beta is a view into them.

A training step is a fixed schedule of parallel kernel launches, one per layer
per direction plus the loss: for the 784-512-512-10 MLP with plain SGD that is
3 forward + 1 loss + 3 backward = 7 launches and no separate update pass (SGD is
folded into the weight-gradient GEMMs, see ``kernels.dense.backward_step``).
Other optimizers write gradients to ``grads`` and add one fused update launch.
Buffers are allocated once per batch size; a steady-state step allocates nothing.
"""
import json
import math
import os
import tempfile
import time
import zipfile

import numpy as np

from . import init as initializers
from . import layers as L
from . import optim as O
from .kernels import _check
from .kernels import activation as KA
from .kernels import batchnorm as KB
from .kernels import dense as KD
from .kernels import dropout as KR
from .kernels import loss as KL
from .kernels import optim as KO
from .kernels.activation import IDENTITY, act_code

LOSSES = ("softmax_ce", "mse", "sigmoid_bce")
FORMAT_VERSION = 1


class _Node:
    """One compiled layer: kind, sizes, fused activation and views into the flat buffers."""

    def __init__(self, kind, din, dout, act=IDENTITY, alpha=0.01, spec=None):
        self.kind, self.din, self.dout, self.act, self.alpha, self.spec = kind, din, dout, act, alpha, spec
        self.slots = []   # (name, shape) of parameters in the flat buffer

    def param_shapes(self):
        if self.kind == "dense":
            return [("W", (self.din, self.dout)), ("b", (self.dout,))]
        if self.kind == "bn":
            return [("gamma", (self.dout,)), ("beta", (self.dout,))]
        return []


class _Workspace:
    """Every buffer one batch size needs: input, per-layer outputs and deltas, scratch."""

    def __init__(self, model, N):
        dt = model.dtype
        self.N = N
        self.x = np.empty((N, model.input_dim), dt)
        self.y = np.empty((N, model.output_dim), dt) if model.loss != "softmax_ce" else np.empty(N, np.int64)
        self.outs = [np.empty((N, nd.dout), dt) for nd in model.nodes]
        self.deltas = [np.empty((N, nd.dout), dt) for nd in model.nodes]
        self.partial = np.empty(model._nt, np.float64)
        self.empty = np.empty((0, 0), dt)
        self.fast = None
        if all(nd.kind == "dense" for nd in model.nodes) and model.loss == "softmax_ce":
            # the whole step in one jitted call over typed Lists: no Python dispatch per layer and
            # no per-call wrapping of ndarray arguments (see kernels.dense.mlp_train_step)
            tl, nodes = KD.typed_list, model.nodes
            self.scratch = (self.partial, np.array([nd.alpha for nd in nodes], np.float64),
                            np.array([nd.act for nd in nodes], np.float64))
            self.fast = (tl((self.x, *self.outs)), tl(tuple(nd.W for nd in nodes)), tl(tuple(nd.b for nd in nodes)),
                         tl(tuple(nd.dW for nd in nodes)), tl(tuple(nd.db for nd in nodes)), tl(tuple(self.deltas)),
                         tl((self.y,)), tl(self.scratch))


class Model:
    """A feed-forward network.

    ``Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)], loss="softmax_ce")``

    ``loss``: ``softmax_ce`` (int labels, last layer gives logits), ``mse`` (float
    targets (N, C)) or ``sigmoid_bce`` (targets in [0, 1], last layer gives logits).
    ``dtype``: float32 (default) or float64.  ``seed`` fixes the initial weights.
    """

    def __init__(self, layers, loss="softmax_ce", input_dim=None, dtype="float32", seed=0):
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError("layers: expected a non-empty list of layer specs")
        for i, s in enumerate(layers):
            if not isinstance(s, (L.Dense, L.Activation, L.BatchNorm, L.Dropout)):
                raise TypeError(f"layers[{i}]: expected a fastbp layer spec, got {type(s).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype.type not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed!r}")
        self.specs, self.loss, self.seed = list(layers), loss, int(seed)
        self.training = True
        self.input_dim = None
        self.optimizer = None
        self.opt_state = {}
        self.step_count = 0
        self.epochs_done = 0
        self.history = None
        self._workspaces = {}
        self._nt = None
        if input_dim is not None:
            self.build(input_dim)

    # ------------------------------------------------------------------ build
    def build(self, input_dim):
        """Create nodes and parameters for inputs of ``input_dim`` features."""
        if not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
            raise ValueError(f"input_dim: expected a positive int, got {input_dim!r}")
        nodes, width = [], int(input_dim)
        for spec in self.specs:
            if isinstance(spec, L.Dense):
                nodes.append(_Node("dense", width, spec.units, act_code(spec.activation), spec.alpha, spec))
                width = spec.units
            elif isinstance(spec, L.BatchNorm):
                nodes.append(_Node("bn", width, width, act_code(spec.activation), spec.alpha, spec))
            elif isinstance(spec, L.Dropout):
                nodes.append(_Node("dropout", width, width, IDENTITY, 0.0, spec))
            else:  # Activation: fuse into the previous node when it has none
                code = act_code(spec.name)
                prev = nodes[-1] if nodes else None
                if prev is not None and prev.kind in ("dense", "bn") and prev.act == IDENTITY:
                    prev.act, prev.alpha = code, spec.alpha
                else:
                    nodes.append(_Node("act", width, width, code, spec.alpha, spec))
        if not any(nd.kind == "dense" for nd in nodes):
            raise ValueError("layers: the model needs at least one Dense layer")
        if self.loss in ("softmax_ce", "sigmoid_bce") and nodes[-1].act != IDENTITY:
            raise ValueError(f"layers: with loss={self.loss!r} the last layer must output logits "
                             f"(no activation); the loss applies the softmax/sigmoid itself")
        self.nodes, self.input_dim, self.output_dim = nodes, int(input_dim), width
        sizes = [int(np.prod(shape)) for nd in nodes for _, shape in nd.param_shapes()]
        P = int(sum(sizes))
        self.params = np.zeros(P, self.dtype)
        self.grads = np.zeros(P, self.dtype)
        self.bn_buffers = []
        off = 0
        rng = np.random.default_rng(self.seed)
        for nd in nodes:
            for name, shape in nd.param_shapes():
                n = int(np.prod(shape))
                setattr(nd, name, self.params[off:off + n].reshape(shape))
                setattr(nd, "d" + name, self.grads[off:off + n].reshape(shape))
                nd.slots.append((name, off, n))
                off += n
            if nd.kind == "dense":
                fn = initializers.get(nd.spec.init, KA.CODE_NAMES[nd.act])
                nd.W[...] = fn(rng, nd.din, nd.dout, self.dtype)
                nd.b[...] = 0
            elif nd.kind == "bn":
                nd.gamma[...] = 1
                nd.beta[...] = 0
                nd.running_mean = np.zeros(nd.dout, self.dtype)
                nd.running_var = np.ones(nd.dout, self.dtype)
                nd.mean = np.zeros(nd.dout, self.dtype)
                nd.inv_std = np.ones(nd.dout, self.dtype)
        self._workspaces = {}
        return self

    @property
    def built(self):
        return self.input_dim is not None

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
        return [(i, name, getattr(nd, name)) for i, nd in enumerate(self.nodes) for name, _ in nd.param_shapes()]

    # ------------------------------------------------------------- workspace
    def _threads(self):
        from numba import get_num_threads
        nt = get_num_threads()
        if nt != self._nt:
            self._nt, self._workspaces = nt, {}
        return nt

    def _workspace(self, N):
        ws = self._workspaces.get(N)
        if ws is None:
            if len(self._workspaces) >= 4:
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[N] = _Workspace(self, N)
        return ws

    # ------------------------------------------------------------- schedule
    def _forward(self, ws, training, step=0):
        nt, x = self._nt, ws.x
        for i, nd in enumerate(self.nodes):
            out = ws.outs[i]
            if nd.kind == "dense":
                KD._forward(out, x, nd.W, nd.b, nd.act, nd.alpha, nt)
            elif nd.kind == "bn":
                KB.forward(out, x, nd.gamma, nd.beta, nd.mean, nd.inv_std, nd.running_mean, nd.running_var,
                           nd.spec.momentum, nd.spec.eps, training, nd.act, nd.alpha, nt)
            elif nd.kind == "dropout":
                if training and nd.spec.p > 0:
                    KR.forward(out, x, self.seed, step, i, nd.spec.p, nt)
                else:
                    out[...] = x
            else:
                KA._forward(out, x, nd.act, nd.alpha, nt)
            x = out
        return x

    def _loss(self, ws, want_grad):
        out, d = ws.outs[-1], ws.deltas[-1]
        if self.loss == "softmax_ce":
            loss = KL._softmax_ce_int(d, out, ws.y, want_grad, ws.partial, self._nt)
        elif self.loss == "mse":
            loss = KL._mse(d, out, ws.y, want_grad, ws.partial, self._nt)
        else:
            loss = KL._bce(d, out, ws.y, want_grad, ws.partial, self._nt)
        last = self.nodes[-1]
        if want_grad and last.act != IDENTITY:
            KA._backward(d, d, out, last.act, last.alpha, self._nt)
        return loss

    def _backward(self, ws, fused_sgd, lr, wd, step, training=True):
        """deltas[i] holds d loss / d (pre-activation output of node i); fills grads (or updates)."""
        nt = self._nt
        for i in range(len(self.nodes) - 1, -1, -1):
            nd = self.nodes[i]
            x = ws.outs[i - 1] if i > 0 else ws.x
            dz = ws.deltas[i]
            want_dx = i > 0
            dx = ws.deltas[i - 1] if want_dx else ws.empty
            prev = self.nodes[i - 1] if want_dx else None
            pact, palpha = (prev.act, prev.alpha) if want_dx else (IDENTITY, 0.0)
            if nd.kind == "dense":
                KD.backward_step(dx, nd.dW, nd.db, dz, x, nd.W, nd.b, x, pact, palpha, want_dx,
                                 fused_sgd, lr, wd, nt)
            elif nd.kind == "bn":
                KB.backward(dx, nd.dgamma, nd.dbeta, dz, x, nd.gamma, nd.mean, nd.inv_std, training,
                            pact, palpha, want_dx, nt)
                if fused_sgd:  # gamma/beta are adjacent in the flat buffer: one in-place SGD launch
                    lo, hi = nd.slots[0][1], nd.slots[-1][1] + nd.slots[-1][2]
                    p = self.params[lo:hi]
                    KO._sgd(p, self.grads[lo:hi], p[:0], lr, 0.0, False, wd, nt)
            elif want_dx and nd.kind == "dropout":
                if training and nd.spec.p > 0:
                    KR.backward(dx, dz, self.seed, step, i, nd.spec.p, x, pact, palpha, nt)
                else:
                    KA._backward(dx, dz, x, pact, palpha, nt)
            elif want_dx:  # standalone activation: its own derivative was applied by its successor
                KA._backward(dx, dz, x, pact, palpha, nt)

    def _train_step(self, ws, lr):
        """One SGD/Adam step on the batch in ws.x / ws.y; returns the batch loss."""
        self.step_count += 1
        t = self.step_count
        opt = self.optimizer
        fused = opt.fusable and not self._need_grads
        if ws.fast is not None:
            loss = KD.mlp_train_step(*ws.fast, fused, lr, opt.weight_decay, self._nt)
        else:
            self._forward(ws, True, t)
            loss = self._loss(ws, True)
            self._backward(ws, fused, lr, opt.weight_decay, t)
        if not fused:
            opt.step(self.params, self.grads, self.opt_state, lr, t, self._nt)
        return loss

    # ------------------------------------------------------------- checking
    def _check_xy(self, X, y, name="X", yname="y", need_y=True):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(X).__name__}")
        if X.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name}: empty (0 samples)")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"{name}: expected a numeric array, got {X.dtype}")
        if not self.built:
            self.build(X.shape[1])
        if X.shape[1] != self.input_dim:
            raise ValueError(f"{name}: expected {self.input_dim} features, got {X.shape[1]}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if _check._count_nonfinite(X.reshape(-1)):
            raise ValueError(f"{name}: contains NaN or inf")
        if not need_y:
            return X, None
        if not isinstance(y, np.ndarray):
            raise TypeError(f"{yname}: expected a numpy.ndarray, got {type(y).__name__}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"{yname}: expected {X.shape[0]} rows like {name}, got {y.shape[0]}")
        if self.loss == "softmax_ce":
            if y.ndim != 1:
                raise ValueError(f"{yname}: expected 1-D integer class labels, got shape {y.shape}")
            if y.dtype.kind not in "iu":
                raise TypeError(f"{yname}: expected integer class labels, got {y.dtype}")
            y = np.ascontiguousarray(y, dtype=np.int64)
            KL.check_int_labels(y, y.shape[0], self.output_dim, yname)
        else:
            if y.ndim == 1 and self.output_dim == 1:
                y = y[:, None]
            if y.shape[1:] != (self.output_dim,):
                raise ValueError(f"{yname}: expected shape ({X.shape[0]}, {self.output_dim}), got {y.shape}")
            y = np.ascontiguousarray(y, dtype=self.dtype)
            if _check._count_nonfinite(y.reshape(-1)):
                raise ValueError(f"{yname}: contains NaN or inf")
            if self.loss == "sigmoid_bce" and (y.min() < 0 or y.max() > 1):
                raise ValueError(f"{yname}: sigmoid_bce targets must lie in [0, 1]")
        return X, y

    # ------------------------------------------------------------- public API
    def fit(self, X, y, epochs=1, batch_size=128, lr=None, optimizer=None, shuffle=True, seed=None,
            validation_data=None, schedule=None, progress=None, on_epoch=None, checkpoint=None,
            track_grad_norms=False, grad_norm_every=1):
        """Train; returns the history dict (lists per epoch: loss, accuracy, seconds, lr,
        and val_loss / val_accuracy with ``validation_data``).

        ``optimizer``: name or instance (default: the model's, else SGD); ``lr`` overrides its rate.
        ``schedule``: callable epoch -> lr multiplier (see fastbp.optim).  ``progress``: callable
        (done, total, loss) after each batch.  ``on_epoch``: callable (epoch, history).
        ``checkpoint``: path; saved after every epoch and, if it exists, resumed from.
        ``track_grad_norms``: record per-layer gradient norms every ``grad_norm_every`` steps.
        """
        for nm, v in (("epochs", epochs), ("batch_size", batch_size), ("grad_norm_every", grad_norm_every)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{nm}: expected a positive int, got {v!r}")
        X, y = self._check_xy(X, y)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data: expected a tuple (X_val, y_val)")
            val = self._check_xy(*validation_data, name="validation_data[0]", yname="validation_data[1]")
        if checkpoint is not None and os.path.exists(checkpoint):
            self._restore(checkpoint, strict=True)
        if optimizer is not None or self.optimizer is None:
            new = O.make(optimizer if optimizer is not None else "sgd", lr)
            if self.optimizer is None or O.to_dict(new) != O.to_dict(self.optimizer):
                self.optimizer = new
                self.opt_state = new.init_state(self.params.size, self.dtype)
        elif lr is not None:
            O.make(self.optimizer, lr)
        if schedule is not None and not callable(schedule):
            raise TypeError("schedule: expected a callable epoch -> lr multiplier")
        self._need_grads = bool(track_grad_norms)
        base_lr = self.optimizer.lr
        hist = self.history if (self.history is not None and self.epochs_done) else _new_history()
        if track_grad_norms:
            hist.setdefault("grad_norms", [])
        self.history = hist
        n, B = X.shape[0], int(batch_size)
        self._threads()
        self.train()
        start_epoch = self.epochs_done
        # with a checkpoint, `epochs` is the total to reach (a resumed run finishes the same schedule)
        end_epoch = int(epochs) if checkpoint is not None else start_epoch + int(epochs)
        for epoch in range(start_epoch, end_epoch):
            lr_e = base_lr * (schedule(epoch) if schedule else 1.0)
            rng = np.random.default_rng([self.seed if seed is None else int(seed), epoch])
            order = rng.permutation(n) if shuffle else np.arange(n)
            t0 = time.perf_counter()
            total, correct = 0.0, 0
            for s in range(0, n, B):
                idx = order[s:s + B]
                ws = self._workspace(idx.shape[0])
                np.take(X, idx, axis=0, out=ws.x)
                np.take(y, idx, axis=0, out=ws.y)
                loss = self._train_step(ws, lr_e)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training diverged: loss is {loss} at epoch {epoch}, "
                                             f"step {self.step_count}; lower lr (now {lr_e})")
                total += loss * idx.shape[0]
                if self.loss == "softmax_ce":
                    correct += _count_correct(ws.outs[-1], ws.y)
                if track_grad_norms and self.step_count % grad_norm_every == 0:
                    hist["grad_norms"].append(self._grad_norms(ws))
                if progress is not None:
                    progress(min(s + B, n), n, loss)
            secs = time.perf_counter() - t0
            hist["epoch"].append(epoch + 1)
            hist["loss"].append(total / n)
            hist["accuracy"].append(correct / n if self.loss == "softmax_ce" else None)
            hist["seconds"].append(secs)
            hist["samples_per_s"].append(n / secs if secs > 0 else float("inf"))
            hist["lr"].append(lr_e)
            if val is not None:
                ev = self.evaluate(*val, _checked=True)
                self.train()
                hist["val_loss"].append(ev["loss"])
                hist["val_accuracy"].append(ev.get("accuracy"))
            self.epochs_done = epoch + 1
            if checkpoint is not None:
                self.save(checkpoint)
            if on_epoch is not None:
                on_epoch(epoch, hist)
        self.optimizer.lr = base_lr
        return hist

    def _grad_norms(self, ws):
        row = {"step": self.step_count}
        for i, nd in enumerate(self.nodes):
            if nd.kind == "dense":
                row[f"layer{i}.W"] = float(np.linalg.norm(nd.dW))
            row[f"layer{i}.delta"] = float(np.sqrt(np.mean(ws.deltas[i].astype(np.float64) ** 2)))
        return row

    def _batches(self, X, batch_size):
        self._threads()
        for s in range(0, X.shape[0], batch_size):
            xb = X[s:s + batch_size]
            ws = self._workspace(xb.shape[0])
            ws.x[...] = xb
            yield s, ws

    def forward(self, X, batch_size=1024):
        """Outputs of the last layer (logits for softmax_ce/sigmoid_bce) in the current mode."""
        X, _ = self._check_xy(X, None, need_y=False)
        out = np.empty((X.shape[0], self.output_dim), self.dtype)
        for s, ws in self._batches(X, batch_size):
            out[s:s + ws.N] = self._forward(ws, self.training and _has_stochastic(self), self.step_count)
        return out

    def predict_proba(self, X, batch_size=1024):
        """Class probabilities (softmax_ce), sigmoid probabilities (sigmoid_bce) or outputs (mse); eval mode."""
        was = self.training
        self.eval()
        try:
            z = self.forward(X, batch_size).astype(np.float64)
        finally:
            self.training = was
        if self.loss == "softmax_ce":
            z = np.exp(z - z.max(axis=1, keepdims=True))
            return (z / z.sum(axis=1, keepdims=True)).astype(self.dtype)
        if self.loss == "sigmoid_bce":
            return (1 / (1 + np.exp(-z))).astype(self.dtype)
        return z.astype(self.dtype)

    def predict(self, X, batch_size=1024):
        """Class labels (softmax_ce), 0/1 (sigmoid_bce, threshold 0.5) or outputs (mse); eval mode."""
        p = self.predict_proba(X, batch_size)
        if self.loss == "softmax_ce":
            return p.argmax(axis=1)
        if self.loss == "sigmoid_bce":
            return (p >= 0.5).astype(np.int64)
        return p

    def evaluate(self, X, y, batch_size=1024, _checked=False):
        """Mean loss and accuracy (classification) in eval mode: {'loss': ..., 'accuracy': ...}."""
        if not _checked:
            X, y = self._check_xy(X, y)
        was = self.training
        self.eval()
        total, correct = 0.0, 0
        try:
            for s, ws in self._batches(X, batch_size):
                ws.y[...] = y[s:s + ws.N]
                self._forward(ws, False)
                total += self._loss(ws, False) * ws.N
                if self.loss == "softmax_ce":
                    correct += _count_correct(ws.outs[-1], ws.y)
                elif self.loss == "sigmoid_bce":
                    correct += int(((ws.outs[-1] >= 0) == (ws.y >= 0.5)).all(axis=1).sum())
        finally:
            self.training = was
        res = {"loss": total / X.shape[0]}
        if self.loss != "mse":
            res["accuracy"] = correct / X.shape[0]
        return res

    # ----------------------------------------------------------- checkpoints
    def _architecture(self):
        return {"format": FORMAT_VERSION, "layers": [L.spec_to_dict(s) for s in self.specs], "loss": self.loss,
                "dtype": self.dtype.name, "input_dim": self.input_dim, "seed": self.seed}

    def save(self, path):
        """Write an .npz (no pickle): params, BN running stats, optimizer state, JSON metadata.
        Atomic: written to a temp file in the same folder, then renamed over ``path``."""
        if not self.built:
            raise ValueError("save: the model has no parameters yet (call fit or build first)")
        meta = {"architecture": self._architecture(), "step_count": self.step_count,
                "epochs_done": self.epochs_done,
                "optimizer": O.to_dict(self.optimizer) if self.optimizer is not None else None,
                "history": self.history}
        arrays = {"params": self.params}
        for i, nd in enumerate(self.nodes):
            if nd.kind == "bn":
                arrays[f"bn{i}_running_mean"] = nd.running_mean
                arrays[f"bn{i}_running_var"] = nd.running_var
        for k, v in self.opt_state.items():
            arrays[f"opt_{k}"] = v
        arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".npz.tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("meta_json").tobytes().decode())
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid fastbp checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or "architecture" not in meta or "params" not in arrays:
            raise ValueError(f"{path}: not a valid fastbp checkpoint (missing metadata or params)")
        return arrays, meta

    @classmethod
    def load(cls, path):
        """Rebuild a model saved with ``save``; raises ValueError on a corrupt file."""
        arrays, meta = cls._read(path)
        a = meta["architecture"]
        if a.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported checkpoint format {a.get('format')!r}")
        try:
            specs = [L.spec_from_dict(d) for d in a["layers"]]
            m = cls(specs, loss=a["loss"], input_dim=a["input_dim"], dtype=a["dtype"], seed=a["seed"])
        except (TypeError, KeyError) as e:
            raise ValueError(f"{path}: invalid architecture in checkpoint ({e})") from None
        m._apply(arrays, meta, path)
        return m

    def _restore(self, path, strict=True):
        arrays, meta = self._read(path)
        mine, theirs = self._architecture(), dict(meta["architecture"])
        if {k: mine[k] for k in ("layers", "loss", "dtype", "input_dim")} != \
                {k: theirs.get(k) for k in ("layers", "loss", "dtype", "input_dim")}:
            raise ValueError(f"{path}: checkpoint is for a different architecture "
                             f"({theirs.get('layers')}, input_dim={theirs.get('input_dim')}) than this model")
        self._apply(arrays, meta, path)

    def _apply(self, arrays, meta, path):
        p = arrays["params"]
        if p.shape != self.params.shape or p.dtype != self.params.dtype:
            raise ValueError(f"{path}: parameter buffer has shape {p.shape} {p.dtype}, "
                             f"expected {self.params.shape} {self.params.dtype} for this architecture")
        self.params[...] = p
        for i, nd in enumerate(self.nodes):
            if nd.kind == "bn":
                nd.running_mean[...] = arrays[f"bn{i}_running_mean"]
                nd.running_var[...] = arrays[f"bn{i}_running_var"]
        self.step_count = int(meta.get("step_count", 0))
        self.epochs_done = int(meta.get("epochs_done", 0))
        self.history = meta.get("history")
        if meta.get("optimizer"):
            self.optimizer = O.from_dict(meta["optimizer"])
            self.opt_state = self.optimizer.init_state(self.params.size, self.dtype)
            for k in self.opt_state:
                if f"opt_{k}" in arrays:
                    self.opt_state[k][...] = arrays[f"opt_{k}"]


def _new_history():
    return {"epoch": [], "loss": [], "accuracy": [], "seconds": [], "samples_per_s": [], "lr": [],
            "val_loss": [], "val_accuracy": []}


def _has_stochastic(model):
    return any(nd.kind in ("dropout", "bn") for nd in model.nodes)


from .kernels._jit import jit as _jit  # noqa: E402


@_jit
def _count_correct(logits, labels):
    n = 0
    for i in range(logits.shape[0]):
        row = logits[i]
        best = 0
        for j in range(1, row.shape[0]):
            if row[j] > row[best]:
                best = j
        if best == labels[i]:
            n += 1
    return n
