"""Entries declare their arguments by name (fastbp.signature): a misdeclared or miswired op fails
when its program is built, naming the op and the tensor, before any kernel runs."""
import numpy as np
import pytest

import fastbp
from fastbp import layers as L
from fastbp import losses, ops, optim
from fastbp.signature import A1, A2, Float, Int, Signature

SIGNATURES = [v for m in (ops, losses, optim) for v in vars(m).values() if isinstance(v, Signature)]


def test_every_entry_is_declared_and_every_declaration_has_its_entry():
    entries = {v for m in (ops, losses, optim) for k, v in vars(m).items() if k.endswith("_entry")}
    assert {s.fn for s in SIGNATURES} == entries
    for s in SIGNATURES:
        ints = [k for k, f in s.fields.items() if f.kind != "float"]
        floats = [k for k, f in s.fields.items() if f.kind == "float"]
        assert [getattr(s.at, k) for k in ints] == list(range(len(ints)))     # ia in declaration order
        assert [getattr(s.at, k) for k in floats] == list(range(len(floats)))
        assert s.name in repr(s)


class _WS:
    """The part of a workspace ``bind`` uses."""

    def __init__(self, dtype=np.float32):
        self.x = np.zeros((4, 3), dtype)
        self.arrays = [None]

    def slot(self, a):
        if a is None:
            return 0
        self.arrays.append(a)
        return len(self.arrays) - 1


def _fn(*a):
    return 0.0


SIG = Signature("toy", x=A2("input", "N", "D"), out=A2("output", "N", "F"), W=A2("param", "D", "F"),
                b=A1("param", "F", optional=True), act=Int(), alpha=Float())
SIG.entry(_fn)


def _args(**over):
    a = dict(x=np.zeros((4, 3), np.float32), out=np.zeros((4, 5), np.float32), W=np.zeros((3, 5), np.float32),
             b=None, act=1, alpha=0.5)
    a.update(over)
    return a


def test_bind_packs_by_name_in_the_declared_order():
    ws = _WS()
    args = _args(b=np.zeros(5, np.float32))
    fn, ia, fa = SIG.bind(ws, "layer 0 (Toy)", **args)
    assert fn is _fn and fa == [0.5] and ia[SIG.at.act] == 1
    for k in ("x", "out", "W", "b"):
        assert ws.arrays[ia[getattr(SIG.at, k)]] is args[k]
    fn, ia, fa = SIG.bind(_WS(), "layer 0 (Toy)", **_args())      # an optional array left out: slot 0
    assert ia[SIG.at.b] == 0


@pytest.mark.parametrize("over, message", [
    ({"W": np.zeros((5, 3), np.float32)}, "param 'W': expected shape (D, F) with D = 3 from an earlier argument, "
                                          "got (5, 3)"),
    ({"out": np.zeros((2, 5), np.float32)}, "output 'out': expected shape (N, F) with N = 4"),
    ({"W": np.zeros(15, np.float32)}, "param 'W': expected a 2-D array of the model's dtype (float32), got float32 "
                                      "array of 1 dims"),
    ({"x": np.zeros((4, 3), np.float64)},
     "input 'x': expected a 2-D array of the model's dtype (float32), got float64"),
    ({"x": None}, "input 'x': expected a 2-D array of the model's dtype, got None (it is not optional)"),
    ({"act": 1.5}, "'act': expected an int, got float"),
    ({"alpha": "0.1"}, "'alpha': expected a real number, got str"),
])
def test_a_miswired_argument_is_named(over, message):
    with pytest.raises(ValueError) as e:
        SIG.bind(_WS(), "layer 2 (Toy)", **_args(**over))
    assert str(e.value).startswith("layer 2 (Toy): toy entry: ") and message in str(e.value)


def test_a_missing_or_unknown_name_is_named():
    a = _args()
    del a["W"]
    with pytest.raises(ValueError, match=r"layer 1 \(Toy\): toy entry: not given: W; not declared: w "):
        SIG.bind(_WS(), "layer 1 (Toy)", **a, w=np.zeros((3, 5), np.float32))


class BrokenDense(L.Dense):
    """A layer whose op hands its forward the transposed weights: a wiring bug."""


def test_a_deliberately_broken_op_fails_at_program_build_naming_op_and_tensor(monkeypatch, rng):
    class BrokenOp(ops.DenseOp):
        spec_type = BrokenDense

        def forward_entry(self, io, update_stats):
            return ops.DENSE_FORWARD.bind(io.ws, self.where, x=io.x, out=io.out,
                                          W=np.ascontiguousarray(self.params["W"].T), b=self.params.get("b"),
                                          act=self.act, alpha=self.alpha, rows_from=0)
    monkeypatch.setitem(ops.OPS, BrokenDense, BrokenOp)
    X = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    m = fastbp.Model([fastbp.Dense(8, "tanh"), BrokenDense(4), fastbp.Dense(3)], seed=0)
    m.build(6)
    before = m.params.copy()
    with pytest.raises(ValueError) as e:
        m.fit(X, y, epochs=1, batch_size=8)
    np.testing.assert_array_equal(m.params, before)       # no kernel ran: nothing was trained
    assert str(e.value).startswith("layer 1 (BrokenDense): dense forward entry: param 'W': expected shape (D, F) "
                                   "with D = 8 from an earlier argument, got (4, 8)"), str(e.value)
