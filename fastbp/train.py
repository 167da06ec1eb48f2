"""The training loop: epochs, shuffling, batches, history, validation, checkpoints.

It takes a model and drives its plan; it owns no maths.  Rules it applies:

* ``batch_size`` rows per step, the last batch of an epoch is the remainder; if that remainder
  is smaller than BatchNorm's minimum (2 rows in training), it is merged into the previous
  batch (that one step then has ``batch_size + 1`` rows).
* ``fit`` copies the optimizer it is given (``lr`` overrides the copy's rate): the caller's
  object is never mutated and never shared between models.
* With ``checkpoint`` the model is saved after every epoch and resumed from the file if it
  exists; ``epochs`` is then the total to reach.
"""
import math
import os
import time

import numpy as np

from . import inputs
from . import optim as O
from ._threads import get_num_threads
from .kernels import count_nonfinite
from .program import compile_seconds


def new_history():
    return {"epoch": [], "loss": [], "accuracy": [], "seconds": [], "samples_per_s": [], "lr": [],
            "val_loss": [], "val_accuracy": [], "compile_seconds": []}


def _batch_bounds(n, B, min_rows):
    starts = list(range(0, n, B))
    if len(starts) > 1 and n - starts[-1] < min_rows:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def _set_optimizer(model, optimizer, lr):
    """The model's optimizer becomes a copy of ``optimizer`` (default: its own, else SGD) with ``lr``;
    the optimizer state is kept when the new one's state has the same layout, else started afresh."""
    new = O.make(optimizer if optimizer is not None else (model.optimizer or "sgd"), lr)
    fresh = new.init_state(model.params.size, model.dtype)
    old = model.opt_state if type(new) is type(model.optimizer) else {}
    if {k: v.shape for k, v in fresh.items()} != {k: v.shape for k, v in old.items()}:
        model.opt_state = fresh
    model.optimizer = new


def fit(model, X, y, epochs=1, batch_size=128, lr=None, optimizer=None, shuffle=True, seed=None,
        validation_data=None, schedule=None, progress=None, on_epoch=None, checkpoint=None,
        track_grad_norms=False, grad_norm_every=1):
    """Train ``model``; returns the history dict (lists per epoch: loss, accuracy, seconds, lr,
    compile_seconds, and val_loss / val_accuracy with ``validation_data``).  ``seconds`` excludes
    first-run kernel compilation, which is reported as ``compile_seconds``.

    ``optimizer``: name or instance (copied; default: the model's, else SGD); ``lr`` overrides its
    rate.  ``schedule``: callable epoch -> lr multiplier (see fastbp.optim).  ``progress``: callable
    (done, total, loss) after each batch.  ``on_epoch``: callable (epoch, history).
    ``checkpoint``: path; saved after every epoch and, if it exists, resumed from.
    ``track_grad_norms``: record per-layer gradient norms every ``grad_norm_every`` steps.
    """
    from . import checkpoint as ck
    epochs = inputs.positive_int("epochs", epochs)
    B = inputs.positive_int("batch_size", batch_size)
    grad_norm_every = inputs.positive_int("grad_norm_every", grad_norm_every)
    seed = model.seed if seed is None else inputs.integer("seed", seed, 0, 2 ** 63 - 1)
    if lr is not None:
        lr = O.check_lr(lr)
    if schedule is not None and not callable(schedule):
        raise TypeError("schedule: expected a callable epoch -> lr multiplier")
    X, y = model._xy(X, y)
    val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data: expected a tuple (X_val, y_val)")
        val = model._xy(*validation_data, name="validation_data[0]", yname="validation_data[1]")
    if checkpoint is not None and os.path.exists(checkpoint):
        ck.restore(model, checkpoint)
    _set_optimizer(model, optimizer, lr)
    plan, opt = model.plan, model.optimizer
    fuse = not track_grad_norms   # grad norms need the gradients: no fused SGD then
    base_lr = opt.lr
    hist = model.history if (model.history is not None and model.epochs_done) else new_history()
    hist.setdefault("compile_seconds", [])
    if track_grad_norms:
        hist.setdefault("grad_norms", [])
    model.history = hist
    n = X.shape[0]
    bounds = _batch_bounds(n, B, plan.min_train_rows)
    if n < plan.min_train_rows:
        raise ValueError(f"X: BatchNorm in training needs at least {plan.min_train_rows} rows, got {n}")
    nt = get_num_threads()
    model.train()
    start_epoch = model.epochs_done
    end_epoch = epochs if checkpoint is not None else start_epoch + epochs
    for epoch in range(start_epoch, end_epoch):
        lr_e = base_lr * (schedule(epoch) if schedule else 1.0)
        lr_e = O.check_lr(lr_e, "schedule(epoch) * lr")
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n) if shuffle else np.arange(n)
        t0, c0 = time.perf_counter(), compile_seconds[0]
        total, correct = 0.0, 0.0
        for s, e in bounds:
            idx = order[s:e]
            ws = plan.train_workspace(e - s)
            np.take(X, idx, axis=0, out=ws.x)
            np.take(y, idx, axis=0, out=ws.y)
            model.step_count += 1
            t = model.step_count
            loss = plan.run(ws, "train", t, lr_e, True, nt, opt, model.opt_state, fuse=fuse)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training diverged: loss is {loss} at epoch {epoch + 1}, "
                                         f"step {t}; lower lr (now {lr_e})")
            if track_grad_norms and t % grad_norm_every == 0:
                hist["grad_norms"].append(_grad_norms(plan, ws, t))
            total += loss * (e - s)
            correct += float(ws.stats[1])
            if progress is not None:
                progress(e, n, loss)
        compiled = compile_seconds[0] - c0   # first-run kernel compilation, reported apart
        secs = time.perf_counter() - t0 - compiled
        if count_nonfinite(plan.params):   # the loss is checked per step, the update per epoch (~0.3 ms)
            raise FloatingPointError(f"training diverged: the parameters became NaN or inf during epoch {epoch + 1} "
                                     f"(last step {model.step_count}); lower lr (now {lr_e}); nothing was saved")
        hist["epoch"].append(epoch + 1)
        hist["loss"].append(total / n)
        hist["accuracy"].append(correct / n if plan.loss.has_accuracy else None)
        hist["seconds"].append(secs)
        hist["samples_per_s"].append(n / secs if secs > 0 else float("inf"))
        hist["lr"].append(lr_e)
        hist["compile_seconds"].append(compiled)
        if val is not None:
            ev = model.evaluate(*val)
            model.train()
            hist["val_loss"].append(ev["loss"])
            hist["val_accuracy"].append(ev.get("accuracy"))
        model.epochs_done = epoch + 1
        if checkpoint is not None:
            model.save(checkpoint)
        if on_epoch is not None:
            on_epoch(epoch, hist)
    return hist


def _grad_norms(plan, ws, t):
    """Per-layer |dW| and RMS delta of the step just taken."""
    row = {"step": t}
    for op in plan.ops:
        if "W" in op.grads:
            row[f"layer{op.index}.W"] = float(np.linalg.norm(op.grads["W"]))
        row[f"layer{op.index}.delta"] = float(np.sqrt(np.mean(ws.deltas[op.index].astype(np.float64) ** 2)))
    return row
