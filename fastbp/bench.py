"""``fastbp bench``: one training step of the 784-512-512-10 tanh MLP (softmax-CE, float32, SGD),
fastbp vs the numpy reference vs the GEMM floor vs PyTorch eager and JAX jit (when installed), as
ratios of one run, beside the machine's sgemm peak measured in the same run.

Each contender is timed in ~50 ms blocks taken round-robin (``repeat`` blocks; min/median/max
reported, median used for ratios).  Peers run in their own processes, their blocks interleaved
with fastbp's (see _Peer).
The JSON carries the machine, CPU flags, versions, threads, BLAS and commit (``metadata``);
``compare`` reads an earlier JSON and flags regressions.
"""
import statistics
import time

import numpy as np

SIZES = (784, 512, 512, 10)   # as kernels/gemm_floor.SIZES (kernels never import from fastbp)


def _timeit(fn, number):
    t = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t) / number


def _bench_model(precision):
    """The benchmark's 784-512-512-10 tanh MLP; a Bf16SlowWarning is not raised here: the bench
    reports bf16's speed itself."""
    import warnings

    import fastbp
    from fastbp.kernels import Bf16SlowWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Bf16SlowWarning)
        return fastbp.Model([fastbp.Dense(512, "tanh"), fastbp.Dense(512, "tanh"), fastbp.Dense(10)], input_dim=784,
                            precision=precision)


def _fastbp_step(B, rng, precision="fp32"):
    import fastbp
    m = _bench_model(precision)
    X = rng.random((B, 784), dtype=np.float32)
    y = rng.integers(0, 10, B)
    m.fit(X, y, epochs=1, batch_size=B, lr=0.01)   # compile, build workspace
    plan, ws, nt = m.plan, m.plan.train_workspace(B), fastbp.get_num_threads()
    ws.x[...] = X
    ws.y[...] = y
    # back-to-back fused steps in one workspace, as fit runs them (bf16 weight copies stay current)
    return lambda: plan.run(ws, "train", 1, 0.01, True, nt, m.optimizer, m.opt_state, bf16_current=True)


def _yardstick(rows, rng):
    """A numpy GEMM of a predict's first-layer shape: timed in the same rounds as fastbp, it moves
    with the machine (frequency, neighbours) and not with fastbp's code (``--compare``'s yardstick)."""
    A = rng.random((min(rows, 4096), 784), dtype=np.float32)
    W = rng.random((784, 512), dtype=np.float32)
    C = np.empty((A.shape[0], 512), np.float32)
    return lambda: np.matmul(A, W, out=C)


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

    from fastbp.kernels.gemm_floor import floor_operands, gemm_only_step
    ops = floor_operands(B, get_num_threads(), rng)
    X, W, H, G, dW = ops[0], ops[1:4], ops[4:7], ops[7:10], ops[10:13]

    def numpy_gemms():
        np.dot(X, W[0], out=H[0])
        np.dot(H[0], W[1], out=H[1])
        np.dot(H[1], W[2], out=H[2])
        np.dot(H[1].T, G[2], out=dW[2])
        np.dot(G[2], W[2].T, out=G[1])
        np.dot(H[0].T, G[1], out=dW[1])
        np.dot(G[1], W[1].T, out=G[0])
        np.dot(X.T, G[0], out=dW[0])

    def fastbp_gemms():
        gemm_only_step(*ops)
    return numpy_gemms, fastbp_gemms


# The tail of every peer script: after building and compiling, it prints one JSON line (its info)
# and then times one block (``block()``: seconds per call) for every line it reads, so the driver
# can interleave the peers' blocks with fastbp's block by block (``_measure``).
_SERVE = r"""
print(json.dumps(info), flush=True)
for _ in sys.stdin:
    block()                         # an untimed block after the pause, as fastbp's blocks get
    print(json.dumps(block()), flush=True)
"""

_TORCH_SCRIPT = r"""
import json, sys, time
import torch
B, threads = int(sys.argv[1]), int(sys.argv[2])
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
def block():                        # seconds per step over a block of ~50 ms
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n
info = {"threads": torch.get_num_threads()}
""" + _SERVE

_JAX_MLP = r"""
import jax, jax.numpy as jnp
sizes = (784, 512, 512, 10)
params = [(jnp.asarray((rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)), jnp.zeros(f, jnp.float32))
          for d, f in zip(sizes[:-1], sizes[1:])]
def logits(ps, X):
    h = X
    for i, (W, b) in enumerate(ps):
        h = h @ W + b
        if i < len(ps) - 1:
            h = jnp.tanh(h)
    return h
def loss(ps, X, y):
    return -jnp.mean(jax.nn.log_softmax(logits(ps, X))[jnp.arange(X.shape[0]), y])
"""

_JAX_SCRIPT = r"""
import json, os, sys, time
B, threads = int(sys.argv[1]), int(sys.argv[2])
cpus = sorted(os.sched_getaffinity(0))[:threads]
os.sched_setaffinity(0, cpus)          # XLA's CPU pool follows the cores this process may use
import numpy as np
rng = np.random.default_rng(0)
""" + _JAX_MLP + r"""
X = jnp.asarray(rng.random((B, 784), dtype=np.float32)); y = jnp.asarray(rng.integers(0, 10, B))
@jax.jit
def step(ps, X, y):
    g = jax.grad(loss)(ps, X, y)
    return jax.tree_util.tree_map(lambda p, d: p - 0.01 * d, ps, g)
for _ in range(5):
    params = step(params, X, y)
jax.block_until_ready(params)
t = time.perf_counter()
for _ in range(3):
    params = step(params, X, y)
jax.block_until_ready(params); one = (time.perf_counter() - t) / 3
n = max(1, int(0.05 / max(one, 1e-7)))
def block():
    global params
    t = time.perf_counter()
    for _ in range(n):
        params = step(params, X, y)
    jax.block_until_ready(params)
    return (time.perf_counter() - t) / n
info = {"threads": len(cpus), "version": jax.__version__}
""" + _SERVE


PEER_SCRIPTS = {"torch": _TORCH_SCRIPT, "jax": _JAX_SCRIPT}


_PREDICT_PEER_COMMON = r"""
import json, os, sys, time
n, threads = int(sys.argv[1]), int(sys.argv[2])
import numpy as np
rng = np.random.default_rng(0)
X = rng.random((n, 784), dtype=np.float32)
def serve(fn):                      # one call per block
    global block, info
    for _ in range(3):
        fn()
    def block():
        t = time.perf_counter(); fn(); return time.perf_counter() - t
    info = {}
"""

_TORCH_PREDICT_SCRIPT = _PREDICT_PEER_COMMON + r"""
import torch
torch.set_num_threads(threads)
net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                          torch.nn.Tanh(), torch.nn.Linear(512, 10)).eval()
Xt = torch.from_numpy(X)
def predict():                      # labels, as Model.predict returns them
    with torch.no_grad():
        return net(Xt).softmax(1).argmax(1).numpy()
serve(predict)
""" + _SERVE

_JAX_PREDICT_SCRIPT = r"""
import os, sys
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(sys.argv[2])])
""" + _PREDICT_PEER_COMMON + r"""
""" + _JAX_MLP + r"""
@jax.jit
def labels(ps, X):
    return jnp.argmax(jax.nn.softmax(logits(ps, X)), axis=1)
def predict():                      # from a numpy array to numpy labels, like the others
    return np.asarray(labels(params, X))
serve(predict)
""" + _SERVE

PREDICT_PEER_SCRIPTS = {"torch": _TORCH_PREDICT_SCRIPT, "jax": _JAX_PREDICT_SCRIPT}
PREDICT_ROWS = 10_000


def predict(peers=True, repeat=7, out=None, precisions=("fp32",), rows=PREDICT_ROWS):
    """``Model.predict`` on ``rows`` rows (the 784-512-512-10 tanh MLP, labels out), fastbp in this
    process, PyTorch (eager, ``no_grad``) and JAX (jit) in their own, same threads; medians."""
    import fastbp
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    nt = fastbp.get_num_threads()
    rng = np.random.default_rng(0)
    X = rng.random((rows, 784), dtype=np.float32)
    res = {"rows": rows, "threads": nt, "warnings": []}
    models = {}
    for prec in precisions:
        try:
            m = _bench_model(prec)
            m.predict(X)                            # compile and workspaces outside the timing
        except RuntimeError as e:                   # bf16 on a CPU or install without it
            res[f"fastbp_{prec}_error"] = str(e)
            continue
        models[f"fastbp_{prec}"] = lambda m=m: m.predict(X)
    models["yardstick"] = _yardstick(rows, rng)     # numpy's GEMM in the same rounds, for --compare
    names = [q for q in peers_available() if q in PREDICT_PEER_SCRIPTS] if peers else []
    started = _start_peers(names, rows, nt, res["warnings"].append, PREDICT_PEER_SCRIPTS)
    try:
        samples = _measure(models, repeat, peers=started)   # fastbp's calls and the peers' interleaved
    finally:
        for peer in started.values():
            peer.close()
    for k, v in samples.items():
        res[f"{k}_ms"] = statistics.median(v) * 1e3
    res["samples_ms"] = {k: [t * 1e3 for t in v] for k, v in samples.items()}
    line = f"\npredict on {rows:,} rows (labels; {nt} threads; median of {repeat}):"
    for prec in precisions:
        if f"fastbp_{prec}_ms" in res:
            line += f" fastbp {prec} {res[f'fastbp_{prec}_ms']:.1f} ms"
            for p in PREDICT_PEER_SCRIPTS:
                if f"{p}_ms" in res:
                    res[f"ratio_{prec}_{p}"] = res[f"fastbp_{prec}_ms"] / res[f"{p}_ms"]
                    line += f" ({res[f'ratio_{prec}_{p}']:.2f}x {p})"
            line += ";"
    line += "".join(f" {p} {res[f'{p}_ms']:.1f} ms" for p in PREDICT_PEER_SCRIPTS if f"{p}_ms" in res)
    say(line)
    return res




def peers_available():
    import importlib.util
    return [p for p in PEER_SCRIPTS if importlib.util.find_spec(p) is not None]


class _Peer:
    """A peer's step (or, with ``scripts=PREDICT_PEER_SCRIPTS``, its predict on B rows) in its own
    process: in ours its thread pool and numba's would spin against each other and we would
    measure that contention.  ``block()`` asks it to time one block (seconds per call), so its
    blocks interleave with fastbp's (``_measure``); a peer that fails raises OSError."""

    def __init__(self, peer, B, threads, scripts=None, timeout=600):
        import subprocess
        import sys
        self.name, self.timeout = peer, timeout
        self.proc = subprocess.Popen([sys.executable, "-c", (scripts or PEER_SCRIPTS)[peer], str(B), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.info = self._read()

    def _read(self):
        import json
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()          # stopped (no harm) or hung (it must not outlive the bench)
            self.close()
            raise OSError(f"{self.name}: the peer process stopped or hung")
        return json.loads(line)

    def block(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self):
        import subprocess
        try:
            self.proc.stdin.close()
        except OSError:       # it is gone already (a broken pipe on the last flush)
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:     # a hung peer: make sure it is gone
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _start_peers(names, B, threads, warn, scripts=None):
    """{name: _Peer} for those of ``names`` that start; ``warn`` gets a line for each that fails."""
    peers = {}
    for p in names:
        try:
            peers[p] = _Peer(p, B, threads, scripts)
        except (OSError, ValueError) as e:
            warn(f"{p} failed to run at {B}: {e}")
    return peers


def sgemm_peak(threads, n=2048, repeat=5):
    """The machine's sgemm GFLOP/s with ``threads`` threads, the ceiling every step time is
    reported against: the better of numpy's threaded BLAS on an n x n x n float32 product and
    ``threads`` x the single-threaded rate of the BLAS fastbp bound (best of ``repeat`` each)."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    A, B = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    C = np.empty((n, n), np.float32)
    best = np.inf
    with threadpool_limits(threads, user_api="blas"):
        np.dot(A, B, out=C)
        for _ in range(repeat):
            t = time.perf_counter()
            np.dot(A, B, out=C)
            best = min(best, time.perf_counter() - t)
    return max(2 * n ** 3 / best / 1e9, threads * _bound_single_thread_gflops(A, B, C, repeat))


def _bound_single_thread_gflops(A, B, C, repeat):
    """GFLOP/s of one single-threaded call of the BLAS fastbp bound."""
    from fastbp.kernels import JIT_DISABLED, bind_blas
    from fastbp.kernels.gemm_floor import serial_gemm
    if JIT_DISABLED:
        return 0.0
    bind_blas()
    serial_gemm(C, A, B)
    best = min(_timeit(lambda: serial_gemm(C, A, B), 1) for _ in range(repeat))
    return 2 * A.shape[0] ** 3 / best / 1e9


def step_flops(B):
    """Multiply-adds x 2 of one training step: forward, dW and dx GEMMs (no dx for layer 1)."""
    mm = sum(d * f for d, f in zip(SIZES[:-1], SIZES[1:]))
    return 2 * B * (3 * mm - SIZES[0] * SIZES[1])


def metadata():
    """What the figures depend on: machine, CPU flags, library versions, threads, BLAS, commit."""
    import datetime
    import os
    import platform
    import subprocess
    from importlib import metadata as md

    import fastbp
    cpu, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = sorted(have & {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                                           "avx512_vnni", "amx_bf16", "amx_tile", "sve", "neon"})
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("fastbp", "numpy", "numba", "scipy", "blis", "torch", "jax", "jaxlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    commit = None
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    try:
        r = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            commit = r.stdout.strip()
            dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit += "+dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "machine": platform.machine(), "cpu": cpu, "cpu_flags": flags,
            "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "python": platform.python_version(), "versions": versions, "commit": commit,
            "threading": fastbp.threading_info(), "load_average": list(os.getloadavg())}


WIDE_SPREAD = 0.25


def _measure(contenders, repeat, target=0.05, peers=None):
    """{name: [seconds per call, one per block]} for the in-process ``contenders`` and the
    ``peers`` ({name: _Peer}, each timing its own blocks in its process), all round-robin."""
    peers = peers or {}
    numbers = {}
    for name, fn in contenders.items():
        fn()
        t = _timeit(fn, 1)
        if t < target:            # a call of a block's length or more is timed once per block
            fn()
            t = _timeit(fn, 3)
        numbers[name] = max(1, int(target / max(t, 1e-7)))
    # Blocks of ~50 ms, round-robin over the contenders, median per contender: a burst of load from
    # elsewhere on the machine then hits every contender alike instead of one whole block.  A short
    # pause before each block lets the previous contender's thread pool go idle (interleaving
    # single calls would measure the pools spinning against each other); an untimed block after
    # it brings this contender's pool back to speed (after the pause plus one untimed call, JAX's
    # 512-row step measured 17.7 ms against 10-12 ms back to back; after an untimed block, 10.1).
    samples = {name: [] for name in [*contenders, *peers]}
    for _ in range(repeat):
        for name, fn in contenders.items():
            time.sleep(0.2)   # OpenBLAS threads spin ~0.1 s after their last call
            _timeit(fn, numbers[name])                 # untimed (one call when a call fills a block)
            samples[name].append(_timeit(fn, numbers[name]))
        for name, peer in peers.items():
            if name not in samples:           # it failed in an earlier round
                continue
            time.sleep(0.2)
            try:
                samples[name].append(peer.block())
            except (OSError, ValueError):     # dropped: no partial figure; the caller warns
                peer.close()
                del samples[name]
    return samples


def round_ratios(a, b):
    """Median and quartiles over rounds of a[i] / b[i] (two contenders' blocks of one round): on a
    VM whose speed drifts, steadier than the ratio of two medians."""
    r = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(r, n=4) if len(r) > 1 else r * 3
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2]}


def spread(samples):
    """min / median / max of a list of seconds, and the relative spread (max - min) / median."""
    med = statistics.median(samples)
    return {"min": min(samples), "median": med, "max": max(samples), "spread": (max(samples) - min(samples)) / med}


def run(batch_sizes=(32, 128, 512, 2048), repeat=7, peers=True, scaling=True, epoch=False, data_dir=None,
        out=None):
    import os

    import fastbp
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    rng = np.random.default_rng(0)
    meta = metadata()
    nt = fastbp.get_num_threads()
    res = {"model": "784-512-512-10 tanh softmax-CE float32 SGD", "threads": nt, "meta": meta,
           "steps": [], "scaling": [], "epoch": None, "warnings": []}

    def warn(msg):
        res["warnings"].append(msg)
        say(f"WARNING: {msg}")
    load = meta["load_average"][0]
    if load > 0.5:
        warn(f"the machine is busy before the benchmark starts (1-minute load average {load:.2f} on "
             f"{meta['cpus']} CPUs): figures may be slow and noisy")
    peer_list = peers_available() if peers else []
    peak = sgemm_peak(nt)
    res["sgemm_peak_gflops"] = peak
    say(f"fastbp {meta['versions'].get('fastbp')} ({meta['commit'] or 'no git commit'}); {meta['cpu']}; "
        f"threads {nt}; BLAS {meta['threading']['blas']} (single-threaded per call); sgemm peak with {nt} threads "
        f"{peak:.0f} GFLOP/s; peers: {', '.join(peer_list) or 'none installed / skipped'} (own processes)")
    say("step times: median of blocks [min-max]; 'peak' = share of the sgemm peak the step's GEMM FLOPs reach")
    head = f"{'batch':>6} {'fastbp ms':>20} {'peak':>5} {'numpy ms':>9} {'floor ms':>9}" + \
        "".join(f" {p + ' ms':>20}" for p in peer_list) + f" {'vs numpy':>9} {'vs floor':>9}" + \
        "".join(f" {'vs ' + p:>8}" for p in peer_list)
    say(head)
    for B in batch_sizes:
        np_g, fb_g = _gemm_floor_steps(B, rng)
        c = {"fastbp": _fastbp_step(B, rng), "numpy": _reference_step(B, rng), "gemm_numpy": np_g,
             "gemm_fastbp": fb_g}
        peers = _start_peers(peer_list, B, nt, warn)
        try:
            samples = _measure(c, repeat, peers=peers)
        finally:
            for peer in peers.values():
                peer.close()
        for p in peers:
            if p not in samples:
                warn(f"{p} stopped during the timing at batch {B}")
        st = {k: spread(v) for k, v in samples.items()}
        m = {k: v["median"] for k, v in st.items()}
        floor = min(m["gemm_numpy"], m["gemm_fastbp"])
        row = {"batch": B, **{k + "_ms": v * 1e3 for k, v in m.items()}, "floor_ms": floor * 1e3,
               "spread": {k: {q: (v[q] * 1e3 if q != "spread" else v[q]) for q in v} for k, v in st.items()},
               "share_of_peak": step_flops(B) / m["fastbp"] / 1e9 / peak,
               # per round, for --compare: every contender's block of the same round (numpy's is the yardstick)
               "samples_ms": {k: [v * 1e3 for v in samples[k]]
                              for k in ("fastbp", "numpy", "gemm_numpy", "gemm_fastbp")},
               "ratio_numpy": m["fastbp"] / m["numpy"], "ratio_floor": m["fastbp"] / floor}
        for p in peer_list:
            row[f"ratio_{p}"] = m["fastbp"] / m[p] if p in m else None
            if p in samples:    # blocks of one round: fastbp's, then each peer's
                row[f"round_ratio_{p}"] = round_ratios(samples["fastbp"], samples[p])
        res["steps"].append(row)
        for k, v in st.items():
            if v["spread"] > WIDE_SPREAD:
                warn(f"batch {B}: {k} blocks spread {100 * v['spread']:.0f}% (min {v['min'] * 1e3:.3f}, max "
                     f"{v['max'] * 1e3:.3f} ms): the machine is noisy, compare ratios with care")

        def cell(k, st=st):
            if k not in st:
                return f"{'-':>20}"
            v = st[k]
            return f"{v['median'] * 1e3:8.3f} [{v['min'] * 1e3:.2f}-{v['max'] * 1e3:.2f}]".rjust(20)
        say(f"{B:>6} {cell('fastbp')} {100 * row['share_of_peak']:4.0f}% {m['numpy'] * 1e3:9.3f} "
            f"{floor * 1e3:9.3f}"
            + "".join(f" {cell(p)}" for p in peer_list) + f" {row['ratio_numpy']:9.2f} {row['ratio_floor']:9.2f}"
            + "".join(f" {row[f'ratio_{p}']:8.2f}" if row.get(f"ratio_{p}") else f" {'-':>8}" for p in peer_list))
    if any(f"round_ratio_{p}" in r for r in res["steps"] for p in peer_list):
        say(f"\nvs peers per round: median over the {repeat} rounds of fastbp's block / the peer's block "
            "[quartiles]")
        for r in res["steps"]:
            q = {p: r[f"round_ratio_{p}"] for p in peer_list if f"round_ratio_{p}" in r}
            say(f"{r['batch']:>6} " + "   ".join(f"vs {p} {v['median']:.2f} [{v['q1']:.2f}-{v['q3']:.2f}]"
                                                  for p, v in q.items()))
    if scaling:
        say("\nthread scaling, batch 128 (fastbp step)")
        say(f"{'threads':>7} {'ms':>8} {'speedup':>8}")
        import numba

        from fastbp._threads import pinned
        base = None
        for n in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            with pinned(n):
                t = spread(_measure({"s": _fastbp_step(128, rng)}, repeat)["s"])["median"]
            base = base or t
            res["scaling"].append({"threads": n, "ms": t * 1e3, "speedup": base / t})
            say(f"{n:>7} {t * 1e3:8.3f} {base / t:8.2f}")
        if len(res["scaling"]) > 1 and res["scaling"][-1]["speedup"] < 1.0:
            warn(f"{res['scaling'][-1]['threads']} threads are slower than 1 "
                 f"(speedup {res['scaling'][-1]['speedup']:.2f}): other work is using the cores")
    if epoch:
        res["epoch"] = _epochs(data_dir, peers, say)
    after = os.getloadavg()[0]
    res["meta"]["load_average_after"] = after
    return res


def verdict(new, old, threshold, new_yard=None, old_yard=None, resamples=1000):
    """Regression decision for one figure from per-round samples (seconds or ms, same unit).

    Each sample is divided by the yardstick of its own round when both runs have one (plain numpy
    doing the same work: a machine running slower in one run slows both, and the quotient cancels it).  The figure is
    the ratio of the two runs' medians; its spread comes from resampling each run's rounds
    (bootstrap, seeded: the same files give the same verdict).  It is a regression only when the
    lower quartile of that ratio lies above ``1 + threshold``, not when one median exceeds another
    (same-commit runs here differed by up to 28% in one figure's median)."""
    if new_yard and old_yard and len(new_yard) == len(new) and len(old_yard) == len(old):
        new = [a / y for a, y in zip(new, new_yard)]
        old = [b / y for b, y in zip(old, old_yard)]
        basis = "per round / numpy yardstick"
    else:
        basis = "per round"
    n, o = np.asarray(new, float), np.asarray(old, float)
    g = np.random.default_rng(0)
    r = np.median(g.choice(n, (resamples, n.size)), axis=1) / np.median(g.choice(o, (resamples, o.size)), axis=1)
    q1, q3 = (float(v) for v in np.quantile(r, [0.25, 0.75]))
    return {"median": float(np.median(n) / np.median(o)), "q1": q1, "q3": q3, "basis": basis,
            "regressed": q1 > 1 + threshold}


def _figures(res):
    """{figure: (median ms, samples, yardstick samples)} of a bench JSON (samples None in old files)."""
    out = {}
    for r in res.get("steps", []):
        sm = r.get("samples_ms") or {}
        # yardstick: the plain-numpy step of the same round (20 same-commit runs on the 2-core AMD VM: 19 of
        # 20 comparisons passed and a planted 25% slowdown was caught in 20 of 20; against numpy's GEMMs
        # alone 19 and 18, without a yardstick 15 and 17)
        out[f"step batch {r['batch']}"] = (r["fastbp_ms"], sm.get("fastbp"), sm.get("numpy"))
    ep = res.get("epoch") or {}
    if ep.get("fastbp_s"):
        s = (ep.get("samples_s") or {}).get("fastbp")
        out["epoch"] = (ep["fastbp_s"] * 1e3, [v * 1e3 for v in s] if s else None, None)
    pr = res.get("predict") or {}
    if pr.get("fastbp_fp32_ms"):
        sm = pr.get("samples_ms") or {}
        out["predict"] = (pr["fastbp_fp32_ms"], sm.get("fastbp_fp32"), sm.get("yardstick"))
    return out


def compare(new, old, threshold=0.10, out=None):
    """new/old of every common figure (``verdict`` per figure); returns (rows, regressed)."""
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    if not isinstance(old, dict) or "steps" not in old:
        raise ValueError("--compare: not a fastbp bench JSON (no 'steps')")
    nf, of = _figures(new), _figures(old)
    common = [k for k in nf if k in of]
    if not common:
        raise ValueError("--compare: no figure in common (different batch sizes?)")
    say(f"\ncompared with {old.get('meta', {}).get('commit') or 'an earlier run'}: new/old of the median round "
        f"[quartiles over resampled rounds]; a regression when the lower quartile is above {1 + threshold:.2f}")
    say(f"{'figure':>16} {'old ms':>9} {'new ms':>9} {'new/old':>8} {'[q1-q3]':>13}  basis")
    rows, regressed = [], False
    for name in common:
        (o, os_, oy), (n, ns, ny) = of[name], nf[name]
        v = verdict(ns, os_, threshold, ny, oy) if ns and os_ else \
            {"median": n / o, "q1": n / o, "q3": n / o, "basis": "medians only (no samples in a file)",
             "regressed": n / o > 1 + threshold}
        regressed |= v["regressed"]
        rows.append({"figure": name, "old_ms": o, "new_ms": n, "ratio": v["median"], **v})
        iqr = f"[{v['q1']:.2f}-{v['q3']:.2f}]"
        say(f"{name:>16} {o:9.3f} {n:9.3f} {v['median']:8.3f} {iqr:>13}  {v['basis']}"
            f"{'  REGRESSION' if v['regressed'] else ''}")
    return rows, regressed


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


_JAX_EPOCH_SCRIPT = r"""
import json, os, sys, time
threads = int(sys.argv[2])
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])   # XLA's pool follows the allowed cores
import numpy as np
from fastbp import data
(X, y), _ = data.load_fashion_mnist(sys.argv[1] or None)
rng = np.random.default_rng(0)
""" + _JAX_MLP + r"""
Xd, yd = jnp.asarray(X), jnp.asarray(y.astype(np.int32))     # the data on the device once, like fastbp's arrays
@jax.jit
def step(ps, idx):                                           # the batch is gathered inside the jitted step
    g = jax.grad(loss)(ps, Xd[idx], yd[idx])
    return jax.tree_util.tree_map(lambda p, d: p - 0.1 * d, ps, g)
n = X.shape[0]
def epoch(ps, perm):
    for s in range(0, n, 128):
        ps = step(ps, perm[s:s + 128])
    return jax.block_until_ready(ps)
params = epoch(params, np.arange(n, dtype=np.int32)[:1024 + n % 128])   # compile both batch shapes untimed
t = time.perf_counter()
params = epoch(params, rng.permutation(n).astype(np.int32))
print(json.dumps({"s": time.perf_counter() - t, "version": jax.__version__}))
"""

EPOCH_PEER_SCRIPTS = {"torch": _TORCH_EPOCH_SCRIPT, "jax": _JAX_EPOCH_SCRIPT}


def _epochs(data_dir, peers, say, rounds=3):
    """One Fashion-MNIST epoch at batch 128 (shuffle and batch gathering included): fastbp in this
    process, each installed peer in its own (same thread count), ``rounds`` interleaved rounds;
    medians and their ratios."""
    import json
    import subprocess
    import sys

    import fastbp
    from fastbp import Dense, Model, data
    (X, y), _ = data.load_fashion_mnist(data_dir)
    m = Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)])
    m.fit(X[:1024], y[:1024], epochs=1, lr=0.1)   # compile outside the timing
    peer_list = [p for p in peers_available() if p in EPOCH_PEER_SCRIPTS] if peers else []
    samples = {"fastbp": [], **{p: [] for p in peer_list}}
    for r in range(rounds):
        t = time.perf_counter()
        m.fit(X, y, epochs=1, batch_size=128, lr=0.1, seed=1 + r)
        samples["fastbp"].append(time.perf_counter() - t)
        for p in peer_list:
            res = subprocess.run([sys.executable, "-c", EPOCH_PEER_SCRIPTS[p], data_dir or "",
                                  str(fastbp.get_num_threads())], capture_output=True, text=True, timeout=900)
            if res.returncode == 0:
                samples[p].append(json.loads(res.stdout.strip().splitlines()[-1])["s"])
    out = {"rounds": rounds, "samples_s": samples, "fastbp_s": statistics.median(samples["fastbp"])}
    line = f"\nFashion-MNIST epoch (batch 128, shuffle + gather included; median of {rounds} interleaved rounds): " \
           f"fastbp {out['fastbp_s']:.2f} s"
    for p in peer_list:
        if samples[p]:
            out[f"{p}_s"] = statistics.median(samples[p])
            out[f"ratio_{p}"] = out["fastbp_s"] / out[f"{p}_s"]
            line += f", {p} {out[f'{p}_s']:.2f} s (ratio {out[f'ratio_{p}']:.2f})"
        else:
            line += f", {p} failed"
    say(line)
    return out


def bf16(batch_sizes=(32, 128, 512, 2048), repeat=7, out=None):
    """``fastbp bench --bf16``: training steps with ``precision="bf16"`` against fp32, interleaved
    in this process (same model, data and threads); None where the CPU or the libraries cannot."""
    from fastbp.kernels import bf16_info, bf16_speedup
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    try:
        info = bf16_info()
    except (RuntimeError, OSError) as e:
        say(f"\nbf16: not available here ({e})")
        return None
    if info is None:
        say("\nbf16: timed with the JIT only (NUMBA_DISABLE_JIT is set)")
        return None
    rng = np.random.default_rng(0)
    rows = []
    say("\nbf16 mixed precision (dense GEMM operands in bf16, fp32 accumulation and master weights); "
        f"the bf16 GEMM alone ({info['library']}, {info['choice']['how']}): {bf16_speedup():.2f}x the fp32 GEMM "
        "(one block, one thread)")
    say("speedup: median over rounds of fp32 / bf16 (each round times one block of each, back to back)")
    say(f"{'batch':>6} {'fp32 ms':>9} {'bf16 ms':>9} {'speedup':>8} {'quartiles':>11}")
    for B in batch_sizes:
        samples = _measure({"fp32": _fastbp_step(B, rng), "bf16": _fastbp_step(B, rng, "bf16")}, repeat)
        st = {k: spread(v) for k, v in samples.items()}
        rr = round_ratios(samples["fp32"], samples["bf16"])
        row = {"batch": B, "fp32_ms": st["fp32"]["median"] * 1e3, "bf16_ms": st["bf16"]["median"] * 1e3,
               "speedup": rr["median"], "speedup_quartiles": [rr["q1"], rr["q3"]], "spread": st}
        rows.append(row)
        say(f"{B:>6} {row['fp32_ms']:9.3f} {row['bf16_ms']:9.3f} {row['speedup']:8.2f} {rr['q1']:5.2f}-{rr['q3']:4.2f}")
    return rows


def run_distributed(comm, batch_sizes=(128, 512, 2048), repeat=7, out=None):
    """``fastbp bench --distributed`` (under mpiexec): per global batch size, the data-parallel step
    time, the all-reduce of the gradient buffer alone, the single-rank step on the same global
    batch (rank 0 alone, the others waiting) and the scaling efficiency T1 / (ranks x Tn)."""
    from ._threads import cap, get_num_threads

    say = (lambda s: print(s, file=out, flush=True)) if (out is not None and comm.rank == 0) else (lambda s: None)
    cap(comm.threads)
    comm.announce()
    nt = get_num_threads()
    rng = np.random.default_rng(0)
    res = {"ranks": comm.size, "local_ranks": comm.local_size, "threads_per_rank": nt, "meta": metadata(),
           "rows": []}
    say(f"{comm.size} ranks ({comm.local_size} on this machine) x {nt} threads; 784-512-512-10 tanh, SGD; "
        f"times: median of {repeat} blocks, on rank 0")
    say(f"{'batch':>6} {'step ms':>9} {'allreduce ms':>13} {'1-rank ms':>10} {'speedup':>8} {'efficiency':>10}")

    for B in batch_sizes:
        row = _distributed_row(comm, B, rng, nt, repeat)
        res["rows"].append(row)
        say(f"{B:>6} {row['step_ms']:9.3f} {row['allreduce_ms']:13.3f} {row['single_rank_ms']:10.3f} "
            f"{row['speedup']:8.2f} {100 * row['efficiency']:9.0f}%")
    return res


def _distributed_row(comm, B, rng, nt, repeat):
    import fastbp
    from fastbp.distributed import Step

    def timed(fn, n):
        comm.allreduce(np.zeros(1))   # start together
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n
    m = fastbp.Model([fastbp.Dense(512, "tanh"), fastbp.Dense(512, "tanh"), fastbp.Dense(10)], input_dim=784)
    X = rng.random((B, 784), dtype=np.float32)
    y = rng.integers(0, 10, B)
    m.fit(X, y, epochs=1, batch_size=B, lr=0.01)
    step = Step(m.plan, comm, m.optimizer, m.opt_state)
    idx = np.arange(B)

    def one():
        step.run(X, y, idx, 1, 0.01, nt)

    def allreduce():
        comm.allreduce(m.plan.grads)
    one()
    reps = max(3, int(0.05 / max(timed(one, 2), 1e-6)))
    t_step = statistics.median(timed(one, reps) for _ in range(repeat))
    t_ar = statistics.median(timed(allreduce, reps) for _ in range(repeat))
    buf = np.zeros(1)
    if comm.rank == 0:
        buf[0] = spread(_measure({"s": _fastbp_step(B, rng)}, repeat)["s"])["median"]
    comm.allreduce(buf)     # the others wait here while rank 0 times the single-rank step
    t_1 = float(buf[0])
    return {"batch": B, "step_ms": t_step * 1e3, "allreduce_ms": t_ar * 1e3, "single_rank_ms": t_1 * 1e3,
            "speedup": t_1 / t_step, "efficiency": t_1 / t_step / comm.size}


_SHARED_SCRIPT = r"""
import json, sys, time
import fastbp
from fastbp import Dense, Model, data
(X, y), _ = data.load_fashion_mnist(sys.argv[1] or None)
m = Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)])
m.fit(X[:1024], y[:1024], epochs=1, lr=0.1)          # compile / load from cache outside the timing
print("ready", flush=True)
sys.stdin.readline()                                  # all copies start together
t = time.perf_counter()
m.fit(X, y, epochs=1, batch_size=128, lr=0.1, seed=1)
print(json.dumps({"s": time.perf_counter() - t, "threads": fastbp.get_num_threads(),
                  "thread_changes": getattr(m, "thread_changes", [])}), flush=True)
"""

_BUSY_SCRIPT = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def _epoch_processes(n, data_dir, env=None, busy=False):
    """One Fashion-MNIST epoch in each of ``n`` processes started together (with ``busy``: beside
    a CPU-bound busy loop); each one's {"s": seconds, "thread_changes": [...]}."""
    import json
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", _SHARED_SCRIPT, data_dir or ""], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    loop = None
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"epoch benchmark process failed: {p.stderr.read()[-2000:]}")
        if busy:
            loop = subprocess.Popen([sys.executable, "-c", _BUSY_SCRIPT, "900"])
            time.sleep(0.2)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        out = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
        for p in procs:
            if p.poll() is None:
                p.wait(timeout=900)
    return out


def shared(data_dir=None, rounds=2, out=None):
    """``fastbp bench --shared``: one Fashion-MNIST epoch (batch 128) alone, then two copies at
    once, then one beside a CPU-bound busy loop; each one's slowdown against solo (2.0 is a fair
    share of a 2-core machine) and the thread counts the governor chose."""
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    solo, pairs, busy = [], [], []
    for _ in range(rounds):
        solo += _epoch_processes(1, data_dir)
        pairs.append(_epoch_processes(2, data_dir))
        busy += _epoch_processes(1, data_dir, busy=True)
    base = statistics.median(r["s"] for r in solo)
    slow = [r["s"] / base for pair in pairs for r in pair]
    slow_busy = [r["s"] / base for r in busy]
    res = {"solo_s": [r["s"] for r in solo], "pairs_s": [[r["s"] for r in pair] for pair in pairs],
           "busy_s": [r["s"] for r in busy], "slowdowns": slow, "median_slowdown": statistics.median(slow),
           "max_slowdown": max(slow), "busy_slowdowns": slow_busy,
           "median_busy_slowdown": statistics.median(slow_busy), "max_busy_slowdown": max(slow_busy),
           "thread_changes": {"solo": [r["thread_changes"] for r in solo],
                              "pairs": [[r["thread_changes"] for r in pair] for pair in pairs],
                              "busy": [r["thread_changes"] for r in busy]}}
    say(f"\nshared machine: one Fashion-MNIST epoch alone {base:.2f} s (median of {len(solo)})")
    say("  two at once: " + ", ".join(f"{r['s']:.2f}" for pair in pairs for r in pair)
        + f" s -> slowdown {res['median_slowdown']:.2f}x (max {res['max_slowdown']:.2f}x; 2.0x is the fair share)")
    say("  beside a busy loop: " + ", ".join(f"{r['s']:.2f}" for r in busy)
        + f" s -> slowdown {res['median_busy_slowdown']:.2f}x (max {res['max_busy_slowdown']:.2f}x)")
    say("  threads the governor ended on: solo " + ",".join(str(_last_threads(r)) for r in solo)
        + "; pairs " + ",".join(str(_last_threads(r)) for pair in pairs for r in pair)
        + "; busy " + ",".join(str(_last_threads(r)) for r in busy))
    return res


def _last_threads(r):
    return r["thread_changes"][-1][1] if r["thread_changes"] else r["threads"]

def profile(batch_sizes=(32, 128, 512), repeat=7, out=None):
    """``fastbp bench --profile``: where a training step's time goes, per batch size.

    * ``fit step``: one step through ``Model.fit`` on >= 30,000 rows (shuffled gather + Python
      loop + program; the per-call checks spread over the steps as in an epoch);
    * ``gemm``: the step's GEMMs alone, split across threads as the kernels split them;
    * ``regions``: the fixed cost of the step's parallel regions (empty regions, as many as the
      step's program has entries);
    * ``elementwise``: the program minus the two above (bias, activations, loss, optimizer);
    * ``python``: the fit step minus the program (gather, loop, checks).
    """
    import fastbp
    say = (lambda s: print(s, file=out, flush=True)) if out is not None else (lambda s: None)
    rng = np.random.default_rng(0)
    nt = fastbp.get_num_threads()
    rows = []
    say(f"\nstep time breakdown ({nt} threads; median of {repeat} blocks; shares of the fit step)")
    say(f"{'batch':>6} {'fit step ms':>11} {'gemm':>6} {'elementwise':>12} {'regions':>8} {'python':>7} "
        f"{'program ms':>10} {'entries':>8}")
    for B in batch_sizes:
        row = _profile_row(B, rng, nt, repeat)
        rows.append(row)
        step = row["fit_step_ms"]

        def pct(v, step=step):
            return f"{100 * v / step:5.0f}%"
        say(f"{B:>6} {step:11.3f} {pct(row['gemm_ms']):>6} {pct(row['elementwise_ms']):>12} "
            f"{pct(row['regions_ms']):>8} {pct(row['python_ms']):>7} {row['program_ms']:10.3f} {row['entries']:>8}")
    return rows


def _profile_row(B, rng, nt, repeat, n_steps=None):
    import fastbp
    from fastbp.kernels.gemm_floor import empty_regions
    m = fastbp.Model([fastbp.Dense(512, "tanh"), fastbp.Dense(512, "tanh"), fastbp.Dense(10)], input_dim=784)
    n_steps = n_steps or max(20, 30000 // B)   # enough steps per fit call that its setup does not count
    X = rng.random((B * n_steps, 784), dtype=np.float32)
    y = rng.integers(0, 10, B * n_steps)
    m.fit(X[:B], y[:B], epochs=1, batch_size=B, lr=0.01)
    ws = m.plan.train_workspace(B)
    ws.x[...] = X[:B]
    ws.y[...] = y[:B]
    entries = len(m.plan.program(ws, "train", m.optimizer, m.opt_state).names)
    _, gemm = _gemm_floor_steps(B, rng)
    scratch = np.zeros(max(nt, 1))

    def fit():
        m.fit(X, y, epochs=1, batch_size=B, lr=0.01, shuffle=True)

    def program():
        m.plan.run(ws, "train", 1, 0.01, True, nt, m.optimizer, m.opt_state)

    def regions():
        empty_regions(scratch, entries, nt)
    med = {k: spread(v)["median"] for k, v in _measure({"fit": fit, "program": program, "gemm": gemm,
                                                         "regions": regions}, repeat).items()}
    step = med["fit"] / n_steps
    return {"batch": B, "fit_step_ms": step * 1e3, "program_ms": med["program"] * 1e3, "gemm_ms": med["gemm"] * 1e3,
            "regions_ms": med["regions"] * 1e3,
            "elementwise_ms": max(med["program"] - med["gemm"] - med["regions"], 0.0) * 1e3,
            "python_ms": max(step - med["program"], 0.0) * 1e3, "entries": entries}
