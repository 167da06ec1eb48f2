"""Entry signatures: what each jitted step entry reads and writes, declared by name.

An entry (see ``fastbp.program``) gets its own arguments as two small arrays, ``ia`` (int64:
list slots of arrays, codes, flags) and ``fa`` (float64).  Nobody writes those positions by hand.
The module that defines an entry declares its arguments once, by name, with the list each array
lives in, its role and its shape in named dimensions::

    DENSE_FORWARD = Signature("dense forward",
                              x=A2("input", "N", "D"), out=A2("output", "N", "F"),
                              W=A2("param", "D", "F"), b=A1("param", "F", optional=True),
                              act=Int("activation code"), alpha=Float("leaky_relu slope"))
    F = DENSE_FORWARD.at            # positions by name: F.x, F.out, ... (frozen into the entry)

    @DENSE_FORWARD.entry
    @jit
    def dense_forward_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
        dense_forward_launch(a2[ia[F.out]], a2[ia[F.x]], ...)

and the op hands the plan its arguments by name::

    DENSE_FORWARD.bind(ws, "layer 0 (Dense)", x=..., out=..., W=..., b=None, act=2, alpha=0.0)

``bind`` checks every name against the declaration (none missing, none unknown), each array's
list (2-D / 1-D of the model's dtype, or 1-D int64), and that the named dimensions agree across
the arrays (``W`` must be (D, F) with the D of ``x`` and the F of ``out``), then registers the
arrays in the workspace's lists and packs ``ia`` / ``fa`` in the declared order.  A misdeclared
or miswired op fails there, naming the op and the tensor, before any kernel runs.

Keep a declaration in the module of its entry: numba's disk cache keys an entry on its own
module's source, and the positions are compiled into the entry as constants.
"""
from collections import namedtuple

import numpy as np

#: the list each kind of argument lives in
KINDS = {"a2": "a 2-D array of the model's dtype", "a1": "a 1-D array of the model's dtype",
         "ai": "a 1-D int64 array", "int": "an int", "float": "a real number"}


class Field:
    """One declared argument: ``kind`` (a key of KINDS), ``role`` (what it is, for messages and
    readers: input, output, param, grad, state, scratch, delta...), ``dims`` (names or ints; '*'
    for any extent) and whether an array may be absent (None: an empty array is passed)."""

    def __init__(self, kind, role="", dims=(), optional=False):
        self.kind, self.role, self.dims, self.optional = kind, role, tuple(dims), bool(optional)


def A2(role, *dims, optional=False):
    """A 2-D array of the model's dtype (``a2`` list)."""
    return Field("a2", role, dims, optional)


def A1(role, *dims, optional=False):
    """A 1-D array of the model's dtype (``a1`` list)."""
    return Field("a1", role, dims, optional)


def AI(role, *dims):
    """A 1-D int64 array (``ai`` list)."""
    return Field("ai", role, dims)


def Int(role=""):
    """An int (or bool) packed into ``ia``."""
    return Field("int", role)


def Float(role=""):
    """A real number packed into ``fa``."""
    return Field("float", role)


class Signature:
    """The declared arguments of one entry, in ``ia`` / ``fa`` order (declaration order)."""

    def __init__(self, name, **fields):
        self.name, self.fields = name, fields
        ints = [k for k, f in fields.items() if f.kind != "float"]
        floats = [k for k, f in fields.items() if f.kind == "float"]
        for k, f in fields.items():
            if f.kind not in KINDS:
                raise ValueError(f"{name}: field {k!r}: unknown kind {f.kind!r}")
        pos = {k: i for i, k in enumerate(ints)}
        pos.update({k: i for i, k in enumerate(floats)})
        self.ints, self.floats = ints, floats
        self.at = namedtuple(name.title().replace(" ", "").replace("-", "") + "Args", list(fields))(
            **{k: pos[k] for k in fields})
        self.fn = None

    def entry(self, fn):
        """Decorator: ``fn`` is the entry this signature describes."""
        self.fn = fn
        return fn

    def __repr__(self):
        parts = [f"{k}: {f.kind}{'(' + ', '.join(map(str, f.dims)) + ')' if f.dims else ''}"
                 f"{'?' if f.optional else ''}" for k, f in self.fields.items()]
        return f"Signature({self.name}: {', '.join(parts)})"

    def bind(self, ws, where, **values):
        """(entry, ia, fa) for the plan: ``values`` by name, checked against the declaration, arrays
        registered in ``ws``'s lists.  ``where`` names the op for messages."""
        if self.fn is None:
            raise RuntimeError(f"{self.name}: no entry is declared with this signature")
        missing = [k for k in self.fields if k not in values]
        unknown = [k for k in values if k not in self.fields]
        if missing or unknown:
            what = "; ".join(([f"not given: {', '.join(missing)}"] if missing else []) +
                             ([f"not declared: {', '.join(unknown)}"] if unknown else []))
            raise ValueError(f"{where}: {self.name} entry: {what} (declared: {', '.join(self.fields)})")
        dims = {}
        for k, f in self.fields.items():
            self._check(where, k, f, values[k], ws.x.dtype, dims)
        ia = [self._pack_int(ws, values[k]) for k in self.ints]
        fa = [float(values[k]) for k in self.floats]
        return self.fn, ia, fa

    def _check(self, where, name, f, v, dtype, dims):
        def bad(what):
            return ValueError(f"{where}: {self.name} entry: {f.role or 'argument'} {name!r}: {what}")
        if f.kind == "int":
            if not isinstance(v, (bool, int, np.integer)):
                raise bad(f"expected {KINDS['int']}, got {type(v).__name__}")
            return
        if f.kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad(f"expected {KINDS['float']}, got {type(v).__name__}")
            return
        if v is None:
            if not f.optional:
                raise bad(f"expected {KINDS[f.kind]}, got None (it is not optional)")
            return
        want_dtype, ndim = (np.dtype(np.int64), 1) if f.kind == "ai" else (dtype, 2 if f.kind == "a2" else 1)
        if not isinstance(v, np.ndarray) or v.ndim != ndim or v.dtype != want_dtype:
            got = f"{v.dtype} array of {v.ndim} dims" if isinstance(v, np.ndarray) else type(v).__name__
            raise bad(f"expected {KINDS[f.kind]} ({want_dtype}), got {got}")
        if f.dims and len(f.dims) != ndim:
            raise bad(f"declared with {len(f.dims)} dims for {KINDS[f.kind]}")
        for d, n in zip(f.dims, v.shape):
            if d == "*":
                continue
            want = d if isinstance(d, int) else dims.setdefault(d, n)
            if n != want:
                seen = f"{d} = {want} from an earlier argument" if not isinstance(d, int) else f"{want}"
                raise bad(f"expected shape ({', '.join(map(str, f.dims))}) with {seen}, got {v.shape}")

    @staticmethod
    def _pack_int(ws, v):
        if isinstance(v, np.ndarray) or v is None:
            return ws.slot(v)
        return int(v)
