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


def grad_norms(runs, path, title, key="delta"):
    """Per-layer gradient norms over training steps, one panel per run (log scale, one shared
    y-scale so the panels compare)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False, sharey=True)
    for ax, (label, rows) in zip(axes[0], runs.items()):
        steps = [r["step"] for r in rows]
        names = [k for k in rows[0] if k.endswith("." + key)]
        for i, name in enumerate(names):
            ax.plot(steps, [max(r[name], 1e-30) for r in rows], color=f"C{i}", label=name)
        ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=f"RMS {key}", title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
