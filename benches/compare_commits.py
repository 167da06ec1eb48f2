"""A/B timing of one training step between two fastbp installs, interleaved in one run.

    python benches/compare_commits.py OLD_PYTHON NEW_PYTHON [--batch-sizes 32,128,512,2048] [--rounds 25]
                                      [--precision bf16]

Each interpreter (e.g. a venv with the previous commit installed, and this one) runs a worker
that builds the 784-512-512-10 tanh MLP (softmax-CE, float32, plain SGD), compiles, and then
times blocks of ~50 ms of training steps on command.  The driver alternates the two workers block
by block, so load bursts on this shared machine hit both alike, and reports the median of the
per-round ratios new/old.  The workers start one after the other, so neither calibrates its block
length (or has its thread governor react) while the other compiles.  Works with any fastbp version
that has ``Model.fit`` (``--precision bf16``: any that has ``Model(precision=...)``).
"""
import argparse
import json
import statistics
import subprocess
import sys

WORKER = r"""
import sys, time, json
import numpy as np
import fastbp
from fastbp import Dense, Model
B = int(sys.argv[1])
kw = {} if sys.argv[2] == "fp32" else {"precision": sys.argv[2]}
rng = np.random.default_rng(0)
X = rng.random((B * 8, 784), dtype=np.float32)
y = rng.integers(0, 10, B * 8)
m = Model([Dense(512, "tanh"), Dense(512, "tanh"), Dense(10)], input_dim=784, **kw)
m.fit(X, y, epochs=2, batch_size=B, lr=0.01)          # compile + workspaces
def block(n):
    t = time.perf_counter()
    m.fit(X, y, epochs=n, batch_size=B, lr=0.01, shuffle=False)
    return (time.perf_counter() - t) / (n * 8)
one = block(1)
n = max(1, int(0.05 / (8 * one)))
print("ready", flush=True)
for line in sys.stdin:
    time.sleep(0.2)   # let the other worker's OpenMP threads stop spinning before timing
    block(1)
    print(json.dumps(block(n)), flush=True)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--batch-sizes", default="32,128,512,2048")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    res = []
    for B in [int(v) for v in a.batch_sizes.split(",")]:
        procs = {}
        for k, py in (("old", a.old), ("new", a.new)):   # one after the other: each calibrates alone
            procs[k] = subprocess.Popen([py, "-c", WORKER, str(B), a.precision], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd="/")
            assert procs[k].stdout.readline().strip() == "ready"
        t = {"old": [], "new": []}
        for r in range(a.rounds):
            for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
                procs[k].stdin.write("go\n")
                procs[k].stdin.flush()
                t[k].append(json.loads(procs[k].stdout.readline()))
        for p in procs.values():
            p.stdin.close()
            p.wait()
        ratios = [n / o for n, o in zip(t["new"], t["old"])]
        row = {"batch": B, "old_ms": statistics.median(t["old"]) * 1e3, "new_ms": statistics.median(t["new"]) * 1e3,
               "ratio_median": statistics.median(ratios), "ratio_q1": statistics.quantiles(ratios, n=4)[0],
               "ratio_q3": statistics.quantiles(ratios, n=4)[2]}
        res.append(row)
        print(f"batch {B:5d}: old {row['old_ms']:8.3f} ms  new {row['new_ms']:8.3f} ms  new/old median "
              f"{row['ratio_median']:.3f} (quartiles {row['ratio_q1']:.3f}-{row['ratio_q3']:.3f})", flush=True)
    json.dump(res, sys.stderr)


if __name__ == "__main__":
    main()
