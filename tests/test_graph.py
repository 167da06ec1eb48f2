"""Graphs of layers (fastbp.graph): a skip over two layers, a concatenation and tensors read by
several layers give the gradients of an independent float64 autograd (PyTorch, 1e-12) and of
central differences; chains written as graphs train bitwise like lists; files, copies, exports,
distributed training and bad graphs."""
import copy
import pickle

import numpy as np
import pytest

import fastbp
from fastbp import Add, BatchNorm, Concat, Dense, Dropout, Input, Model
from fastbp.distributed import simulate


def skip_and_concat(dtype="float64", seed=1):
    """x -> h = tanh; r = sigmoid(relu(h)); s = tanh(h + r) (a skip over 2 layers);
    c = [s | tanh(x)]; c2 = leaky_relu([c | h]) (h read three times, x twice) -> logits."""
    x = Input(6)
    h = Dense(8, "tanh")(x)
    r = Dense(8, "sigmoid")(Dense(8, "relu")(h))
    s = Add("tanh")(h, r)
    c = Concat()(s, Dense(5, "tanh")(x))
    c2 = Concat("leaky_relu")(c, h)
    return Model(Dense(3)(c2), dtype=dtype, seed=seed)


@pytest.fixture
def xy(rng):
    return rng.standard_normal((40, 6)), rng.integers(0, 3, 40)


def test_the_graph_is_flattened_in_topological_order():
    m = skip_and_concat()
    assert m.wiring == [(-1,), (0,), (1,), (0, 2), (-1,), (3, 4), (5, 0), (6,)]
    m.build(6)
    assert [op.out_dim for op in m.layers] == [8, 8, 8, 8, 5, 13, 21, 3]
    assert "Add" in m.summary() and "Concat" in m.summary()


def test_gradients_equal_central_differences(xy):
    X, y = xy
    errs = fastbp.gradcheck(skip_and_concat(), X, y)
    assert max(errs.values()) < 1e-5, errs
    same_twice = Model(Dense(3)(Add()(*[Dense(4, "tanh")(Input(6))] * 2)), dtype="float64")
    errs = fastbp.gradcheck(same_twice, X, y)
    assert max(errs.values()) < 1e-5, errs


def _torch_grads(m, X, y):
    """Loss and parameter gradients of the same graph in PyTorch float64 (weights copied)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed (CI installs the CPU build)")
    F = torch.nn.functional
    acts = {"identity": lambda t: t, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
            "leaky_relu": lambda t: F.leaky_relu(t, 0.01)}
    params = {}
    outs = {-1: torch.tensor(X)}
    for op, srcs in zip(m.layers, m.wiring):
        xs = [outs[s] for s in srcs]
        kind = type(op.spec).__name__
        if kind == "Dense":
            W = torch.tensor(op.W, requires_grad=True)
            b = torch.tensor(op.b, requires_grad=True)
            params[op.index] = (W, b)
            z, act = xs[0] @ W + b, op.spec.activation
        elif kind == "Add":
            z, act = xs[0] + xs[1], op.spec.activation
        else:
            z, act = torch.cat(xs, dim=1), op.spec.activation
        outs[op.index] = acts[act](z)
    loss = F.cross_entropy(outs[len(m.layers) - 1], torch.tensor(y))
    loss.backward()
    return float(loss.detach()), {i: (W.grad.numpy(), b.grad.numpy()) for i, (W, b) in params.items()}


def test_gradients_equal_pytorch_float64_autograd(xy):
    X, y = xy
    m = skip_and_concat()
    m.build(6)
    loss, grads = m.loss_and_grads(X, y)
    ref_loss, ref = _torch_grads(m, X, y)
    assert abs(loss - ref_loss) < 1e-12
    for i, (gW, gb) in ref.items():
        np.testing.assert_allclose(m.layers[i].dW, gW, rtol=0, atol=1e-12)
        np.testing.assert_allclose(m.layers[i].db, gb, rtol=0, atol=1e-12)


def test_a_chain_written_as_a_graph_trains_bitwise_like_the_list(rng):
    X = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    layers = [Dense(16, "relu"), Dense(8, "tanh"), Dense(3)]
    a = Model(layers, seed=3)
    node = Input(5)
    for spec in layers:
        node = spec(node)
    b = Model(node, seed=3)
    for m in (a, b):
        m.fit(X, y, epochs=2, batch_size=16, optimizer="adam")
    np.testing.assert_array_equal(a.params, b.params)


def test_a_graph_trains_and_round_trips_through_files_and_copies(xy, tmp_path):
    X, y = xy
    m = skip_and_concat(dtype="float32")
    h = m.fit(X, y, epochs=30, batch_size=8, optimizer="adam", lr=0.01)
    assert h["loss"][-1] < 0.6 * h["loss"][0]
    p = m.predict_proba(X)
    m.save(tmp_path / "g.npz")
    back = Model.load(tmp_path / "g.npz")
    assert back.wiring == m.wiring
    np.testing.assert_array_equal(back.predict_proba(X), p)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert c.wiring == m.wiring
        np.testing.assert_array_equal(c.predict_proba(X), p)
    chain = Model([Dense(8, "tanh"), Dense(3)], input_dim=6)
    chain.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match="different architecture"):
        m.fit(X, y, epochs=1, checkpoint=str(tmp_path / "c.npz"))


def test_exports_refuse_graphs_by_name(xy, tmp_path):
    from fastbp import interop
    m = skip_and_concat()
    m.build(6)
    for call in (lambda: interop.state_dict(m), lambda: interop.portable(m)):
        with pytest.raises(ValueError, match=r"layer 3 \(Add\(tanh\)\): graph layers \(Add, Concat\) have no "
                                             r"PyTorch/ONNX form"):
            call()


def test_distributed_training_of_a_graph_equals_single_process(xy):
    X, y = xy
    x = Input(6)
    h = Dense(8, "tanh")(x)
    d = Dense(8)(h)
    b = BatchNorm("relu")(d)          # a batch-coupled op whose input has another reader (Add)
    out = Dense(3)(Concat()(Dropout(0.2)(b), Add()(d, b)))
    ref = Model(out, dtype="float64", seed=2)
    ref.fit(X, y, epochs=2, batch_size=20, optimizer="sgd", lr=0.05)

    def run(comm):
        m = Model(out, dtype="float64", seed=2)
        m.fit(X, y, epochs=2, batch_size=20, optimizer="sgd", lr=0.05, distributed=comm)
        return m.params.copy()
    for params in simulate(2, run):
        np.testing.assert_allclose(params, ref.params, rtol=0, atol=1e-12)


@pytest.mark.parametrize("build, message", [
    (lambda: Add()(Dense(4)(Input(3))), "Add: expected 2 inputs, got 1"),
    (lambda: Dense(4)(Dense(4)), "Dense: input 0: expected a node"),
    (lambda: Model(Dense(2)(Add()(Dense(4)(Input(3)), Dense(5)(Input(3))))), "exactly one fastbp.Input, found 2"),
    (lambda: Model(Add()(*[Dense(4)(Input(3))] * 2), input_dim=5), "input_dim: 5 differs from the graph's Input(3)"),
    (lambda: Model([Dense(4), Add(), Dense(2)], input_dim=3), "Add joins two branches; build the model from a graph"),
    (lambda: Model([Dense(4), Dense(2)], input_dim=3, wiring=[(-1,), (-1,)]), "the output of layer 0"),
    (lambda: Model([Dense(4), Dense(2)], input_dim=3, wiring=[(1,), (0,)]), "must be earlier layers"),
])
def test_bad_graphs_are_refused_with_one_clear_line(build, message):
    with pytest.raises((ValueError, TypeError)) as e:
        build()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_add_needs_inputs_of_one_width():
    x = Input(3)
    with pytest.raises(ValueError, match=r"Add needs inputs of one width, got widths \(4, 5\)"):
        Model(Dense(2)(Add()(Dense(4)(x), Dense(5)(x))))
