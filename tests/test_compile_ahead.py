"""A cold first run spreads compiling over helper processes (fastbp.warmup.start_helpers)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbp import BatchNorm, Dense, Dropout, Model, ops, optim
from fastbp.kernels import JIT_DISABLED

jit_only = pytest.mark.skipif(JIT_DISABLED, reason="compiling only happens with the JIT")

ALL_KINDS = [Dense(6, "relu"), BatchNorm("tanh"), Dropout(0.3), ops.L.Activation("sigmoid"), Dense(5), Dense(3)]


@pytest.mark.parametrize("loss", ["softmax_ce", "mse", "sigmoid_bce"])
def test_every_entry_a_program_runs_is_declared_by_its_unit(loss, rng):
    """start_helpers compiles what ops and losses declare in ``entries``: the declarations must
    cover every entry their forward_entry/backward_entry/entry return."""
    X = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8) if loss == "softmax_ce" else rng.random((8, 3)).astype(np.float32)
    m = Model(ALL_KINDS, loss=loss)
    m.fit(X, y, epochs=1, batch_size=8, optimizer="adam")
    m.evaluate(X, y)
    plan = m.plan
    declared = {fn.__name__ for op in plan.ops for fn in op.entries} | {fn.__name__ for fn in plan.loss.entries}
    workspaces = list(plan._train_ws.values()) + [ws for free in plan._pool.values() for ws in free]
    used = {name for ws in workspaces for prog in ws.programs.values() for name in prog.names}
    optimizer_entries = {n for n in dir(optim) if n.endswith("_entry")}
    assert len(used) == 10      # every op kind forward and backward, the loss, the optimizer
    assert used - optimizer_entries <= declared, used - optimizer_entries - declared


@jit_only
def test_cached_tells_whether_numbas_disk_cache_holds_an_entry(rng):
    from fastbp.warmup import cached
    Model([Dense(3)]).fit(rng.standard_normal((4, 2)).astype(np.float32), np.arange(4) % 3, epochs=1)
    assert cached(ops.dense_forward_entry, "float32") is True
    assert cached(ops.dense_forward_entry, "int8") is None or cached(ops.dense_forward_entry, "int8") is False
    assert cached(object(), "float32") is None         # not a dispatcher: cannot tell, spawn nothing


COLD = r"""
import json, sys
import numpy as np
import fastbp, fastbp.warmup as W
if sys.argv[1] == "failing":
    W._HELPER = "raise SystemExit(3)"
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 20)).astype(np.float32)
y = rng.integers(0, 4, 64)
m = fastbp.Model([fastbp.Dense(16, "tanh"), fastbp.Dense(4)], seed=0)
m.fit(X, y, epochs=2, batch_size=16, lr=0.1)
print(json.dumps({"spawned": W.spawned, "params": m.params.tolist(),
                  "cached": bool(W.cached(fastbp.ops.dense_backward_entry, "float32"))}))
"""


def _cold_run(tmp_path, mode, parallel=True):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / mode), FASTBP_PARALLEL_COMPILE="1" if parallel else "0")
    env.pop("NUMBA_NUM_THREADS", None)
    r = subprocess.run([sys.executable, "-c", COLD, mode], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@jit_only
@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="helpers need a spare CPU")
def test_a_cold_first_run_compiles_in_helpers_and_trains_the_same_bits(tmp_path):
    serial = _cold_run(tmp_path, "serial", parallel=False)
    helped = _cold_run(tmp_path, "helped")
    failing = _cold_run(tmp_path, "failing")          # helpers that die: this process compiles it all
    assert serial["spawned"] == []
    assert helped["spawned"] and all(helped["spawned"]) and failing["spawned"]
    assert helped["cached"] and failing["cached"] and serial["cached"]
    assert helped["params"] == serial["params"] == failing["params"]
