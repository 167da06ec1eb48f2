"""How should one dense layer's GEMMs be cut across threads?  Times every 2-D grid.

For each layer shape of an MLP (default 784-512-512-10) and batch size, at each thread count:

* ``lib_fwd`` / ``lib_bwd``: the library's own launches (``dense_forward_launch``,
  ``dense_backward_launch`` with fused SGD, as ``fit`` with SGD runs them);
* ``fwd RxC``: the forward cut into R row blocks of x times C column blocks of W (one region);
* ``dx RxC``: the backward's ``dx = dz W^T`` (times the previous tanh derivative) cut into R row
  blocks times C column blocks of dx (one region);
* ``dw RxC``: the fused SGD update ``W -= lr x^T dz`` (and b) cut into R row blocks of W times
  C column blocks (one region);
* ``gemm1``: the same three GEMMs on one thread (the cost model's input).

Usage: python benches/cuts.py [--threads 8,16] [--batches 128,512,2048] [--sizes 784,512,512,10]
                              [--json out.json] [--budget 0.06]
Each figure is the median of timed repetitions filling about ``--budget`` seconds, in ms.
"""
import argparse
import json
import sys
import time

import numpy as np
from numba import prange

from fastbp import kernels
from fastbp._threads import set_num_threads
from fastbp.kernels import dense_backward_launch, dense_forward_launch, forward_rows_from, jit
from fastbp.kernels._blas import bind, gemm
from fastbp.kernels._parallel import split
from fastbp.kernels.activation import TANH, act_grad_block, bias_act_block


@jit(parallel=True)
def forward_grid(out, x, W, b, act, R, C):
    """out = act(x @ W + b) in an R x C grid of (row block, column block) chunks."""
    N, F = out.shape
    for c in prange(R * C):
        r0, r1 = split(N, R, c // C)
        f0, f1 = split(F, C, c % C)
        gemm(out[r0:r1, f0:f1], x[r0:r1], W[:, f0:f1], False, False, 1.0, 0.0)
        bias_act_block(out, b, act, 0.0, r0, r1, f0, f1)


@jit(parallel=True)
def dx_grid(dx, dz, W, prev_y, R, C):
    """dx = (dz @ W^T) * tanh'(prev_y) in an R x C grid of dx blocks."""
    N, D = dx.shape
    for c in prange(R * C):
        r0, r1 = split(N, R, c // C)
        d0, d1 = split(D, C, c % C)
        gemm(dx[r0:r1, d0:d1], dz[r0:r1], W[d0:d1], False, True, 1.0, 0.0)
        act_grad_block(dx, prev_y, TANH, 0.0, r0, r1, d0, d1)


@jit(parallel=True)
def dw_grid(W, b, x, dz, lr, R, C):
    """W -= lr x^T dz; b -= lr sum(dz) in an R x C grid of W blocks (bias by the first block row)."""
    D, F = W.shape
    for c in prange(R * C):
        i, j = c // C, c % C
        d0, d1 = split(D, R, i)
        f0, f1 = split(F, C, j)
        gemm(W[d0:d1, f0:f1], x[:, d0:d1], dz[:, f0:f1], True, False, -lr, 1.0)
        if i == 0:
            s = b.dtype.type(-lr)
            for n in range(dz.shape[0]):
                for f in range(f0, f1):
                    b[f] += s * dz[n, f]


def timed(fn, budget):
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(3, min(200, int(budget / one)))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def grids(P):
    return [(r, P // r) for r in range(1, P + 1) if P % r == 0]


def layer_rows(N, D, F, P, budget, rng):
    x = rng.standard_normal((N, D)).astype(np.float32)
    W = (rng.standard_normal((D, F)) * 0.05).astype(np.float32)
    b = np.zeros(F, np.float32)
    out = np.empty((N, F), np.float32)
    dz = (rng.standard_normal((N, F)) * 1e-3).astype(np.float32)
    dx = np.empty((N, D), np.float32)
    prev_y = np.tanh(x)
    dW = np.empty_like(W)
    lr = 1e-9
    r = {}
    rows_from = forward_rows_from()
    r["lib_fwd"] = timed(lambda: dense_forward_launch(out, x, W, b, TANH, 0.0, P, rows_from), budget)
    r["lib_bwd"] = timed(lambda: dense_backward_launch(dx, dW, b, dz, x, W, b, prev_y, TANH, 0.0, True, True,
                                                      lr, 0.0, P), budget)
    for R, C in grids(P):
        r[f"fwd {R}x{C}"] = timed(lambda: forward_grid(out, x, W, b, TANH, R, C), budget)
        r[f"dx {R}x{C}"] = timed(lambda: dx_grid(dx, dz, W, prev_y, R, C), budget)
        r[f"dw {R}x{C}"] = timed(lambda: dw_grid(W, b, x, dz, lr, R, C), budget)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="8,16")
    ap.add_argument("--batches", default="128,512,2048")
    ap.add_argument("--sizes", default="784,512,512,10")
    ap.add_argument("--budget", type=float, default=0.06)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    rng = np.random.default_rng(0)
    bind()
    res = {"blas": kernels.blas_info(), "rows": []}
    print("blas:", res["blas"]["backend"], flush=True)
    for P in [int(t) for t in a.threads.split(",")]:
        set_num_threads(P)
        for N in [int(b) for b in a.batches.split(",")]:
            for D, F in zip(sizes[:-1], sizes[1:]):
                r = layer_rows(N, D, F, P, a.budget, rng)
                if P == 1:
                    r = {"gemm1_fwd": r["fwd 1x1"], "gemm1_dx": r["dx 1x1"], "gemm1_dw": r["dw 1x1"],
                         "lib_fwd": r["lib_fwd"], "lib_bwd": r["lib_bwd"]}
                row = {"P": P, "N": N, "D": D, "F": F, **{k: round(v, 4) for k, v in r.items()}}
                res["rows"].append(row)
                best = {k: min((v, g) for g, v in r.items() if g.startswith(k + " ")) for k in ("fwd", "dx", "dw")
                        if any(g.startswith(k + " ") for g in r)}
                print(json.dumps({"P": P, "N": N, "D": D, "F": F, "lib_fwd": round(r["lib_fwd"], 3),
                                  "lib_bwd": round(r["lib_bwd"], 3),
                                  **{k: [round(v, 3), g] for k, (v, g) in best.items()}}), flush=True)
                if a.json:
                    with open(a.json, "w") as f:
                        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
