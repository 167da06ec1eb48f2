"""PNG figures (matplotlib is optional: ``pip install 'fastbp[plot]'``)."""
import os

PLOT_HINT = "plots need matplotlib: pip install 'fastbp[plot]' (or pip install matplotlib)"


def available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def _integer_epochs(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def curves(runs, path, title, val_label="validation"):
    """Train/validation loss (and accuracy, when the runs have it) per epoch for several runs:
    ``runs`` = {label: history}.  Integer epoch ticks; no empty accuracy panel for regressions."""
    plt = _pyplot()
    has_acc = any(h.get("accuracy") and h["accuracy"][0] is not None for h in runs.values())
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4), squeeze=False)
    ax_l = axes[0][0]
    ax_a = axes[0][1] if has_acc else None
    for i, (label, h) in enumerate(runs.items()):
        color = f"C{i}"
        ax_l.plot(h["epoch"], h["loss"], color=color, marker=".", label=f"{label} train")
        if h.get("val_loss"):
            ax_l.plot(h["epoch"], h["val_loss"], color=color, linestyle="--", label=f"{label} {val_label}")
        if ax_a is not None and h.get("accuracy") and h["accuracy"][0] is not None:
            ax_a.plot(h["epoch"], h["accuracy"], color=color, marker=".", label=f"{label} train")
        if ax_a is not None and h.get("val_accuracy") and h["val_accuracy"][0] is not None:
            ax_a.plot(h["epoch"], h["val_accuracy"], color=color, linestyle="--", label=f"{label} {val_label}")
    ax_l.set(xlabel="epoch", ylabel="loss", title="loss")
    if ax_a is not None:
        ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_l, ax_a):
        if ax is not None:
            _integer_epochs(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


#: a log axis spans at most this many decades below the largest value (zeros and near-zeros from
#: dead ReLU units would otherwise stretch it to 1e-30 and flatten everything else)
LOG_DECADES = 6


def moving_rms(values, window):
    """sqrt of the moving mean of squares over ``window`` values (shorter at the start)."""
    import numpy as np
    v = np.asarray(values, dtype=np.float64) ** 2
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(1, v.size + 1)
    lo = np.maximum(i - window, 0)
    return np.sqrt((c[i] - c[lo]) / (i - lo))


def log_limits(series, decades=LOG_DECADES):
    """(low, high) for a log axis showing every positive value of ``series`` (lists of floats) down
    to at most ``decades`` below the largest."""
    import numpy as np
    pos = np.concatenate([np.asarray(s, np.float64) for s in series])
    pos = pos[np.isfinite(pos) & (pos > 0)]
    if pos.size == 0:
        return 1e-3, 1.0
    hi = pos.max() * 2
    return max(pos.min() / 2, hi / 10 ** decades), hi


def grad_norms(runs, path, title, key="delta", decades=LOG_DECADES):
    """Per-layer RMS gradients over training steps, one panel per run, on one shared log scale so
    the panels compare: each layer's moving RMS over ~1% of the steps (per-step values swing by
    orders of magnitude), a line style per layer, the axis bounded to ``LOG_DECADES``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False, sharey=True)
    styles = ["-", "--", "-.", ":"]
    drawn, window = [], 1
    for ax, (label, rows) in zip(axes[0], runs.items()):
        steps = [r["step"] for r in rows]
        window = max(1, len(rows) // 100)
        names = [k for k in rows[0] if k.endswith("." + key)]
        for i, name in enumerate(names):
            y = moving_rms([r[name] for r in rows], window)
            drawn.append(y)
            layer = name.split(".")[0].replace("layer", "layer ")
            ax.plot(steps, y, color=f"C{i}", linestyle=styles[i % len(styles)], linewidth=1.6, label=layer)
        ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=f"RMS {key} (moving, {window} steps)", title=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title="layer (0 = input side)", title_fontsize=8)
    axes[0][0].set_ylim(*log_limits(drawn, decades))
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
