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
import contextlib
import itertools
import math
import os
import time

import numpy as np

from . import inputs
from . import optim as O
from ._threads import Governor, adaptive, capped, chunk_count, fixed_chunks
from .kernels import bind_blas, count_nonfinite
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


def _memory_batches(X, y, bounds, order, nt):
    """In-memory data: (rows, fill) per step; ``fill`` gathers the rows into the workspace (X by
    ``nt`` chunks over the threads)."""
    for s, e in bounds:
        idx = order[s:e]

        def fill(ws, idx=idx):
            ws.gather(X, y, idx, nt)
        yield e - s, fill


def _stream_batches(model, items, epoch):
    """Streamed data: each item a pair (X_batch, y_batch) of array-likes, checked on arrival."""
    k = -1
    for k, item in enumerate(items):
        where = f"batch {k} of epoch {epoch + 1}"
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"X: {where}: expected a pair (X_batch, y_batch), got {type(item).__name__}")
        Xb, yb = model._xy(item[0], item[1], name=f"X ({where})", yname=f"y ({where})")
        if Xb.shape[0] < model.plan.min_train_rows:
            raise ValueError(f"X ({where}): BatchNorm in training needs at least {model.plan.min_train_rows} "
                             f"rows per batch, got {Xb.shape[0]}")

        def fill(ws, Xb=Xb, yb=yb):
            ws.x[...] = Xb
            ws.y[...] = yb
        yield Xb.shape[0], fill
    if k < 0:
        raise ValueError(f"X: the stream gave no batches in epoch {epoch + 1} (a generator can be iterated "
                         "once: pass a callable that returns a new iterable per epoch)")


class _Stream:
    """Streamed data: a callable returning a new iterable per epoch, or a re-iterable (a list,
    a DataLoader); a one-shot iterator (a generator) gives one epoch only."""

    def __init__(self, X, n_epochs):
        if not callable(X):
            try:
                it = iter(X)
            except TypeError:
                raise TypeError(f"X: with y=None, expected an iterable of (X_batch, y_batch) pairs or a "
                                f"callable returning one, got {type(X).__name__}") from None
            if it is X and n_epochs > 1:
                raise ValueError("X: a one-shot iterator (e.g. a generator) cannot give more than one epoch; "
                                 "pass a callable returning a new iterator per epoch, or a re-iterable")
        self.X, self.pending = X, None

    def items(self):
        """The iterable of the next epoch."""
        if self.pending is not None:
            items, self.pending = self.pending, None
            return items
        return self.X() if callable(self.X) else iter(self.X)

    def peek(self):
        """The next epoch's first item (kept for that epoch), or None."""
        it = iter(self.items())
        head = next(it, None)
        self.pending = itertools.chain([head], it) if head is not None else it
        return head


def _split(model, X, y, fraction, seed):
    """(train X, train y, (val X, val y)): a seeded random ``fraction`` of the rows for validation."""
    f = inputs.scalar("validation_split", fraction, lo=0, hi=1, lo_open=True, hi_open=True)
    n = X.shape[0]
    n_val = int(math.ceil(n * f))
    if n_val < 1 or n - n_val < max(model.plan.min_train_rows, 1):
        raise ValueError(f"validation_split: {fraction!r} of {n} rows leaves {n - n_val} for training")
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    tr, va = np.sort(order[n_val:]), np.sort(order[:n_val])
    return X[tr], y[tr], (X[va], y[va])


def _callbacks(callbacks, progress, on_epoch, verbose):
    """The callback list: the user's, then adapters for the older ``progress``/``on_epoch``
    functions, then the progress printer for ``verbose``."""
    from . import callbacks as C
    cbs = list(callbacks or [])
    for i, cb in enumerate(cbs):
        if not isinstance(cb, C.Callback):
            raise TypeError(f"callbacks[{i}]: expected a fastbp.callbacks.Callback, got {type(cb).__name__}")
    if progress is not None:
        if not callable(progress):
            raise TypeError("progress: expected a callable (done, total, loss)")
        cbs.append(C.LambdaCallback(on_batch_end=lambda m, t, logs: progress(logs["done"], logs["total"],
                                                                             logs["loss"])))
    if on_epoch is not None:
        if not callable(on_epoch):
            raise TypeError("on_epoch: expected a callable (epoch, history)")
        cbs.append(C.LambdaCallback(on_epoch_end=lambda m, e, logs: on_epoch(e, m.history)))
    if inputs.flag("verbose", verbose):
        cbs.append(C.Progress())
    return cbs


def fit(model, X, y=None, epochs=1, batch_size=128, lr=None, optimizer=None, shuffle=True, seed=None,
        validation_data=None, validation_split=None, schedule=None, callbacks=None, verbose=False, progress=None,
        on_epoch=None, checkpoint=None, track_grad_norms=False, grad_norm_every=1, distributed=None, sync_every=1):
    """Train ``model``; returns the history dict (lists per epoch: loss, accuracy, seconds, lr,
    compile_seconds, and val_loss / val_accuracy with validation data).  ``seconds`` excludes
    first-run kernel compilation, which is reported as ``compile_seconds``.

    ``X, y``: array-likes (converted to C-contiguous arrays of the model's dtype; a copy unless
    they already are), or ``y=None`` and ``X`` an iterable of ``(X_batch, y_batch)`` pairs (e.g. a
    torch DataLoader) or a callable returning a new one per epoch: streamed data, batched and
    shuffled by the source (``batch_size``, ``shuffle`` and ``seed`` do not apply).
    ``optimizer``: name or instance (copied; default: the model's, else SGD); ``lr`` overrides its
    rate.  ``schedule``: a ``fastbp.schedules`` object (evaluated every step) or a callable epoch ->
    lr multiplier.  ``validation_data=(X_val, y_val)`` or ``validation_split=f`` (a seeded random
    fraction f of the training rows, held out) give val_loss / val_accuracy per epoch.
    ``callbacks``: ``fastbp.callbacks.Callback`` objects (EarlyStopping, ModelCheckpoint, ...; one
    sets ``model.stop_training`` to stop).  ``verbose``: a progress bar on a terminal and one line
    per epoch.  ``progress``: callable (done, total, loss) after each batch (total None for
    streams); ``on_epoch``: callable (epoch, history).  ``checkpoint``: path; saved after every
    epoch and, if it exists, resumed from (``epochs`` is then the total to reach).
    ``track_grad_norms``: record per-layer gradient norms every ``grad_norm_every`` steps.
    ``distributed``: a ``fastbp.distributed`` communicator: synchronous data-parallel training
    (``batch_size`` is the global batch; see that module; a last batch of fewer than ranks x the
    model's minimum rows, 1 or 2 with BatchNorm, is merged into the previous one: 201 rows at batch
    40 on 2 ranks take 5 steps, 6 in one process).  Only rank 0 prints, calls
    ``progress``/``on_epoch`` and writes checkpoints; an error on any rank stops every rank.
    ``sync_every=k`` (k > 1, with ``distributed``): local SGD instead, for slow networks: each
    rank steps on its own shard of every global batch with its own optimizer state, and the
    parameters (and BatchNorm statistics, which are then per rank) are averaged over ranks every
    k steps and at the end of every epoch; results then differ from single-process training.
    """
    sync_every = inputs.positive_int("sync_every", sync_every)
    if sync_every > 1 and distributed is None:
        raise ValueError("sync_every: only meaningful with distributed=comm")
    if distributed is not None:
        return _fit_distributed(model, X, y, distributed, epochs=epochs, batch_size=batch_size, lr=lr,
                                optimizer=optimizer, shuffle=shuffle, seed=seed, validation_data=validation_data,
                                validation_split=validation_split, schedule=schedule, callbacks=callbacks,
                                verbose=verbose, progress=progress, on_epoch=on_epoch, checkpoint=checkpoint,
                                track_grad_norms=track_grad_norms, grad_norm_every=grad_norm_every,
                                sync_every=sync_every)
    return _fit(model, X, y, epochs, batch_size, lr, optimizer, shuffle, seed, validation_data, validation_split,
                schedule, callbacks, verbose, progress, on_epoch, checkpoint, track_grad_norms, grad_norm_every)


def _fit_distributed(model, X, y, comm, **kw):
    from . import distributed as D
    if not isinstance(comm, D.Comm):
        raise TypeError(f"distributed: expected a fastbp.distributed communicator, got {type(comm).__name__}")
    if y is None:
        raise ValueError("distributed: streamed data is not supported (every rank indexes the same arrays)")
    if kw["track_grad_norms"]:
        raise ValueError("track_grad_norms: not available with distributed training")
    if comm.rank != 0:
        kw.update(verbose=False, progress=None, on_epoch=None)
    comm.announce()
    model.rank = comm.rank
    try:
        with capped(comm.threads):     # a ceiling: the CPUs the launcher gave this rank
            return _fit(model, X, y, comm=comm, **kw)
    except D.CommError:
        raise
    except BaseException as e:
        D.report_failure(comm, e)   # first: the abort can end this process before the exception prints
        comm.abort(1)               # the others are waiting in a collective: end the job instead of a hang
        raise
    finally:
        model.rank = 0


def _agreement_fields(model, X, y, opt, seed, B, epochs, shuffle, sync_every, schedule, validation_split):
    """What every rank of a distributed fit must agree on (``distributed.check_agreement``); the data
    by its shape and a checksum of up to 1024 evenly spaced rows."""
    every = max(1, X.shape[0] // 1024)
    sample = (float(np.add.reduce(X[::every].ravel(), dtype=np.float64)),
              float(np.add.reduce(np.asarray(y[::every], np.float64).ravel())))
    return {"layers": repr(model.specs), "loss": model.loss, "dtype": model.dtype.name, "precision": model.precision,
            "model seed": model.seed, "optimizer": repr(opt), "seed": seed, "batch_size": B, "epochs": epochs,
            "rows": X.shape[0], "features": X.shape[1], "data checksum": sample, "shuffle": bool(shuffle),
            "sync_every": sync_every, "validation_split": validation_split,
            "schedule": None if schedule is None else getattr(schedule, "__name__", type(schedule).__name__),
            "epochs done (resumed)": model.epochs_done, "steps done (resumed)": model.step_count}


def _fit(model, X, y, epochs, batch_size, lr, optimizer, shuffle, seed, validation_data, validation_split,
         schedule, callbacks, verbose, progress, on_epoch, checkpoint, track_grad_norms, grad_norm_every, comm=None,
         sync_every=1):
    run = _Run(model, epochs, batch_size, lr, shuffle, seed, schedule, callbacks, verbose, progress, on_epoch,
               checkpoint, track_grad_norms, grad_norm_every)
    X, y, val = run.data(X, y, validation_data, validation_split)
    if checkpoint is not None and os.path.exists(checkpoint):
        from . import checkpoint as ck
        ck.restore(model, checkpoint)
    _set_optimizer(model, optimizer, lr)
    stepper = _stepper(run, X, y, comm, sync_every, validation_split)
    run.start_history()
    bounds = run.bounds(X, comm)
    bind_blas()            # once per process (and the BLAS timing once per machine): before any epoch's timer
    nt = chunk_count()     # chunks per kernel for the whole fit (validation too), whichever threads run them
    stepper.nt = nt
    gov = Governor(compiling=compile_seconds) if comm is None and nt > 1 and adaptive() else None
    stepper.gov = gov if gov is not None else contextlib.nullcontext()
    model.train()
    model.stop_training = False
    start, end = model.epochs_done, (run.epochs if checkpoint is not None else model.epochs_done + run.epochs)
    for cb in run.cbs:
        cb.on_train_begin(model, {"epochs": end - start})
    try:
        with fixed_chunks(nt):
            for epoch in range(start, end):
                totals = _train_epoch(run, stepper, X, y, bounds, epoch)
                _end_epoch(run, stepper, epoch, totals, val)
                if model.stop_training:
                    break
    finally:
        if gov is not None:
            gov.close()
            model.thread_changes = gov.changes     # (window, threads) each time the governor acted
    for cb in run.cbs:
        cb.on_train_end(model, {"epochs_done": model.epochs_done})
    return model.history


class _Run:
    """One fit's checked settings and what the epochs share (the model, callbacks, history)."""

    def __init__(self, model, epochs, batch_size, lr, shuffle, seed, schedule, callbacks, verbose, progress,
                 on_epoch, checkpoint, track_grad_norms, grad_norm_every):
        from .schedules import as_schedule
        self.model, self.shuffle, self.checkpoint = model, shuffle, checkpoint
        self.epochs = inputs.positive_int("epochs", epochs)
        self.B = inputs.positive_int("batch_size", batch_size)
        self.grad_norm_every = inputs.positive_int("grad_norm_every", grad_norm_every)
        self.seed = model.seed if seed is None else inputs.integer("seed", seed, 0, 2 ** 63 - 1)
        if lr is not None:
            O.check_lr(lr)
        self.schedule = schedule     # as given (the ranks compare it)
        self.sched = as_schedule(schedule) if schedule is not None else None
        self.cbs = _callbacks(callbacks, progress, on_epoch, verbose)
        self.track_grad_norms = track_grad_norms
        self.source = None

    def data(self, X, y, validation_data, validation_split):
        """(X, y, validation pair or None): arrays checked and converted, or a stream (X: _Stream)."""
        model = self.model
        if validation_data is not None and validation_split is not None:
            raise ValueError("validation_split: give validation_data or validation_split, not both")
        if y is None:
            if validation_split is not None:
                raise ValueError("validation_split: not available for streamed data (pass validation_data)")
            self.source = _Stream(X, self.epochs)
            if not model.built:   # the first batch says the width
                head = self.source.peek()
                if isinstance(head, (tuple, list)) and len(head) == 2:
                    model._x(head[0], name="X (batch 0 of epoch 1)")
        else:
            X, y = model._xy(X, y)
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data: expected a tuple (X_val, y_val)")
            val = model._xy(*validation_data, name="validation_data[0]", yname="validation_data[1]")
        elif validation_split is not None:
            X, y, val = _split(model, X, y, validation_split, self.seed)
        return X, y, val

    def start_history(self):
        model = self.model
        hist = model.history if (model.history is not None and model.epochs_done) else new_history()
        hist.setdefault("compile_seconds", [])
        if self.track_grad_norms:
            hist.setdefault("grad_norms", [])
        model.history = hist
        self.base_lr = model.optimizer.lr

    def bounds(self, X, comm):
        """(start, end) rows of each step for in-memory data (None for streams)."""
        if self.source is not None:
            return None
        plan, n = self.model.plan, X.shape[0]
        per_batch = plan.min_train_rows * (comm.size if comm is not None else 1)
        if comm is not None and self.B < per_batch:
            raise ValueError(f"batch_size: {self.B} rows cannot give each of {comm.size} ranks {plan.min_train_rows}")
        if n < per_batch:
            raise ValueError(f"X: BatchNorm in training needs at least {plan.min_train_rows} rows, got {n}")
        return _batch_bounds(n, self.B, per_batch)

    def lr_at(self, t, epoch):
        if self.sched is None:
            return self.base_lr
        return O.check_lr(self.base_lr * self.sched.multiplier(t, epoch), "schedule value * lr")


class _Local:
    """One process: each step fills the batch's workspace and runs the fused training program."""
    distributed = False

    def __init__(self, run):
        self.run, self.model = run, run.model
        self.fuse = not run.track_grad_norms   # grad norms need the gradients: no fused SGD then
        self.last_ws = None

    def step(self, rows, fill, t, lr):
        model, plan = self.model, self.model.plan
        ws = plan.train_workspace(rows)
        fill(ws)          # fills the workspace with the batch's rows
        # bf16 weight copies stay current across back-to-back fused steps in one workspace; any
        # other step (new workspace, callbacks that may touch weights) re-rounds
        current = ws is self.last_ws and not self.run.cbs
        with self.gov:
            loss = plan.run(ws, "train", t, lr, True, self.nt, model.optimizer, model.opt_state, fuse=self.fuse,
                            bf16_current=current)
        self.last_ws = ws
        return loss, ws.stats[1], rows

    def end_epoch(self, sums):
        return sums


class _Synced:
    """Data-parallel: every step all-reduces the gradients (``distributed.Step``)."""
    distributed = True

    def __init__(self, run, X, y, step):
        self.run, self.X, self.y, self.step_ = run, X, y, step

    def step(self, rows, idx, t, lr):
        loss, n_correct = self.step_.run(self.X, self.y, idx, t, lr, self.nt)
        return loss, n_correct, rows

    def end_epoch(self, sums):
        return sums


class _LocalSGD(_Synced):
    """Local SGD: each rank steps on its shard; parameters are averaged every k steps and at the
    end of every epoch (with the epoch's loss sums)."""

    def __init__(self, run, X, y, step, comm, k):
        super().__init__(run, X, y, step)
        self.comm, self.k = comm, k

    def step(self, rows, idx, t, lr):
        loss, n_correct, rows = self.step_.run_local(self.X, self.y, idx, t, lr, self.nt)
        if t % self.k == 0:
            self.step_.average(self.run.model)
        return loss, n_correct, rows

    def end_epoch(self, sums):
        self.step_.average(self.run.model)
        s = np.array(sums, np.float64)
        self.comm.allreduce(s)
        return float(s[0]), float(s[1]), int(s[2])


def _stepper(run, X, y, comm, sync_every, validation_split):
    """The step strategy of this fit; distributed ones first check that the ranks agree."""
    if comm is None:
        return _Local(run)
    from .distributed import Step, check_agreement
    model = run.model
    opt = model.optimizer
    check_agreement(comm, _agreement_fields(model, X, y, opt, run.seed, run.B, run.epochs, run.shuffle, sync_every,
                                            run.schedule, validation_split))
    step = Step(model.plan, comm, opt, model.opt_state)
    step.broadcast_state(model)
    return _LocalSGD(run, X, y, step, comm, sync_every) if sync_every > 1 else _Synced(run, X, y, step)


def _batches(run, stepper, X, y, bounds, epoch):
    """(rows, item) per step of ``epoch``: item fills a workspace (one process) or is the global
    batch's row indices (distributed: the step gathers its own shard)."""
    if run.source is not None:
        return _stream_batches(run.model, run.source.items(), epoch)
    n = X.shape[0]
    order = np.random.default_rng([run.seed, epoch]).permutation(n) if run.shuffle else np.arange(n)
    if stepper.distributed:
        return ((e - s, order[s:e]) for s, e in bounds)
    return _memory_batches(X, y, bounds, order, stepper.nt)


def _train_epoch(run, stepper, X, y, bounds, epoch):
    """The steps of one epoch: (loss sum, correct, rows, last lr, start time, compile seconds before)."""
    model, hist = run.model, run.model.history
    total_rows = None if run.source is not None else X.shape[0]
    t0, c0 = time.perf_counter(), compile_seconds[0]
    total, correct, done, lr_t = 0.0, 0.0, 0, run.base_lr
    for rows, item in _batches(run, stepper, X, y, bounds, epoch):
        model.step_count += 1
        t = model.step_count
        lr_t = run.lr_at(t, epoch)
        loss, n_correct, rows = stepper.step(rows, item, t, lr_t)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged: loss is {loss} at epoch {epoch + 1}, "
                                     f"step {t}; lower lr (now {lr_t})")
        if run.track_grad_norms and t % run.grad_norm_every == 0:
            hist["grad_norms"].append(_grad_norms(model.plan, stepper.last_ws, t))
        total += loss * rows
        correct += float(n_correct)
        done += rows
        if run.cbs:
            logs = {"step": t, "loss": loss, "rows": rows, "done": done, "total": total_rows, "lr": lr_t}
            for cb in run.cbs:
                cb.on_batch_end(model, t, logs)
            if model.stop_training:
                break
    total, correct, done = stepper.end_epoch((total, correct, done))
    return total, correct, done, lr_t, t0, c0


def _end_epoch(run, stepper, epoch, totals, val):
    """History, validation, schedule, checkpoint and callbacks after ``epoch``."""
    model, plan, hist = run.model, run.model.plan, run.model.history
    total, correct, done, lr_t, t0, c0 = totals
    compiled = compile_seconds[0] - c0   # first-run kernel compilation, reported apart
    secs = time.perf_counter() - t0 - compiled
    _check_params(plan, f"during epoch {epoch + 1} (last step {model.step_count}); lower lr (now {lr_t})")
    hist["epoch"].append(epoch + 1)
    hist["loss"].append(total / done)
    hist["accuracy"].append(correct / done if plan.loss.has_accuracy else None)
    hist["seconds"].append(secs)
    hist["samples_per_s"].append(done / secs if secs > 0 else float("inf"))
    hist["lr"].append(lr_t)
    hist["compile_seconds"].append(compiled)
    if val is not None:
        ev = model.evaluate(*val)
        model.train()
        hist["val_loss"].append(ev["loss"])
        hist["val_accuracy"].append(ev.get("accuracy"))
    model.epochs_done = epoch + 1
    logs = {k: hist[k][-1] for k in ("epoch", "loss", "accuracy", "seconds", "lr")}
    logs.update(val_loss=hist["val_loss"][-1] if val is not None else None,
                val_accuracy=hist["val_accuracy"][-1] if val is not None else None)
    if run.sched is not None:
        run.sched.observe(logs)
    if run.checkpoint is not None and getattr(model, "rank", 0) == 0:
        model.save(run.checkpoint)
    for cb in run.cbs:
        cb.on_epoch_end(model, epoch, logs)


def _check_params(plan, where):
    """The loss is checked every step, and a non-finite parameter makes the next step's loss
    non-finite; this scan (~0.3 ms for 670k parameters) covers the last update."""
    if count_nonfinite(plan.params):
        raise FloatingPointError(f"training diverged: the parameters became NaN or inf {where}; nothing was saved")


def train_on_batch(model, X, y, lr=None, optimizer=None):
    """One training step on the batch (X, y) as given (no shuffling, no history entry); returns
    the batch's loss.  Uses the model's optimizer (and its state) unless ``optimizer``/``lr`` is
    given.  The step counts for dropout masks and Adam's bias correction like a ``fit`` step."""
    X, y = model._xy(X, y)
    if lr is not None:
        lr = O.check_lr(lr)
    if optimizer is not None or model.optimizer is None or (lr is not None and lr != model.optimizer.lr):
        _set_optimizer(model, optimizer, lr)
    plan = model.plan
    if X.shape[0] < plan.min_train_rows:
        raise ValueError(f"X: BatchNorm in training needs at least {plan.min_train_rows} rows, got {X.shape[0]}")
    model.train()
    ws = plan.train_workspace(X.shape[0])
    ws.x[...] = X
    ws.y[...] = y
    model.step_count += 1
    loss = plan.run(ws, "train", model.step_count, model.optimizer.lr, True, chunk_count(), model.optimizer,
                    model.opt_state, fuse=True)
    if not math.isfinite(loss):
        raise FloatingPointError(f"training diverged: loss is {loss} at step {model.step_count}; lower lr "
                                 f"(now {model.optimizer.lr})")
    _check_params(plan, f"at step {model.step_count}; lower lr (now {model.optimizer.lr})")
    return loss


def _grad_norms(plan, ws, t):
    """Per-layer |dW| and RMS delta of the step just taken."""
    row = {"step": t}
    for op in plan.ops:
        if "W" in op.grads:
            row[f"layer{op.index}.W"] = float(np.linalg.norm(op.grads["W"]))
        row[f"layer{op.index}.delta"] = float(np.sqrt(np.mean(ws.deltas[op.index].astype(np.float64) ** 2)))
    return row
