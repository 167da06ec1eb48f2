"""``fastbp bench``: one training step of the 784-512-512-10 tanh MLP (softmax-CE, float32, SGD),
fastbp vs the numpy reference vs the GEMM floor vs PyTorch (if importable), as ratios of one run.

Each contender is timed in ~50 ms blocks taken round-robin (median of ``repeat`` blocks), in the
same run, and the table reports ratios.  PyTorch runs in its own process (see _torch_in_subprocess).
"""
import statistics
import time

import numpy as np

SIZES = (784, 512, 512, 10)


def _timeit(fn, number):
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t) / number


def _fastbp_step(B, rng):
    import fastbp
    m = fastbp.Model([fastbp.Dense(512, "tanh"), fastbp.Dense(512, "tanh"), fastbp.Dense(10)], input_dim=784)
    X = rng.random((B, 784), dtype=np.float32)
    y = rng.integers(0, 10, B)
    m.fit(X, y, epochs=1, batch_size=B, lr=0.01)   # compile, build workspace
    plan, ws, nt = m.plan, m.plan.train_workspace(B), fastbp.get_num_threads()
    ws.x[...] = X
    ws.y[...] = y
    return lambda: plan.run(ws, "train", 1, 0.01, True, nt, m.optimizer, m.opt_state)


def _reference_step(B, rng):
    from fastbp.reference import MLP
    m = MLP(SIZES, "tanh")
    X = rng.random((B, 784), dtype=np.float32)
    y = rng.integers(0, 10, B)
    return lambda: m.train_step(X, y, np.float32(0.01))


def _gemm_floor_steps(B, rng):
    """The step's 8 GEMMs alone: (a) through numpy's threaded OpenBLAS, (b) through fastbp's BLAS
    path (per-thread blocks in one numba parallel region per layer, as the kernels call them)."""
    from numba import get_num_threads

    from fastbp.kernels.gemm_floor import gemm_only_step
    X = rng.random((B, 784), dtype=np.float32)
    W = [(rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32) for d, f in zip(SIZES[:-1], SIZES[1:])]
    H = [np.zeros((B, f), np.float32) for f in SIZES[1:]]
    G = [(rng.standard_normal((B, f)) * 1e-2).astype(np.float32) for f in SIZES[1:]]
    dW = [np.empty_like(w) for w in W]

    def numpy_gemms():
        np.dot(X, W[0], out=H[0])
        np.dot(H[0], W[1], out=H[1])
        np.dot(H[1], W[2], out=H[2])
        np.dot(H[1].T, G[2], out=dW[2])
        np.dot(G[2], W[2].T, out=G[1])
        np.dot(H[0].T, G[1], out=dW[1])
        np.dot(G[1], W[1].T, out=G[0])
        np.dot(X.T, G[0], out=dW[0])
    nt = get_num_threads()

    def fastbp_gemms():
        gemm_only_step(X, W[0], W[1], W[2], H[0], H[1], H[2], G[0], G[1], G[2], dW[0], dW[1], dW[2], nt)
    return numpy_gemms, fastbp_gemms


_TORCH_SCRIPT = r"""
import json, statistics, sys, time
import torch
B, repeat, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                          torch.nn.Tanh(), torch.nn.Linear(512, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
X, y = torch.rand(B, 784), torch.randint(0, 10, (B,))
lossf = torch.nn.CrossEntropyLoss()
def step():
    opt.zero_grad(set_to_none=True)
    lossf(net(X), y).backward()
    opt.step()
for _ in range(5):
    step()
t = time.perf_counter(); step(); step(); step(); one = (time.perf_counter() - t) / 3
n = max(1, int(0.05 / max(one, 1e-7)))
ts = []
for _ in range(repeat):
    t = time.perf_counter()
    for _ in range(n):
        step()
    ts.append((time.perf_counter() - t) / n)
print(json.dumps({"ms": statistics.median(ts) * 1e3, "threads": torch.get_num_threads()}))
"""


def _torch_in_subprocess(B, repeat, threads):
    """PyTorch's step timed in its own process: in ours its OpenMP pool and numba's would spin
    against each other and we would measure that contention, not PyTorch."""
    import importlib.util
    import json
    import subprocess
    import sys
    if importlib.util.find_spec("torch") is None:
        return None
    r = subprocess.run([sys.executable, "-c", _TORCH_SCRIPT, str(B), str(repeat), str(threads)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["ms"] / 1e3


def _measure(contenders, repeat, target=0.05):
    numbers = {}
    for name, fn in contenders.items():
        fn()
        fn()
        t = _timeit(fn, 3)
        numbers[name] = max(1, int(target / max(t, 1e-7)))
    # Blocks of ~50 ms, round-robin over the contenders, median per contender: a burst of load from
    # elsewhere on the machine then hits every contender alike instead of one whole block.  A short
    # pause and one untimed call before each block let the previous contender's thread pool go
    # idle (interleaving single calls would measure the pools spinning against each other).
    samples = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            time.sleep(0.2)   # OpenBLAS threads spin ~0.1 s after their last call
            fn()
            samples[name].append(_timeit(fn, numbers[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def run(batch_sizes=(32, 128, 512, 2048), repeat=7, peers=True, scaling=True, epoch=False, data_dir=None,
        out=None):
    import fastbp
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    rng = np.random.default_rng(0)
    info = fastbp.threading_info()
    res = {"model": "784-512-512-10 tanh softmax-CE float32 SGD", "threads": fastbp.get_num_threads(),
           "steps": [], "scaling": [], "epoch": None}
    import importlib.util
    has_torch = peers and importlib.util.find_spec("torch") is not None
    say(f"threads {res['threads']}; BLAS {info['blas']} (single-threaded per call); "
        f"torch {'timed in a subprocess, same thread count' if has_torch else 'not installed / skipped'}")
    head = f"{'batch':>6} {'fastbp ms':>10} {'numpy ms':>9} {'floor ms':>9} {'torch ms':>9} " \
           f"{'vs numpy':>9} {'vs floor':>9} {'vs torch':>9}"
    say(head)
    for B in batch_sizes:
        np_g, fb_g = _gemm_floor_steps(B, rng)
        c = {"fastbp": _fastbp_step(B, rng), "numpy": _reference_step(B, rng), "gemm_numpy": np_g,
             "gemm_fastbp": fb_g}
        m = _measure(c, repeat)
        t = _torch_in_subprocess(B, repeat, fastbp.get_num_threads()) if peers else None
        if t is not None:
            m["torch"] = t
        floor = min(m["gemm_numpy"], m["gemm_fastbp"])
        row = {"batch": B, **{k + "_ms": v * 1e3 for k, v in m.items()}, "floor_ms": floor * 1e3,
               "ratio_numpy": m["fastbp"] / m["numpy"], "ratio_floor": m["fastbp"] / floor,
               "ratio_torch": m["fastbp"] / m["torch"] if "torch" in m else None}
        res["steps"].append(row)
        tm = f"{m['torch'] * 1e3:9.3f}" if "torch" in m else f"{'-':>9}"
        tr = f"{row['ratio_torch']:9.2f}" if row["ratio_torch"] else f"{'-':>9}"
        say(f"{B:>6} {m['fastbp'] * 1e3:10.3f} {m['numpy'] * 1e3:9.3f} {floor * 1e3:9.3f} {tm} "
            f"{row['ratio_numpy']:9.2f} {row['ratio_floor']:9.2f} {tr}")
    if scaling:
        say("\nthread scaling, batch 128 (fastbp step)")
        say(f"{'threads':>7} {'ms':>8} {'speedup':>8}")
        n0 = fastbp.get_num_threads()
        import numba
        base = None
        try:
            for n in range(1, numba.config.NUMBA_NUM_THREADS + 1):
                fastbp.set_num_threads(n)
                t = _measure({"s": _fastbp_step(128, rng)}, repeat)["s"]
                base = base or t
                res["scaling"].append({"threads": n, "ms": t * 1e3, "speedup": base / t})
                say(f"{n:>7} {t * 1e3:8.3f} {base / t:8.2f}")
        finally:
            fastbp.set_num_threads(n0)
    if epoch:
        res["epoch"] = _epochs(data_dir, peers, say)
    return res


_TORCH_EPOCH_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from fastbp import data
torch.set_num_threads(int(sys.argv[2]))
(X, y), _ = data.load_fashion_mnist(sys.argv[1] or None)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                          torch.nn.Tanh(), torch.nn.Linear(512, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
lossf = torch.nn.CrossEntropyLoss()
Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
def epoch():
    perm = torch.randperm(Xt.shape[0])
    for s in range(0, Xt.shape[0], 128):
        idx = perm[s:s + 128]
        opt.zero_grad(set_to_none=True)
        lossf(net(Xt[idx]), yt[idx]).backward()
        opt.step()
for s in range(0, 1024, 128):   # warm up outside the timing, like fastbp's compile
    opt.zero_grad(set_to_none=True); lossf(net(Xt[s:s + 128]), yt[s:s + 128]).backward(); opt.step()
t = time.perf_counter(); epoch(); print(json.dumps({"s": time.perf_counter() - t}))
"""


def _epochs(data_dir, peers, say):
    """One Fashion-MNIST epoch at batch 128 (shuffle and batch gathering included), fastbp in this
    process, PyTorch in its own (same thread count)."""
    import importlib.util
    import json
    import subprocess
    import sys

    import fastbp
    from fastbp import Dense, Model, data
    (X, y), _ = data.load_fashion_mnist(data_dir)
    out = {}
    m = Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)])
    m.fit(X[:1024], y[:1024], epochs=1, lr=0.1)   # compile outside the timing
    t = time.perf_counter()
    m.fit(X, y, epochs=1, batch_size=128, lr=0.1, seed=1)
    out["fastbp_s"] = time.perf_counter() - t
    if peers and importlib.util.find_spec("torch") is not None:
        r = subprocess.run([sys.executable, "-c", _TORCH_EPOCH_SCRIPT, data_dir or "", str(fastbp.get_num_threads())],
                           capture_output=True, text=True, timeout=900)
        if r.returncode == 0:
            out["torch_s"] = json.loads(r.stdout.strip().splitlines()[-1])["s"]
            out["ratio_torch"] = out["fastbp_s"] / out["torch_s"]
    say(f"\nFashion-MNIST epoch (batch 128, shuffle + gather included): fastbp {out['fastbp_s']:.2f} s"
        + (f", torch {out['torch_s']:.2f} s (own process), ratio {out['ratio_torch']:.2f}" if "torch_s" in out else ""))
    return out
