"""The classic backprop experiments, on the public API only (Model, fit, evaluate, data, gradcheck)."""
import os
import sys
import time

import numpy as np

from . import plotting
from .callbacks import Callback
from .data import diagonal_spheres, load_fashion_mnist, make_spheres
from .history import save_history
from .layers import BatchNorm, Dense, Dropout
from .model import Model


def _rms_deltas(rows, n, scale=1.0):
    """Mean over the first ``n`` recorded steps of each layer's RMS delta (times ``scale``),
    ordered input -> output."""
    names = sorted((k for k in rows[0] if k.endswith(".delta")), key=lambda k: int(k[5:k.index(".")]))
    return {k.split(".")[0]: scale * float(np.mean([r[k] for r in rows[:n]])) for k in names}


class _EpochProgress(Callback):
    """Progress of an experiment run: a bar on a terminal, else a line every ``every`` epochs."""

    def __init__(self, label, total, say, every):
        self.label, self.total, self.say, self.every, self.bar = label, total, say, every, None
        self.tty = sys.stderr.isatty()

    def on_train_begin(self, model, logs):
        if self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=self.label, unit="epoch", leave=False, file=sys.stderr)

    def on_epoch_end(self, model, epoch, logs):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)
        elif logs["epoch"] % self.every == 0 or logs["epoch"] == self.total:
            self.say(f"  {self.label}: epoch {logs['epoch']}/{self.total}, loss {logs['loss']:.4f}")

    def on_train_end(self, model, logs):
        if self.bar is not None:
            self.bar.close()


VANISHING_VARIANTS = ("article", "full-batch")


def vanishing(out_dir="runs/vanishing", seed=0, variant="article", relu=False, epochs=None, lr=None,
              batch_size=None, target=None, say=print, max_steps=None, deep=False):
    """The vanishing-gradient experiment: a sigmoid 3-3-2-1 net on the two spheres.

    ``variant="article"`` (default) follows article 000: its data (``make_spheres()``: centres
    (1, 1, 1) and (-1, 2, -7), radius 1, 100 points each, labels 1/0), its cost
    C = 1/(2n) sum ||y - a||^2 and mini-batch SGD (batch 10, eta 3.0, 300 epochs).  fastbp's
    ``mse`` is 2C for one output, so SGD with rate eta on C is fastbp's mse with lr eta/2: the
    updates are identical, and losses and deltas are reported in the article's convention
    (delta = dC_x/dz per sample).  ``variant="full-batch"``: the earlier set-up (2000 points on the
    diagonal, full-batch steps, lr 1.0, mean(e^2)).  ``relu=True`` adds the same net with ReLU
    hidden layers.  Reports the per-layer delta magnitudes averaged over the first 50 steps
    (input layer first) and the steps until the training cost first reaches ``target``.
    ``deep=True`` adds a 20-layer sigmoid chain and the same 20 layers with residual connections
    (``deep_nets``), trained alike, and a second plot of their first and last layers' deltas.
    """
    if variant not in VANISHING_VARIANTS:
        raise ValueError(f"variant: expected one of {VANISHING_VARIANTS}, got {variant!r}")
    if variant == "article":
        X, y = make_spheres(seed=seed)
        batch_size = batch_size or 10
        eta = 3.0 if lr is None else lr
        epochs = epochs or 300
        cost_scale, fit_lr, target = 0.5, eta / 2, 0.01 if target is None else target
        data_desc = "article 000's spheres: centres (1,1,1) and (-1,2,-7), radius 1, 100 points each"
    else:
        X, y = diagonal_spheres(2000, seed=seed)
        batch_size = X.shape[0]
        eta = fit_lr = 1.0 if lr is None else lr
        epochs = epochs or max_steps or 2000
        cost_scale, target = 1.0, 0.01 if target is None else target
        data_desc = "2000 points in two unit balls 3 apart on the diagonal, full batch"
    t = y.astype(np.float32)[:, None]
    cost = "C = 1/(2n) sum ||y - a||^2" if variant == "article" else "mean(e^2)"
    say(f"vanishing gradients ({variant}): 3-3-2-1, {data_desc}; cost {cost}; SGD eta {eta}, batch {batch_size}, "
        f"up to {epochs} epochs")
    results, traces, files = {}, {}, []
    for hidden in ("sigmoid", "relu") if relu else ("sigmoid",):
        model = Model([Dense(3, hidden), Dense(2, hidden), Dense(1, "sigmoid")], loss="mse", seed=seed)
        reached = {}

        def on_epoch(epoch, h, model=model, reached=reached):
            if "step" not in reached and h["loss"][-1] * cost_scale <= target:
                reached["step"] = model.step_count

        t0 = time.perf_counter()
        h = model.fit(X, t, epochs=epochs, batch_size=batch_size, lr=fit_lr, seed=seed, track_grad_norms=True,
                      on_epoch=on_epoch, callbacks=[_EpochProgress(f"{hidden} net", epochs, say, max(epochs // 5, 1))])
        secs = time.perf_counter() - t0
        acc = float(((model.predict(X)[:, 0] >= 0.5) == y).mean())
        # fastbp's deltas are d(mean mse)/dz: times the batch size = per sample, times cost_scale = of C
        deltas = _rms_deltas(h["grad_norms"], 50, scale=batch_size * cost_scale)
        results[hidden] = {"deltas": deltas, "steps_to_target": reached.get("step"),
                           "final_loss": h["loss"][-1] * cost_scale, "accuracy": acc, "seconds": secs}
        traces[f"{hidden} hidden layers"] = h["grad_norms"]
        files.append(save_history(h, os.path.join(out_dir, f"history_{hidden}.json")))
        say(f"\n{hidden} hidden layers: RMS delta per layer (first 50 steps, input layer first)")
        for name, v in deltas.items():
            say(f"  {name:8s} {v:.3e}")
    say(f"\n{'hidden':>8} {'delta in':>10} {'delta out':>10} {'out/in':>8} {'steps to cost<=' + str(target):>20} "
        f"{'final cost':>10} {'accuracy':>9}")
    for hidden, r in results.items():
        d = list(r["deltas"].values())
        steps = r["steps_to_target"] if r["steps_to_target"] is not None else f"> {model.step_count}"
        say(f"{hidden:>8} {d[0]:10.3e} {d[-1]:10.3e} {d[-1] / d[0]:8.1f} {steps!s:>20} {r['final_loss']:10.4f} "
            f"{r['accuracy']:9.3f}")
    if plotting.available():
        files.append(plotting.grad_norms(traces, os.path.join(out_dir, "grad_norms.png"),
                                         f"per-layer RMS delta during training (3-3-2-1, {variant})"))
    else:
        say(f"(no PNG: {plotting.PLOT_HINT})")
    if deep:
        results.update(_deep(X, t, y, out_dir, seed, epochs, batch_size, fit_lr, cost_scale, target, say, files))
    say("\nwrote:\n  " + "\n  ".join(files))
    return results, files


DEEP_LAYERS, DEEP_WIDTH = 20, 8


def deep_nets(seed=0, layers=DEEP_LAYERS, width=DEEP_WIDTH):
    """{name: model}: ``layers`` sigmoid layers of ``width`` units, a BatchNorm and a sigmoid output,
    as a chain and with a residual connection around every hidden layer after the first
    (h <- h + sigmoid(h W + b), the sum un-activated; the BatchNorm rescales the sum, which grows
    with depth, for the output: without it the residual net's output saturated and it did not train)."""
    from .graph import Input
    from .layers import Add
    chain = Model([Dense(width, "sigmoid") for _ in range(layers)] + [BatchNorm(), Dense(1, "sigmoid")], loss="mse",
                  seed=seed)
    x = Input(3)
    h = Dense(width, "sigmoid")(x)
    for _ in range(layers - 1):
        h = Add()(h, Dense(width, "sigmoid")(h))
    residual = Model(Dense(1, "sigmoid")(BatchNorm()(h)), loss="mse", seed=seed)
    return {f"{layers}-layer chain": chain, f"{layers}-layer residual": residual}


def _deep(X, t, y, out_dir, seed, epochs, batch_size, lr, cost_scale, target, say, files):
    """Train ``deep_nets`` like the small nets; the first and last dense layers' deltas."""
    results, traces = {}, {}
    say(f"\n{DEEP_LAYERS} sigmoid layers of {DEEP_WIDTH} units: a chain against residual connections")
    for name, model in deep_nets(seed).items():
        h = model.fit(X, t, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, track_grad_norms=True,
                      callbacks=[_EpochProgress(name, epochs, say, max(epochs // 5, 1))])
        dense = [op.index for op in model.layers if type(op.spec).__name__ == "Dense"]
        ends = {f"layer{dense[0]}.delta", f"layer{dense[-1]}.delta"}
        rows = [{k: v for k, v in r.items() if k == "step" or k in ends} for r in h["grad_norms"]]
        d = _rms_deltas(rows, 50, scale=batch_size * cost_scale)
        first, last = d[f"layer{dense[0]}"], d[f"layer{dense[-1]}"]
        acc = float(((model.eval().predict(X)[:, 0] >= 0.5) == y).mean())
        results[name] = {"first_layer_delta": first, "last_layer_delta": last, "final_loss": h["loss"][-1] * cost_scale,
                         "accuracy": acc}
        traces[name] = rows
        files.append(save_history(h, os.path.join(out_dir, f"history_{name.replace(' ', '_')}.json")))
        say(f"  {name:>20}: first-layer delta {first:.3e}, last {last:.3e} (first/last {first / last:.1e}); "
            f"final cost {h['loss'][-1] * cost_scale:.4f}, accuracy {acc:.3f}")
    if plotting.available():
        files.append(plotting.grad_norms(traces, os.path.join(out_dir, "grad_norms_deep.png"),
                                         f"first and last layers' RMS delta, {DEEP_LAYERS} sigmoid layers",
                                         decades=14))   # the chain's first layer sits ~11 decades down
    return results


REGULARIZER_RUNS = {
    "raw inputs": dict(normalize=False, dropout=0.0, batchnorm=False),
    "normalized": dict(normalize=True, dropout=0.0, batchnorm=False),
    "normalized + dropout": dict(normalize=True, dropout=0.2, batchnorm=False),
    "normalized + batchnorm": dict(normalize=True, dropout=0.0, batchnorm=True),
}
COMPARISONS = {
    "input_normalization": ("raw inputs", "normalized"),
    "dropout": ("normalized", "normalized + dropout"),
    "batchnorm": ("normalized", "normalized + batchnorm"),
}


def _mlp(dropout, batchnorm, seed, bias):
    layers = []
    for _ in range(2):
        layers += [Dense(512, bias=False), BatchNorm("tanh")] if batchnorm else [Dense(512, "tanh", bias=bias)]
        if dropout:
            layers.append(Dropout(dropout))
    return Model(layers + [Dense(10, bias=bias)], seed=seed)


def regularizers(out_dir="runs/regularizers", epochs=5, batch_size=128, lr=None, seed=0, data_dir=None,
                 subset=None, optimizer="adam", bias=True, validation_split=0.1, say=print):
    """Article 003: 784-512-512-10 tanh on Fashion-MNIST, Adam (``optimizer="sgd"`` to switch),
    four runs: raw 0-255 inputs, normalized inputs (standardized with the training split's
    per-pixel mean and std), normalized + dropout 0.2, normalized + batchnorm.  ``bias=False``:
    layers without bias, as in the article.  Validation is a seeded ``validation_split`` of the
    training set; the test set is evaluated once, at the end.  One PNG per comparison, a table."""
    (X, y), (Xt, yt) = load_fashion_mnist(data_dir, normalize=False)      # raw 0-255 pixel values
    if subset:
        X, y, Xt, yt = X[:subset], y[:subset], Xt[:max(subset // 6, 100)], yt[:max(subset // 6, 100)]
    n_val = int(np.ceil(X.shape[0] * validation_split))
    order = np.random.default_rng([seed, 3]).permutation(X.shape[0])
    Xv, yv, X, y = X[order[:n_val]], y[order[:n_val]], X[order[n_val:]], y[order[n_val:]]
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    lr = lr if lr is not None else (1e-3 if optimizer != "sgd" else 0.1)
    say(f"regularizers (article 003): 784-512-512-10 tanh{'' if bias else ' (no bias)'}, {optimizer} lr {lr}, "
        f"{epochs} epochs, batch {batch_size}; {X.shape[0]} train / {Xv.shape[0]} validation / {Xt.shape[0]} test")
    hist, summary, files = {}, {}, []
    for name, cfg in REGULARIZER_RUNS.items():
        prep = (lambda a: ((a - mean) / std).astype(np.float32)) if cfg["normalize"] else (lambda a: a)
        model = _mlp(cfg["dropout"], cfg["batchnorm"], seed, bias)
        t0 = time.perf_counter()
        h = model.fit(prep(X), y, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                      validation_data=(prep(Xv), yv), callbacks=[_EpochProgress(name, epochs, say, 1)])
        test = model.evaluate(prep(Xt), yt)
        summary[name] = {"train_loss": h["loss"][-1], "val_loss": h["val_loss"][-1],
                         "train_accuracy": h["accuracy"][-1], "val_accuracy": h["val_accuracy"][-1],
                         "test_loss": test["loss"], "test_accuracy": test["accuracy"],
                         "seconds": time.perf_counter() - t0}
        hist[name] = h
        files.append(save_history(h, os.path.join(out_dir, "history_" + name.replace(" + ", "_").replace(" ", "_")
                                                  + ".json")))
    say(f"\n{'run':<24} {'train loss':>10} {'val loss':>9} {'train acc':>10} {'val acc':>8} {'test acc':>9} "
        f"{'seconds':>8}")
    for name, r in summary.items():
        say(f"{name:<24} {r['train_loss']:10.4f} {r['val_loss']:9.4f} {100 * r['train_accuracy']:9.2f}% "
            f"{100 * r['val_accuracy']:7.2f}% {100 * r['test_accuracy']:8.2f}% {r['seconds']:8.1f}")
    if plotting.available():
        for comp, (a, b) in COMPARISONS.items():
            files.append(plotting.curves({a: hist[a], b: hist[b]}, os.path.join(out_dir, f"{comp}.png"),
                                         f"Fashion-MNIST 784-512-512-10 tanh, {optimizer}: {a} vs {b}"))
    else:
        say(f"(no PNGs: {plotting.PLOT_HINT})")
    say("\nwrote:\n  " + "\n  ".join(files))
    return summary, files
