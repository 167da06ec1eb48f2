"""The classic backprop experiments, on the public API only (Model, fit, evaluate, data, gradcheck)."""
import os
import time

import numpy as np

from . import plotting
from .data import load_fashion_mnist, make_spheres
from .history import save_history
from .layers import BatchNorm, Dense, Dropout
from .model import Model


def _rms_deltas(rows, n):
    """Mean over the first ``n`` recorded steps of each layer's RMS delta, ordered input -> output."""
    names = sorted((k for k in rows[0] if k.endswith(".delta")), key=lambda k: int(k[5:k.index(".")]))
    return {k.split(".")[0]: float(np.mean([r[k] for r in rows[:n]])) for k in names}


def vanishing(out_dir="runs/vanishing", seed=0, max_steps=2000, lr=1.0, target=0.01, n=2000, say=print):
    """Sigmoid 3-3-2-1 (MSE) on the two-sphere data vs the same net with ReLU hidden layers.

    Full-batch gradient descent (one step per epoch, so step counts are exact), SGD ``lr``.
    Records per-layer RMS deltas every step.  Reports the deltas averaged over the first 50 steps
    (input layer first) and the number of steps until the full-batch training loss first reaches
    ``target`` (None if not within ``max_steps``).  Writes history JSON files and a PNG.
    """
    epochs, batch_size = max_steps, n
    X, y = make_spheres(n, seed=seed)
    t = y.astype(np.float32)[:, None]
    results, traces, files = {}, {}, []
    for hidden in ("sigmoid", "relu"):
        model = Model([Dense(3, hidden), Dense(2, hidden), Dense(1, "sigmoid")], loss="mse", seed=seed)
        reached = {}

        def on_epoch(epoch, h, model=model, reached=reached):
            if "step" not in reached and h["loss"][-1] <= target:
                reached["step"] = model.step_count

        t0 = time.perf_counter()
        h = model.fit(X, t, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, track_grad_norms=True,
                      on_epoch=on_epoch)
        secs = time.perf_counter() - t0
        acc = float(((model.predict(X)[:, 0] >= 0.5) == y).mean())
        deltas = _rms_deltas(h["grad_norms"], 50)
        results[hidden] = {"deltas": deltas, "steps_to_target": reached.get("step"), "final_loss": h["loss"][-1],
                           "accuracy": acc, "seconds": secs}
        traces[f"{hidden} hidden layers"] = h["grad_norms"]
        files.append(save_history(h, os.path.join(out_dir, f"history_{hidden}.json")))
        say(f"\n{hidden} hidden layers: RMS delta per layer (first 50 steps, input layer first)")
        for name, v in deltas.items():
            say(f"  {name:8s} {v:.3e}")
    say(f"\n{'hidden':>8} {'delta in':>10} {'delta out':>10} {'out/in':>8} {'steps to loss<=' + str(target):>20} "
        f"{'final loss':>10} {'accuracy':>9}")
    for hidden, r in results.items():
        d = list(r["deltas"].values())
        steps = r["steps_to_target"] if r["steps_to_target"] is not None else f"> {max_steps}"
        say(f"{hidden:>8} {d[0]:10.3e} {d[-1]:10.3e} {d[-1] / d[0]:8.1f} {steps!s:>20} {r['final_loss']:10.4f} "
            f"{r['accuracy']:9.3f}")
    if plotting.available():
        files.append(plotting.grad_norms(traces, os.path.join(out_dir, "grad_norms.png"),
                                         "per-layer RMS delta during training (3-3-2-1, two spheres, MSE)"))
    else:
        say(f"(no PNG: {plotting.PLOT_HINT})")
    say("\nwrote:\n  " + "\n  ".join(files))
    return results, files


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


def _mlp(dropout, batchnorm, seed):
    layers = []
    for _ in range(2):
        layers += [Dense(512), BatchNorm("tanh")] if batchnorm else [Dense(512, "tanh")]
        if dropout:
            layers.append(Dropout(dropout))
    return Model(layers + [Dense(10)], seed=seed)


def regularizers(out_dir="runs/regularizers", epochs=5, batch_size=128, lr=0.1, seed=0, data_dir=None,
                 subset=None, say=print):
    """784-512-512-10 tanh on Fashion-MNIST with and without input normalization, dropout and
    batchnorm (same seed, epochs, SGD lr).  One PNG per comparison and a summary table."""
    (X, y), (Xt, yt) = load_fashion_mnist(data_dir)
    if subset:
        X, y, Xt, yt = X[:subset], y[:subset], Xt[:max(subset // 6, 100)], yt[:max(subset // 6, 100)]
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    hist, summary, files = {}, {}, []
    for name, cfg in REGULARIZER_RUNS.items():
        Xa, Xb = ((X - mean) / std, (Xt - mean) / std) if cfg["normalize"] else (X, Xt)
        model = _mlp(cfg["dropout"], cfg["batchnorm"], seed)
        t0 = time.perf_counter()
        h = model.fit(Xa.astype(np.float32), y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      validation_data=(Xb.astype(np.float32), yt))
        summary[name] = {"train_loss": h["loss"][-1], "test_loss": h["val_loss"][-1],
                         "train_accuracy": h["accuracy"][-1], "test_accuracy": h["val_accuracy"][-1],
                         "seconds": time.perf_counter() - t0}
        hist[name] = h
        files.append(save_history(h, os.path.join(out_dir, "history_" + name.replace(" + ", "_").replace(" ", "_")
                                                  + ".json")))
    say(f"\n{'run':<24} {'train loss':>10} {'test loss':>10} {'train acc':>10} {'test acc':>9} {'seconds':>8}")
    for name, r in summary.items():
        say(f"{name:<24} {r['train_loss']:10.4f} {r['test_loss']:10.4f} {100 * r['train_accuracy']:9.2f}% "
            f"{100 * r['test_accuracy']:8.2f}% {r['seconds']:8.1f}")
    if plotting.available():
        for comp, (a, b) in COMPARISONS.items():
            files.append(plotting.curves({a: hist[a], b: hist[b]}, os.path.join(out_dir, f"{comp}.png"),
                                         f"Fashion-MNIST 784-512-512-10 tanh: {a} vs {b}"))
    else:
        say(f"(no PNGs: {plotting.PLOT_HINT})")
    say("\nwrote:\n  " + "\n  ".join(files))
    return summary, files
