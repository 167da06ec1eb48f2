"""Callbacks for ``Model.fit``: hooks at the start, after every batch and epoch, and at the end.

A callback subclasses ``Callback`` and overrides what it needs; setting
``model.stop_training = True`` ends training after the current batch (from ``on_batch_end``) or
epoch.  Epoch ``logs``: ``epoch`` (1-based), ``loss``, ``accuracy``, ``val_loss``,
``val_accuracy`` (None where not computed), ``lr``, ``seconds``.  Batch ``logs``: ``step``,
``loss``, ``rows``, ``lr``.

    model.fit(X, y, epochs=100, validation_split=0.1,
              callbacks=[EarlyStopping("val_loss", patience=3), ModelCheckpoint("best.npz")])
"""
import math

from .schedules import _mode_sign, monitored


class Callback:
    def on_train_begin(self, model, logs):
        pass

    def on_batch_end(self, model, step, logs):
        pass

    def on_epoch_end(self, model, epoch, logs):
        pass

    def on_train_end(self, model, logs):
        pass


def snapshot(model):
    """Copies of the parameters and the running statistics (what evaluation depends on)."""
    return model.params.copy(), [(a, a.copy()) for op in model.layers for a in op.state.values()]


def restore(model, snap):
    params, states = snap
    model.params[...] = params
    for dst, src in states:
        dst[...] = src


class _Monitor(Callback):
    def __init__(self, monitor, min_delta, mode, name):
        self.monitor, self.name = monitor, name
        if not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool) or not min_delta >= 0:
            raise ValueError(f"{name}.min_delta: expected a number >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.sign = _mode_sign(mode, monitor, f"{name}.mode")

    def improved(self, logs):
        v = monitored(logs, self.monitor, f"{self.name}.monitor") * self.sign
        if v < self.best - self.min_delta:
            self.best = v
            return True
        return False


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs; with
    ``restore_best`` the weights of the best epoch are put back at the end.  ``stopped_epoch``
    and ``best_epoch`` tell what happened (0 if it never stopped)."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best=True):
        super().__init__(monitor, min_delta, mode, "EarlyStopping")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping.patience: expected an int >= 0, got {patience!r}")
        self.patience, self.restore_best = patience, bool(restore_best)

    def on_train_begin(self, model, logs):
        self.best, self.wait, self.best_epoch, self.stopped_epoch, self.snap = math.inf, 0, 0, 0, None

    def on_epoch_end(self, model, epoch, logs):
        if self.improved(logs):
            self.wait, self.best_epoch = 0, logs["epoch"]
            if self.restore_best:
                self.snap = snapshot(model)
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = logs["epoch"]
            model.stop_training = True

    def on_train_end(self, model, logs):
        if self.restore_best and self.snap is not None and self.stopped_epoch:
            restore(model, self.snap)


class ModelCheckpoint(_Monitor):
    """Save the model to ``path`` after an epoch: every epoch, or (``best_only``) when ``monitor``
    improved.  The file is written atomically (``Model.save``)."""

    def __init__(self, path, monitor="val_loss", best_only=True, min_delta=0.0, mode="auto"):
        super().__init__(monitor, min_delta, mode, "ModelCheckpoint")
        self.path, self.best_only = path, bool(best_only)

    def on_train_begin(self, model, logs):
        self.best, self.saved = math.inf, []

    def on_epoch_end(self, model, epoch, logs):
        if (self.improved(logs) or not self.best_only) and getattr(model, "rank", 0) == 0:   # rank 0 writes
            model.save(self.path)
            self.saved.append(logs["epoch"])


class LambdaCallback(Callback):
    """Callbacks from plain functions: ``LambdaCallback(on_epoch_end=lambda model, epoch, logs: ...)``."""

    def __init__(self, on_train_begin=None, on_batch_end=None, on_epoch_end=None, on_train_end=None):
        for name, fn in (("on_train_begin", on_train_begin), ("on_batch_end", on_batch_end),
                         ("on_epoch_end", on_epoch_end), ("on_train_end", on_train_end)):
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"LambdaCallback.{name}: expected a callable, got {fn!r}")
                setattr(self, name, fn)


class Progress(Callback):
    """``fit(verbose=True)``: a tqdm bar per epoch on a terminal (stderr), and one plain line
    per epoch on stdout."""

    def __init__(self, file=None):
        import sys
        self.file = file or sys.stdout
        self.tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.bar = None

    def on_batch_end(self, model, step, logs):
        if not self.tty:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=logs.get("total"), unit="row", leave=False, dynamic_ncols=True)
        self.bar.update(logs["rows"])
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    def on_epoch_end(self, model, epoch, logs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        parts = [f"epoch {logs['epoch']}", f"loss {logs['loss']:.4f}"]
        for k in ("accuracy", "val_loss", "val_accuracy"):
            if logs.get(k) is not None:
                parts.append(f"{k} {logs[k]:.4f}")
        parts.append(f"{logs['seconds']:.2f} s")
        print(", ".join(parts), file=self.file, flush=True)

    def on_train_end(self, model, logs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
