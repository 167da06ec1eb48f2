"""Command line: ``fastbp train | bench``."""
import argparse
import json
import sys
import time


def _hidden(s):
    try:
        sizes = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 512,512, got {s!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer widths, got {s!r}")
    return sizes


def _positive(kind):
    def parse(s):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive value, got {s}")
        return v
    return parse


def build_parser():
    p = argparse.ArgumentParser(prog="fastbp", description="Numba-accelerated backprop for MLPs on CPUs")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP and print a row per epoch")
    t.add_argument("--dataset", choices=["mnist", "fashion-mnist", "sphere"], default="fashion-mnist")
    t.add_argument("--hidden", type=_hidden, default=[512, 512], help="hidden widths, e.g. 512,512")
    t.add_argument("--activation", default="tanh", choices=["tanh", "relu", "leaky_relu", "sigmoid"])
    t.add_argument("--epochs", type=_positive(int), default=5)
    t.add_argument("--batch-size", type=_positive(int), default=128)
    t.add_argument("--lr", type=_positive(float), default=0.1)
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    t.add_argument("--batchnorm", action="store_true", help="BatchNorm after each hidden Dense")
    t.add_argument("--dropout", type=float, default=0.0, help="dropout probability after hidden layers")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", default=None)
    t.add_argument("--threads", type=_positive(int), default=None)
    t.add_argument("--save", default=None, help="save the trained model (.npz)")
    t.add_argument("--history", default=None, help="write the history as JSON (or CSV if it ends in .csv)")
    t.add_argument("--no-progress", action="store_true")

    b = sub.add_parser("bench", help="time one training step: fastbp vs numpy reference vs GEMM floor vs peers")
    b.add_argument("--batch-sizes", type=_hidden, default=[32, 128, 512, 2048])
    b.add_argument("--repeat", type=_positive(int), default=7)
    b.add_argument("--json", default=None, help="write the results as JSON")
    b.add_argument("--no-peers", action="store_true", help="skip PyTorch / JAX even if installed")
    b.add_argument("--no-scaling", action="store_true", help="skip the thread-scaling table")
    b.add_argument("--epoch", action="store_true", help="also time one Fashion-MNIST epoch vs PyTorch")
    b.add_argument("--data-dir", default=None)
    g = sub.add_parser("gradcheck", help="backprop vs central finite differences on a random small net (float64)")
    g.add_argument("--hidden", type=_hidden, default=[5, 4])
    g.add_argument("--activation", default="tanh", choices=["tanh", "relu", "leaky_relu", "sigmoid", "identity"])
    g.add_argument("--loss", default="softmax_ce", choices=["softmax_ce", "mse", "sigmoid_bce"])
    g.add_argument("--batchnorm", action="store_true")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--inputs", type=_positive(int), default=6)
    g.add_argument("--outputs", type=_positive(int), default=3)
    g.add_argument("--batch", type=_positive(int), default=8)
    g.add_argument("--threshold", type=_positive(float), default=1e-5, help="fail above this relative error")
    g.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("experiment", help="the classic backprop experiments")
    e.add_argument("name", choices=["vanishing", "regularizers"])
    e.add_argument("--out", default=None, help="output folder (default ./runs/<experiment>/)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--epochs", type=_positive(int), default=5, help="regularizers: epochs per run")
    e.add_argument("--steps", type=_positive(int), default=2000, help="vanishing: at most this many full-batch steps")
    e.add_argument("--lr", type=_positive(float), default=None, help="default 1.0 (vanishing) / 0.1 (regularizers)")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--subset", type=_positive(int), default=None, help="regularizers: use the first N samples")

    w = sub.add_parser("warmup", help="compile every kernel ahead of time (numba caches the machine code on disk)")
    w.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32",
                   help="which precision to compile for (default: %(default)s)")

    pl = sub.add_parser("plot", help="draw loss/accuracy curves of a saved history (JSON or CSV)")
    pl.add_argument("history", nargs="+")
    pl.add_argument("--out", default=None, help="PNG path (default: next to the first history)")
    return p


def cmd_gradcheck(args):
    import numpy as np

    import fastbp
    rng = np.random.default_rng(args.seed)
    layers = []
    for h in args.hidden:
        layers += [fastbp.Dense(h), fastbp.BatchNorm(args.activation)] if args.batchnorm else \
            [fastbp.Dense(h, args.activation)]
        if args.dropout:
            layers.append(fastbp.Dropout(args.dropout))
    out_act = "sigmoid" if args.loss == "mse" else "identity"
    model = fastbp.Model(layers + [fastbp.Dense(args.outputs, out_act)], loss=args.loss, dtype="float64",
                         input_dim=args.inputs, seed=max(args.seed, 0))
    X = rng.standard_normal((args.batch, args.inputs))
    y = rng.integers(0, args.outputs, args.batch) if args.loss == "softmax_ce" else \
        rng.random((args.batch, args.outputs))
    errs = fastbp.gradcheck(model, X, y)
    print(f"{'parameter':<14} {'max rel error':>14}")
    for k, v in errs.items():
        print(f"{k:<14} {v:14.3e}{'  FAIL' if v > args.threshold else ''}")
    worst = max(errs.values())
    ok = worst <= args.threshold
    print(f"{'ok' if ok else 'FAILED'}: max relative error {worst:.3e} (threshold {args.threshold:g})")
    return 0 if ok else 1


def cmd_experiment(args):
    import os

    from fastbp import experiments
    out = args.out or os.path.join("runs", args.name)
    try:
        if args.name == "vanishing":
            experiments.vanishing(out, seed=args.seed, max_steps=args.steps, lr=args.lr or 1.0)
        else:
            experiments.regularizers(out, epochs=args.epochs, lr=args.lr or 0.1, seed=args.seed,
                                     data_dir=args.data_dir, subset=args.subset)
    except FileNotFoundError as e:
        print(f"fastbp: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_plot(args):
    import os

    from fastbp import plotting
    from fastbp.history import load_history
    try:
        runs = {os.path.basename(p): load_history(p) for p in args.history}
    except (OSError, ValueError, KeyError) as e:
        print(f"fastbp: cannot read history: {e}", file=sys.stderr)
        return 2
    if not plotting.available():
        print(f"fastbp: {plotting.PLOT_HINT}", file=sys.stderr)
        return 2
    out = args.out or os.path.splitext(args.history[0])[0] + ".png"
    print(plotting.curves(runs, out, ", ".join(runs)))
    return 0


def _build_model(args, n_in, n_out):
    import fastbp
    layers = []
    for h in args.hidden:
        if args.batchnorm:
            layers += [fastbp.Dense(h), fastbp.BatchNorm(args.activation)]
        else:
            layers.append(fastbp.Dense(h, args.activation))
        if args.dropout:
            layers.append(fastbp.Dropout(args.dropout))
    layers.append(fastbp.Dense(n_out))
    return fastbp.Model(layers, loss="softmax_ce", input_dim=n_in, seed=args.seed)


def cmd_train(args):
    import fastbp
    from fastbp import data
    if args.threads:
        try:
            fastbp.set_num_threads(args.threads)
        except ValueError as e:
            print(f"fastbp: --threads: {e}", file=sys.stderr)
            return 2
    if not 0 <= args.dropout < 1:
        print("fastbp: --dropout must be in [0, 1)", file=sys.stderr)
        return 2
    try:
        (X, y), (Xt, yt) = data.load(args.dataset, args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"fastbp: {e}", file=sys.stderr)
        return 2
    n_out = int(max(y.max(), yt.max())) + 1
    model = _build_model(args, X.shape[1], n_out)
    from tqdm import tqdm
    print(f"{args.dataset}: {X.shape[0]} train / {Xt.shape[0]} test, "
          f"{X.shape[1]}-{'-'.join(map(str, args.hidden))}-{n_out} {args.activation}, "
          f"batch {args.batch_size}, {args.optimizer} lr {args.lr}, {fastbp.get_num_threads()} threads")
    header = f"{'epoch':>5} {'train loss':>10} {'test loss':>10} {'test acc':>9} {'seconds':>8} {'samples/s':>10}"
    rows = []
    bar = None

    def progress(done, total, loss):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="sample", leave=False, disable=args.no_progress,
                       file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done == total or bar.n % (50 * args.batch_size) < args.batch_size:
            bar.set_postfix(loss=f"{loss:.4f}")

    def on_epoch(epoch, h):
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        if not rows:
            print(header)
        row = (f"{h['epoch'][-1]:>5} {h['loss'][-1]:>10.4f} {h['val_loss'][-1]:>10.4f} "
               f"{100 * h['val_accuracy'][-1]:>8.2f}% {h['seconds'][-1]:>8.2f} {h['samples_per_s'][-1]:>10.0f}")
        rows.append(row)
        print(row, flush=True)
        if h["compile_seconds"][-1] > 0.5:
            print(f"      (kernels compiled in {h['compile_seconds'][-1]:.1f} s, not counted in the epoch time)",
                  flush=True)

    h = model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                  seed=args.seed, validation_data=(Xt, yt), progress=progress, on_epoch=on_epoch)
    if args.save:
        model.save(args.save)
        print(f"saved {args.save}")
    if args.history:
        from fastbp.history import save_history
        save_history(h, args.history)
        print(f"wrote {args.history}")
    return 0


def cmd_warmup(args):
    import sys as _sys

    from fastbp.warmup import warmup
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    secs = warmup(dtypes, progress=_sys.stderr.isatty())
    print(f"compiled (or loaded from numba's cache) every kernel for {', '.join(dtypes)} in {secs:.1f} s")
    return 0


def cmd_bench(args):
    from fastbp import bench
    res = bench.run(batch_sizes=args.batch_sizes, repeat=args.repeat, peers=not args.no_peers,
                    scaling=not args.no_scaling, epoch=args.epoch, data_dir=args.data_dir, out=sys.stdout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    rc = {"train": cmd_train, "bench": cmd_bench, "gradcheck": cmd_gradcheck, "experiment": cmd_experiment,
          "plot": cmd_plot, "warmup": cmd_warmup}[args.command](args)
    if args.command == "train":
        print(f"total {time.perf_counter() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
