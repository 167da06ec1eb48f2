"""Command line: ``fastbp train | bench``."""
import argparse
import json
import os
import sys
import time

from .kernels.validate import Bf16Unavailable


def _hidden(s):
    items = [v.strip() for v in s.split(",")]
    if "" in items:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 512,512 with no empty item, got {s!r}")
    try:
        sizes = [int(v) for v in items]
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


def _nonnegative_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {s}")
    return v


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and a pointer to --help (exit 2), not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser():
    from fastbp import __version__
    p = _Parser(prog="fastbp", description="Numba-accelerated backprop for MLPs on CPUs",
                                formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"fastbp {__version__}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of errors")
    sub = p.add_subparsers(dest="command", required=True)
    sp = lambda name, **kw: sub.add_parser(name, formatter_class=_Formatter, **kw)   # noqa: E731

    t = sp("train", help="train an MLP and print a row per epoch")
    t.add_argument("--dataset", choices=["mnist", "fashion-mnist", "sphere"], default="fashion-mnist",
                   help="training data (sphere: the generated two-sphere toy set)")
    t.add_argument("--hidden", type=_hidden, default="512,512", help="hidden widths, e.g. 512,512")
    t.add_argument("--activation", default="tanh", choices=["tanh", "relu", "leaky_relu", "sigmoid"],
                   help="activation of the hidden layers")
    t.add_argument("--epochs", type=_positive(int), default=5, help="passes over the training set")
    t.add_argument("--batch-size", type=_positive(int), default=128, help="rows per training step")
    t.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate (default: the optimizer's own: sgd 0.1, adam and adamw 0.001)")
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"], help="update rule")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: dense GEMM operands in bf16, fp32 master weights (AVX512_BF16/AMX CPUs, fastbp[bf16])")
    t.add_argument("--batchnorm", action="store_true", help="BatchNorm after each hidden Dense")
    t.add_argument("--dropout", type=float, default=0.0, help="dropout probability after hidden layers")
    t.add_argument("--seed", type=int, default=0, help="seed of the initial weights, shuffles and dropout masks")
    t.add_argument("--data-dir", default=None,
                   help="folder with the four IDX files (used or the command fails; default: search, "
                        "see fastbp.data)")
    t.add_argument("--threads", type=_positive(int), default=None, help="kernel threads (default: numba's)")
    t.add_argument("--save", default=None, help="save the trained model (.npz or .safetensors)")
    t.add_argument("--checkpoint", default=None, help="save after every epoch to this file (.npz)")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    t.add_argument("--validation-split", type=float, default=None,
                   help="hold out this fraction of the training set for per-epoch validation (the test set is "
                        "then evaluated once, at the end); without it the test set is the per-epoch validation")
    t.add_argument("--early-stopping", type=_positive(int), default=None, metavar="N",
                   help="stop when the validation loss has not improved for N epochs; keep the best epoch (without "
                        "--validation-split, 10%% of the training set is held out to choose it: never the test set)")
    t.add_argument("--history", default=None, help="write the history as JSON (or CSV if it ends in .csv)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is also off when stderr is not a terminal)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI: run as `mpiexec -n N fastbp train --distributed ...` "
                        "(--batch-size is the global batch; threads per rank default to cores / ranks per machine)")
    t.add_argument("--sync-every", type=_positive(int), default=1, metavar="K",
                   help="with --distributed: local SGD, averaging the parameters every K steps (1: synchronous "
                        "gradient all-reduce every step)")

    b = sp("bench", help="time one training step: fastbp vs numpy reference vs GEMM floor vs PyTorch")
    b.add_argument("--batch-sizes", type=_hidden, default="32,128,512,2048", help="comma-separated")
    b.add_argument("--repeat", type=_positive(int), default=7, help="timed repetitions per figure")
    b.add_argument("--json", default=None, help="write the results as JSON")
    b.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX even if installed")
    b.add_argument("--compare", default=None, metavar="OLD_JSON",
                   help="compare with an earlier --json result: print new/old ratios, exit 1 on a regression")
    b.add_argument("--threshold", type=_positive(float), default=0.10,
                   help="--compare: a figure slower by more than this fraction is a regression")
    b.add_argument("--no-scaling", action="store_true", help="skip the thread-scaling table")
    b.add_argument("--predict-rows", type=_nonnegative_int, default=10_000,
                   help="time Model.predict on this many rows vs PyTorch no_grad and JAX jit (0: skip)")
    b.add_argument("--epoch", action="store_true",
                   help="also time one Fashion-MNIST epoch vs PyTorch and JAX (own processes)")
    b.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    b.add_argument("--profile", action="store_true",
                   help="also break a step down: GEMM, elementwise, parallel-region overhead, Python")
    b.add_argument("--shared", action="store_true",
                   help="also run two copies of the epoch benchmark at once and report each one's slowdown vs solo")
    b.add_argument("--distributed", action="store_true",
                   help="under mpiexec: data-parallel step time, all-reduce time and scaling efficiency")
    b.add_argument("--bf16", action="store_true",
                   help="also time precision='bf16' steps against fp32 (CPUs with AVX512_BF16/AMX; oneDNN or MKL)")
    g = sp("gradcheck", help="backprop vs central finite differences on a random small net (float64)")
    g.add_argument("--hidden", type=_hidden, default="5,4", help="hidden widths")
    g.add_argument("--activation", default="tanh", choices=["tanh", "relu", "leaky_relu", "sigmoid", "identity"],
                   help="hidden activation")
    g.add_argument("--loss", default="softmax_ce", choices=["softmax_ce", "mse", "sigmoid_bce"], help="loss")
    g.add_argument("--batchnorm", action="store_true", help="BatchNorm after each hidden Dense")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout probability after hidden layers")
    g.add_argument("--inputs", type=_positive(int), default=6, help="input features")
    g.add_argument("--outputs", type=_positive(int), default=3, help="outputs (classes)")
    g.add_argument("--batch", type=_positive(int), default=8, help="rows in the checked batch")
    g.add_argument("--threshold", type=_positive(float), default=1e-5, help="fail above this relative error")
    g.add_argument("--seed", type=int, default=0, help="seed of the net and the data")

    e = sp("experiment", help="the seed articles' experiments: vanishing (000) and regularizers (003)")
    e.add_argument("name", choices=["vanishing", "regularizers"], help="which experiment")
    e.add_argument("--out", default=None, help="output folder (default ./runs/<experiment>/)")
    e.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    e.add_argument("--seed", type=int, default=0, help="seed of the data, weights and shuffles")
    e.add_argument("--epochs", type=_positive(int), default=None,
                   help="default: 300 (vanishing, article), 2000 (vanishing, full-batch), 5 (regularizers)")
    e.add_argument("--lr", type=_positive(float), default=None,
                   help="default: eta 3.0 (vanishing, article), 1.0 (full-batch), adam 0.001 / sgd 0.1 (regularizers)")
    e.add_argument("--variant", choices=["article", "full-batch"], default="article",
                   help="vanishing: article 000's data, cost and mini-batch SGD, or the earlier full-batch set-up")
    e.add_argument("--relu", action="store_true", help="vanishing: also train the same net with ReLU hidden layers")
    e.add_argument("--deep", action="store_true",
                   help="vanishing: also a 20-layer sigmoid chain against the same layers with residual connections")
    e.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="regularizers: update rule")
    e.add_argument("--no-bias", action="store_true", help="regularizers: layers without bias (as in article 003)")
    e.add_argument("--validation-split", type=float, default=0.1,
                   help="regularizers: fraction of the training set held out for validation")
    e.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    e.add_argument("--subset", type=_positive(int), default=None, help="regularizers: use the first N samples")

    w = sp("warmup", help="compile every kernel ahead of time (numba caches the machine code on disk)")
    w.add_argument("--dtype", choices=["float32", "float64", "both"], default="float32",
                   help="which precision to compile for")

    pl = sp("plot", help="draw loss/accuracy curves of a saved history (JSON or CSV)")
    pl.add_argument("history", nargs="+", help="history files written by train --history or experiments")
    pl.add_argument("--out", default=None, help="PNG path (default: next to the first history)")
    return p


class UsageError(Exception):
    """An expected problem with the command's input: printed as one line, exit code 2."""


#: the file kinds each output option can write (by suffix)
SUFFIXES = {"--save": (".npz", ".safetensors"), "--checkpoint": (".npz", ".safetensors"),
            "--history": (".json", ".csv"), "--json": (".json",)}


def _check_output(path, flag):
    """Fail before any work if ``path`` cannot be written or has a suffix ``flag`` cannot write."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder, expected a file path")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {folder} is not writable")
    kinds = SUFFIXES.get(flag)
    if kinds and not path.lower().endswith(kinds):
        raise UsageError(f"{flag} {path}: expected a file ending in {' or '.join(kinds)}")


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
    if os.path.isdir(out) and os.listdir(out) and not args.force:
        raise UsageError(f"--out {out}: folder is not empty (earlier results?); pass --force to write into it "
                         "or choose another --out")
    if args.name == "vanishing":
        experiments.vanishing(out, seed=args.seed, variant=args.variant, relu=args.relu, epochs=args.epochs,
                              lr=args.lr, deep=args.deep)
    else:
        experiments.regularizers(out, epochs=args.epochs or 5, lr=args.lr, seed=args.seed, data_dir=args.data_dir,
                                 subset=args.subset, optimizer=args.optimizer, bias=not args.no_bias,
                                 validation_split=args.validation_split)
    return 0


def cmd_plot(args):
    import os

    from fastbp import plotting
    from fastbp.history import load_history
    runs = {os.path.basename(p): load_history(p) for p in args.history}
    if not plotting.available():
        print(f"fastbp: {plotting.PLOT_HINT}", file=sys.stderr)
        return 2
    out = args.out or os.path.splitext(args.history[0])[0] + ".png"
    print(plotting.curves(runs, out, ", ".join(runs)))
    return 0


def _layers(args, n_out):
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
    return layers


def _distributed(args):
    """The communicator for --distributed (None without); refuses an MPI launch without it."""
    from fastbp import distributed as D
    n = D.launched_ranks()
    if not args.distributed:
        if n is not None and n > 1:
            raise UsageError(f"launched by an MPI launcher with {n} ranks but without --distributed: each rank would "
                             f"train its own copy of the model; add --distributed")
        return None
    try:
        comm = D.MPIComm()
    except ImportError as e:
        raise UsageError(f"--distributed: {e}") from None
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")     # only rank 0 prints
    return comm


#: the validation fraction `train --early-stopping` holds out when no --validation-split is given
EARLY_STOPPING_SPLIT = 0.1


def _choose_blas():
    """The once-per-machine BLAS timing, announced and done before training (never inside an epoch)."""
    from fastbp.kernels import bind_blas, blas_choice_pending
    if not blas_choice_pending():
        return
    print("fastbp: timing the installed GEMM libraries on a training step's shapes to pick the fastest "
          "(once per machine, remembered; FASTBP_BLAS=<name> skips it)...", flush=True)
    t0 = time.perf_counter()
    backend = bind_blas()
    print(f"fastbp: picked {backend} in {time.perf_counter() - t0:.1f} s", flush=True)


def cmd_train(args):
    comm = _distributed(args)
    import fastbp
    from fastbp import data, optim
    from fastbp.kernels import count_nonfinite
    from fastbp.plan import estimate_bytes
    from fastbp.workspace import available_bytes
    if args.threads:
        try:
            fastbp.set_num_threads(args.threads)
        except ValueError as e:
            raise UsageError(f"--threads: {e}") from None
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout: expected a probability in [0, 1), got {args.dropout}")
    for path, flag in ((args.save, "--save"), (args.checkpoint, "--checkpoint"), (args.history, "--history")):
        _check_output(path, flag)
    rank0 = comm is None or comm.rank == 0
    if args.early_stopping and not args.validation_split:
        # model selection must never look at the test set: hold out part of the training set instead
        args.validation_split = EARLY_STOPPING_SPLIT
        print(f"--early-stopping without --validation-split: holding out {EARLY_STOPPING_SPLIT:.0%} of the training "
              f"set to choose the epoch; the test set is evaluated once, at the end")
    if args.resume and not args.checkpoint:
        raise UsageError("--resume: needs --checkpoint PATH (the file to continue from)")
    if args.checkpoint and os.path.exists(args.checkpoint) and not args.resume:
        raise UsageError(f"--checkpoint {args.checkpoint}: exists; pass --resume to continue from it, or remove it")
    folder = "generated" if args.dataset == "sphere" else data.locate(args.dataset, args.data_dir)
    (X, y), (Xt, yt) = data.load(args.dataset, args.data_dir)
    n_out = int(max(y.max(), yt.max())) + 1
    layers = _layers(args, n_out)
    need, avail = estimate_bytes(layers, X.shape[1], "float32", args.batch_size), available_bytes()
    if avail is not None and need > avail:
        raise UsageError(f"--hidden {','.join(map(str, args.hidden))}: training needs about {need / 2**30:.1f} GiB, "
                         f"only {avail / 2**30:.1f} GiB of memory is available")
    model = fastbp.Model(layers, loss="softmax_ce", input_dim=X.shape[1], seed=args.seed, precision=args.precision)
    opt = optim.make(args.optimizer, args.lr)
    from tqdm import tqdm
    if comm is not None:
        where = f", {comm.size} MPI ranks x {min(fastbp.get_num_threads(), comm.threads)} threads"
    else:
        where = f", {fastbp.get_num_threads()} threads"
    if args.precision != "fp32":
        where += f", precision {args.precision}"
    print(f"{args.dataset} ({folder}): {X.shape[0]} train / {Xt.shape[0]} test, "
          f"{X.shape[1]}-{'-'.join(map(str, args.hidden))}-{n_out} {args.activation}, "
          f"batch {args.batch_size}, {args.optimizer} lr {opt.lr:g}{where}")
    vname = "val" if args.validation_split else "test"
    header = (f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {vname + ' loss':>10} {vname + ' acc':>9} "
              f"{'seconds':>8} {'samples/s':>10}")
    rows = []
    bar = None
    show_bar = not args.no_progress and sys.stderr.isatty() and rank0

    def progress(done, total, loss):
        nonlocal bar
        if not show_bar:
            return
        if bar is None:
            bar = tqdm(total=total, unit="sample", leave=False, file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done == total or bar.n % (50 * args.batch_size) < args.batch_size:
            bar.set_postfix(loss=f"{loss:.4f}")

    def close_bar():
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None

    def on_epoch(epoch, h):
        close_bar()
        if not rows:
            print(header)
        row = (f"{h['epoch'][-1]:>5} {h['loss'][-1]:>10.4f} {100 * h['accuracy'][-1]:>8.2f}% "
               f"{h['val_loss'][-1]:>10.4f} {100 * h['val_accuracy'][-1]:>8.2f}% {h['seconds'][-1]:>8.2f} "
               f"{h['samples_per_s'][-1]:>10.0f}")
        rows.append(row)
        print(row, flush=True)
        if h["compile_seconds"][-1] > 0.5:
            print(f"      (kernels compiled in {h['compile_seconds'][-1]:.1f} s, not counted in the epoch time)",
                  flush=True)

    from fastbp.callbacks import EarlyStopping
    _choose_blas()
    val = {"validation_split": args.validation_split} if args.validation_split else {"validation_data": (Xt, yt)}
    stopper = [EarlyStopping("val_loss", patience=args.early_stopping)] if args.early_stopping else []
    try:
        h = model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt, seed=args.seed,
                      progress=progress, on_epoch=on_epoch, checkpoint=args.checkpoint, callbacks=stopper,
                      distributed=comm, sync_every=args.sync_every if comm is not None else 1, **val)
    except KeyboardInterrupt:
        close_bar()
        where = f"interrupted in epoch {model.epochs_done + 1} (step {model.step_count})"
        target = args.checkpoint or args.save
        if target and rank0 and model.built and not count_nonfinite(model.params):
            model.save(target)
            print(f"fastbp: {where}; saved the parameters reached so far to {target}", file=sys.stderr)
        else:
            print(f"fastbp: {where}; nothing saved", file=sys.stderr)
        return 130
    if stopper and stopper[0].stopped_epoch:
        print(f"early stopping after epoch {stopper[0].stopped_epoch}: kept epoch {stopper[0].best_epoch} "
              f"(best {vname} loss)")
    if args.validation_split:
        ev = model.evaluate(Xt, yt)
        chosen = "epoch chosen on the validation split; " if stopper else ""
        print(f"test loss {ev['loss']:.4f}, test accuracy {100 * ev['accuracy']:.2f}% (final model; {chosen}"
              f"the test set was not used in training)")
    if args.save and rank0:
        model.save(args.save)
        print(f"saved {args.save}")
    if args.history and rank0:
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
    old = None
    if args.compare:
        try:
            with open(args.compare) as f:
                old = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"--compare {args.compare}: cannot read ({e})") from None
    _check_output(args.json, "--json")
    if args.distributed:
        comm = _distributed(args)
        res = bench.run_distributed(comm, batch_sizes=[b for b in args.batch_sizes if b >= 2 * comm.size],
                                    repeat=args.repeat, out=sys.stdout)
        if args.json and comm.rank == 0:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
            print(f"wrote {args.json}")
        return 0
    _distributed(args)     # refuses an MPI launch without --distributed
    res = bench.run(batch_sizes=args.batch_sizes, repeat=args.repeat, peers=not args.no_peers,
                    scaling=not args.no_scaling, epoch=args.epoch, data_dir=args.data_dir, out=sys.stdout)
    if args.predict_rows:
        res["predict"] = bench.predict(peers=not args.no_peers, repeat=args.repeat, out=sys.stdout,
                                       precisions=("fp32", "bf16") if args.bf16 else ("fp32",), rows=args.predict_rows)
    if args.profile:
        res["profile"] = bench.profile([b for b in args.batch_sizes if b <= 2048], args.repeat, out=sys.stdout)
    if args.shared:
        res["shared"] = bench.shared(args.data_dir, out=sys.stdout)
    if args.bf16:
        res["bf16"] = bench.bf16(args.batch_sizes, args.repeat, out=sys.stdout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    if old is not None:
        _, regressed = bench.compare(res, old, args.threshold, out=sys.stdout)
        return 1 if regressed else 0
    return 0


EXPECTED = (UsageError, ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError,
            FloatingPointError, MemoryError, Bf16Unavailable)


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    run = {"train": cmd_train, "bench": cmd_bench, "gradcheck": cmd_gradcheck, "experiment": cmd_experiment,
           "plot": cmd_plot, "warmup": cmd_warmup}[args.command]
    try:
        rc = run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("fastbp: interrupted", file=sys.stderr)
        return 130
    except EXPECTED as e:
        if args.debug:
            raise
        msg = str(e).strip().splitlines() or [type(e).__name__]
        print(f"fastbp: error: {msg[0]}", file=sys.stderr)
        for line in msg[1:]:     # multi-line messages (where a dataset was looked for) stay readable
            print(f"  {line}", file=sys.stderr)
        return 2
    if args.command == "train" and rc == 0:
        print(f"total {time.perf_counter() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
