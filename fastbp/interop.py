"""Exchange with other tools: PyTorch-style state dicts, ``torch.nn`` modules, ONNX.

Every op describes itself in a small vocabulary (``Op.portable``): ``linear``, ``batchnorm``,
``dropout`` and the activation names.  A model is the concatenation of its ops' lists, and that
list *is* an ``nn.Sequential``: entry ``i`` is module ``i``, its tensors are named as the module
names them (``"0.weight"`` of shape (out, in), ``"1.running_var"`` ...).  So

    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})

just works, and the other way round.  Nothing here imports torch or onnx until asked.

Round trips copy the numbers exactly (bitwise); predictions agree to float32 round-off (the
tests use 1e-5 relative on probabilities, 1e-4 absolute on logits).
"""
import numpy as np

from . import layers as L
from .inputs import as_array
from .kernels import count_nonfinite

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
_TORCH_ACT = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyReLU"}
_ONNX_ACT = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu"}


def portable(model):
    """The model as a list of (kind, tensors, options); tensors are views into the model."""
    return [entry for op in model._need_plan().ops for entry in op.portable()]


def state_dict(model):
    """{name: numpy copy} named and laid out as PyTorch's ``nn.Sequential`` of ``Linear``,
    ``BatchNorm1d``, ``Dropout`` and activation modules (BatchNorm1d's ``num_batches_tracked``
    is the model's step count)."""
    out = {}
    for i, (kind, tensors, _) in enumerate(portable(model)):
        for name, a in tensors.items():
            out[f"{i}.{name}"] = np.array(a, order="C")
        if kind == "batchnorm":
            out[f"{i}.num_batches_tracked"] = np.array(model.step_count, dtype=np.int64)
    return out


def load_state_dict(model, sd, strict=True, source="state_dict"):
    """Copy a state dict (numpy arrays or torch tensors, as ``state_dict`` names them) into
    ``model``.  Every key, shape and value is checked before anything is written; errors name
    ``source`` and the key.  ``strict=False`` ignores keys the model does not have."""
    if not hasattr(sd, "keys"):
        raise TypeError(f"{source}: expected a mapping of names to arrays, got {type(sd).__name__}")
    staged, expected = [], set()
    for i, (kind, tensors, _) in enumerate(portable(model)):
        if kind == "batchnorm":
            expected.add(f"{i}.num_batches_tracked")
        for name, dst in tensors.items():
            key = f"{i}.{name}"
            expected.add(key)
            if key not in sd:
                raise ValueError(f"{source}: missing {key!r} (module {i}, {kind})")
            src = as_array(sd[key], f"{source}: {key!r}")
            if src.shape != dst.shape or src.dtype.kind != "f":
                raise ValueError(f"{source}: {key!r} has shape {src.shape} {src.dtype}, expected {dst.shape} "
                                 f"floating point (module {i}, {kind})")
            src = np.ascontiguousarray(src, dtype=dst.dtype)
            if count_nonfinite(src.reshape(-1)):
                raise ValueError(f"{source}: {key!r} contains NaN or inf")
            if name == "running_var" and src.min() < 0:
                raise ValueError(f"{source}: {key!r} has negative entries (a variance must be >= 0)")
            staged.append((dst, src))
    extra = sorted(set(sd.keys()) - expected)
    if strict and extra:
        raise ValueError(f"{source}: unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''} "
                         f"(not in this architecture; pass strict=False to ignore them)")
    for dst, src in staged:
        dst[...] = src
    return model


def specs_from_portable(kinds):
    """[(kind, shapes, options)] -> fastbp layer specs (an activation joins the layer before it)."""
    specs = []
    for i, (kind, shapes, opt) in enumerate(kinds):
        if kind in ACTIVATIONS:
            prev = specs[-1] if specs else None
            alpha = float(opt.get("alpha", 0.01))
            if isinstance(prev, L.Dense) and prev.activation == "identity":
                specs[-1] = L.Dense(prev.units, kind, alpha=alpha, bias=prev.bias)
            elif isinstance(prev, L.BatchNorm) and prev.activation == "identity":
                specs[-1] = L.BatchNorm(kind, alpha=alpha, momentum=prev.momentum, eps=prev.eps)
            else:
                specs.append(L.Activation(kind, alpha=alpha))
        elif kind == "linear":
            specs.append(L.Dense(int(shapes["weight"][0]), bias="bias" in shapes))
        elif kind == "batchnorm":
            specs.append(L.BatchNorm(momentum=opt.get("momentum", 0.1), eps=opt.get("eps", 1e-5)))
        elif kind == "dropout":
            specs.append(L.Dropout(opt["p"]))
        else:
            raise ValueError(f"module {i}: no fastbp layer for {kind!r}")
    return specs


def _input_dim(kinds, source):
    for kind, shapes, _ in kinds:
        if "weight" in shapes:
            w = shapes["weight"]
            return int(w[1]) if kind == "linear" else int(w[0])
    raise ValueError(f"{source}: no Linear or BatchNorm1d weight to infer the input width from")


def from_state_dict(sd, layers, loss="softmax_ce", dtype=None, seed=0, input_dim=None, cls=None):
    """A new ``cls`` model with ``layers`` whose weights come from ``sd``; ``input_dim`` and
    ``dtype`` default to what the tensors say."""
    if not hasattr(sd, "keys"):
        raise TypeError(f"state_dict: expected a mapping of names to arrays, got {type(sd).__name__}")
    arrays = {k: as_array(v, f"state_dict: {k!r}") for k, v in sd.items()}
    if input_dim is None:
        first = min((k for k in arrays if k.split(".")[0].isdigit() and k.endswith(".weight")),
                    key=lambda k: int(k.split(".")[0]), default=None)
        if first is None:
            raise ValueError("state_dict: no '<i>.weight' entry to infer input_dim from; pass input_dim")
        w = arrays[first]
        input_dim = int(w.shape[1]) if w.ndim == 2 else int(w.shape[0])
    if dtype is None:
        kinds = {a.dtype for a in arrays.values() if a.dtype.kind == "f"}
        dtype = np.float64 if kinds == {np.dtype(np.float64)} else np.float32
    m = _model_class(cls)(layers, loss=loss, input_dim=input_dim, dtype=dtype, seed=seed)
    return load_state_dict(m, arrays, source="state_dict")


def _model_class(cls):
    if cls is None:
        from .model import Model as cls
    return cls


# ----------------------------------------------------------------------------- torch
def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("this needs PyTorch: pip install torch (CPU build is enough)") from None
    return torch


def to_torch(model):
    """An ``nn.Sequential`` computing the same function (in the model's dtype and mode)."""
    torch = _torch()
    nn = torch.nn
    mods = []
    for kind, t, opt in portable(model):
        if kind == "linear":
            out_f, in_f = t["weight"].shape
            mods.append(nn.Linear(in_f, out_f, bias="bias" in t))
        elif kind == "batchnorm":
            mods.append(nn.BatchNorm1d(t["weight"].shape[0], eps=opt["eps"], momentum=opt["momentum"]))
        elif kind == "dropout":
            mods.append(nn.Dropout(opt["p"]))
        elif kind == "leaky_relu":
            mods.append(nn.LeakyReLU(negative_slope=opt["alpha"]))
        else:
            mods.append(getattr(nn, _TORCH_ACT[kind])())
    seq = nn.Sequential(*mods).to(torch.float64 if model.dtype == np.float64 else torch.float32)
    seq.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(model).items()})
    return seq.train(model.training)


def _torch_portable(module):
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    flat = []

    def walk(m, where):
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                walk(child, f"{where}.{name}" if where else name)
        else:
            flat.append((where or "module", m))
    walk(module, "")
    out = []
    for where, m in flat:
        if isinstance(m, nn.Linear):
            out.append(("linear", {"weight": m.weight, **({"bias": m.bias} if m.bias is not None else {})}, {}))
        elif isinstance(m, nn.BatchNorm1d):
            if not (m.affine and m.track_running_stats) or m.momentum is None:
                raise ValueError(f"{where}: BatchNorm1d needs affine=True, track_running_stats=True and a "
                                 "numeric momentum to map onto fastbp.BatchNorm")
            out.append(("batchnorm", {"weight": m.weight, "bias": m.bias, "running_mean": m.running_mean,
                                      "running_var": m.running_var}, {"eps": m.eps, "momentum": m.momentum}))
        elif isinstance(m, nn.Dropout):
            out.append(("dropout", {}, {"p": m.p}))
        elif isinstance(m, nn.LeakyReLU):
            out.append(("leaky_relu", {}, {"alpha": m.negative_slope}))
        elif isinstance(m, nn.Identity):
            continue
        else:
            kind = next((k for k, cls in _TORCH_ACT.items() if type(m) is getattr(nn, cls)), None)
            if kind is None:
                raise ValueError(f"{where}: {type(m).__name__} has no fastbp layer (supported: Linear, "
                                 "BatchNorm1d, Dropout, ReLU, LeakyReLU, Sigmoid, Tanh, Identity)")
            out.append((kind, {}, {}))
    return out


def from_torch(module, loss="softmax_ce", dtype=None, seed=0, cls=None):
    """A fastbp model equal to an ``nn.Sequential`` of supported modules (weights copied)."""
    entries = _torch_portable(module)
    kinds = [(k, {n: tuple(v.shape) for n, v in t.items()}, o) for k, t, o in entries]
    if not entries:
        raise ValueError("module: no layers")
    specs = specs_from_portable(kinds)
    tensors = [t for _, t, _ in entries]
    if dtype is None:
        dts = {str(v.dtype) for t in tensors for v in t.values()}
        dtype = np.float64 if dts == {"torch.float64"} else np.float32
    m = _model_class(cls)(specs, loss=loss, input_dim=_input_dim(kinds, "module"), dtype=dtype, seed=seed)
    sd = {f"{i}.{n}": v for i, t in enumerate(tensors) for n, v in t.items()}
    load_state_dict(m, sd, strict=True, source="module")
    m.training = bool(module.training)
    return m


# ----------------------------------------------------------------------------- ONNX
def to_onnx(model, path, output="logits", opset=17):
    """Write an ONNX graph of the model in eval mode (dropout is the identity, BatchNorm uses
    its running statistics).  ``output``: ``"logits"`` (the last layer) or ``"proba"`` (what
    ``predict_proba`` returns).  Input ``x`` has shape (N, input_dim); written atomically."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError("ONNX export needs onnx: pip install 'fastbp[onnx]'") from None
    if output not in ("logits", "proba"):
        raise ValueError(f"output: expected 'logits' or 'proba', got {output!r}")
    elem = TensorProto.DOUBLE if model.dtype == np.float64 else TensorProto.FLOAT
    nodes, inits, cur = [], [], "x"
    for i, (kind, t, opt) in enumerate(portable(model)):
        names = {}
        for n, a in t.items():
            names[n] = f"m{i}.{n}"
            inits.append(numpy_helper.from_array(np.array(a, order="C"), names[n]))
        nxt = f"h{i}"
        if kind == "linear":
            ins = [cur, names["weight"]] + ([names["bias"]] if "bias" in names else [])
            nodes.append(helper.make_node("Gemm", ins, [nxt], transB=1))
        elif kind == "batchnorm":
            nodes.append(helper.make_node("BatchNormalization", [cur, names["weight"], names["bias"],
                                                                 names["running_mean"], names["running_var"]],
                                          [nxt], epsilon=float(opt["eps"])))
        elif kind == "dropout":
            continue
        elif kind == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", [cur], [nxt], alpha=float(opt["alpha"])))
        else:
            nodes.append(helper.make_node(_ONNX_ACT[kind], [cur], [nxt]))
        cur = nxt
    if output == "proba":
        head = model.plan.loss.name
        if head == "softmax_ce":
            nodes.append(helper.make_node("Softmax", [cur], ["head"], axis=1))
            cur = "head"
        elif head == "sigmoid_bce":
            nodes.append(helper.make_node("Sigmoid", [cur], ["head"]))
            cur = "head"
    nodes.append(helper.make_node("Identity", [cur], [output]))
    graph = helper.make_graph(nodes, "fastbp", [helper.make_tensor_value_info("x", elem, ["N", model.input_dim])],
                              [helper.make_tensor_value_info(output, elem, ["N", model.output_dim])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fastbp")
    onnx.checker.check_model(proto)
    from .checkpoint import write_atomic
    return write_atomic(path, proto.SerializeToString(), ".onnx")


__all__ = ["portable", "state_dict", "load_state_dict", "from_state_dict", "to_torch", "from_torch", "to_onnx"]
