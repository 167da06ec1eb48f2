"""pytest-benchmark suite: each kernel, fastbp vs fastbp.reference, over batch sizes and widths;
the full training step; one Fashion-MNIST epoch.

    pytest benches --benchmark-group-by=param          # a table per parameter set
"""
import numpy as np
import pytest

import fastbp
import fastbp.kernels as K
from fastbp import reference as R
from fastbp.bench import _fastbp_step, _reference_step

BATCHES = [32, 128, 512]
WIDTHS = [128, 512]


def _dense_layer(rng, batch, width):
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    W = (rng.standard_normal((784, width)) * 0.03).astype(np.float32)
    return x, W, np.zeros(width, np.float32)


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def bench_dense_forward_tanh(benchmark, rng, impl, batch, width):
    x, W, b = _dense_layer(rng, batch, width)
    out = np.empty((batch, width), np.float32)
    if impl == "fastbp":
        benchmark(K.dense_forward, out, x, W, b, "tanh")
    else:
        benchmark(R.Dense(W, b, "tanh").forward, x)


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def bench_dense_backward_tanh(benchmark, rng, impl, batch, width):
    x, W, b = _dense_layer(rng, batch, width)
    y = np.tanh(x @ W)
    dout = rng.standard_normal((batch, width)).astype(np.float32)
    if impl == "fastbp":
        dx, dW, db, d = np.empty_like(x), np.empty_like(W), np.empty_like(b), dout.copy()
        benchmark(K.dense_backward, dx, dW, db, d, x, W, y, "tanh")
    else:
        layer = R.Dense(W, b, "tanh")
        layer.forward(x)
        benchmark(layer.backward, dout)


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("batch", BATCHES)
def bench_softmax_ce(benchmark, rng, impl, batch):
    z = rng.standard_normal((batch, 10)).astype(np.float32)
    lab = rng.integers(0, 10, batch)
    if impl == "fastbp":
        d = np.empty_like(z)
        benchmark(K.softmax_cross_entropy, d, z, lab)
    else:
        ce = R.SoftmaxCrossEntropy()
        benchmark(lambda: (ce.forward(z, lab), ce.backward()))


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def bench_batchnorm_train(benchmark, rng, impl, batch, width):
    x = rng.standard_normal((batch, width)).astype(np.float32)
    g, bt = np.ones(width, np.float32), np.zeros(width, np.float32)
    if impl == "fastbp":
        out, m, s = np.empty_like(x), np.empty_like(g), np.empty_like(g)
        rm, rv = np.zeros_like(g), np.ones_like(g)
        dx, dg, db = np.empty_like(x), np.empty_like(g), np.empty_like(g)

        def fb():
            K.batchnorm_forward(out, m, s, x, g, bt, rm, rv, True, act="tanh")
            K.batchnorm_backward(dx, dg, db, out, x, g, m, s, True)
        benchmark(fb)
    else:
        bn = R.BatchNorm(g, bt, "tanh")
        benchmark(lambda: bn.backward(bn.forward(x)))


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("batch", BATCHES)
def bench_dropout(benchmark, rng, impl, batch):
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    out = np.empty_like(x)
    if impl == "fastbp":
        benchmark(K.dropout_forward, out, x, 0.5, 1, 2)
    else:
        r = np.random.default_rng(1)
        benchmark(lambda: x * (r.random(x.shape) >= 0.5) / 0.5)


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def bench_optimizer_flat(benchmark, rng, impl, opt):
    P = 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    p, g = rng.standard_normal(P).astype(np.float32), rng.standard_normal(P).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    if impl == "fastbp":
        if opt == "sgd":
            benchmark(K.sgd, p, g, 1e-3)
        else:
            benchmark(K.adam, p, g, m, v, 1)
    else:
        if opt == "sgd":
            benchmark(R.sgd_step, p, g, 1e-3)
        else:
            benchmark(R.adam_step, p, g, m, v, 1)


@pytest.mark.parametrize("impl", ["fastbp", "reference"])
@pytest.mark.parametrize("batch", [32, 128, 512, 2048])
def bench_training_step(benchmark, rng, impl, batch):
    step = _fastbp_step(batch, rng) if impl == "fastbp" else _reference_step(batch, rng)
    benchmark(step)


def shuffled_batches(X, y, B, seed=0):
    """A user's streaming source: a new shuffle per epoch, each batch gathered as it is asked for."""
    rng = np.random.default_rng(seed)

    def epoch():
        order = rng.permutation(X.shape[0])
        for s in range(0, X.shape[0], B):
            idx = order[s:s + B]
            yield X[idx], y[idx]
    return epoch


@pytest.mark.parametrize("source", ["arrays", "stream"])
def bench_fashion_mnist_epoch(benchmark, source):
    """One epoch at batch 128 from in-memory arrays, or streamed from a generator (target: the
    stream within 10% of the arrays)."""
    from fastbp import data
    (X, y), _ = data.load_fashion_mnist()
    m = fastbp.Model([fastbp.Dense(512, "tanh"), fastbp.Dense(512, "tanh"), fastbp.Dense(10)])
    m.fit(X[:512], y[:512], epochs=1)
    if source == "arrays":
        benchmark.pedantic(lambda: m.fit(X, y, epochs=1, batch_size=128, lr=0.1), rounds=3, iterations=1)
    else:
        stream = shuffled_batches(X, y, 128)
        benchmark.pedantic(lambda: m.fit(stream, epochs=1, lr=0.1), rounds=3, iterations=1)


@pytest.mark.parametrize("peer", ["torch", "jax"])
@pytest.mark.parametrize("batch", [32, 128, 512])
def bench_peer_training_step(benchmark, rng, peer, batch):
    """The same step in PyTorch eager and JAX jit, in this process (``fastbp bench`` times them in
    their own processes, which is the fairer figure: here their pools share the cores with numba's)."""
    pytest.importorskip(peer, reason=f"{peer} not installed")
    X = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    if peer == "torch":
        import torch
        torch.set_num_threads(fastbp.get_num_threads())
        net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                                  torch.nn.Tanh(), torch.nn.Linear(512, 10))
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        Xt, yt, lossf = torch.from_numpy(X), torch.from_numpy(y), torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            lossf(net(Xt), yt).backward()
            opt.step()
        benchmark(step)
    else:
        import jax
        import jax.numpy as jnp
        sizes = (784, 512, 512, 10)
        ps = [(jnp.asarray((rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)), jnp.zeros(f))
              for d, f in zip(sizes[:-1], sizes[1:])]

        def loss(ps, X, y):
            h = X
            for i, (W, b) in enumerate(ps):
                h = h @ W + b
                h = jnp.tanh(h) if i < 2 else h
            return -jnp.mean(jax.nn.log_softmax(h)[jnp.arange(h.shape[0]), y])
        step = jax.jit(lambda ps, X, y: jax.tree_util.tree_map(lambda p, d: p - 0.01 * d, ps,
                                                               jax.grad(loss)(ps, X, y)))
        Xj, yj = jnp.asarray(X), jnp.asarray(y)
        state = {"ps": step(ps, Xj, yj)}

        def run():
            state["ps"] = step(state["ps"], Xj, yj)
            jax.block_until_ready(state["ps"])
        benchmark(run)
