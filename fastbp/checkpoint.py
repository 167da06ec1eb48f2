"""Checkpoints: an .npz of arrays plus JSON metadata (no pickle), written atomically; or a
``.safetensors`` file (PyTorch-named weights from fastbp.interop, ``optimizer.*`` state, the
same JSON metadata under the ``fastbp`` key).

Arrays: ``params`` (the flat buffer), ``state{i}_{name}`` (op i's running statistics),
``opt_{name}`` (optimizer state), ``meta_json`` (architecture, counters, optimizer, history).
The same content is what ``pickle``/``copy.deepcopy`` of a model carry (``to_state``).
"""
import glob
import io
import json
import os
import socket
import tempfile
import time
import zipfile

import numpy as np

from . import layers as L
from . import optim as O
from .kernels import count_nonfinite

FORMAT_VERSION = 2
_STALE_SECONDS = 3600
SUFFIXES = (".npz", ".safetensors")


def architecture(model):
    a = {"format": FORMAT_VERSION, "layers": [L.spec_to_dict(s) for s in model.specs], "loss": model.loss,
         "dtype": model.dtype.name, "input_dim": model.input_dim, "seed": model.seed}
    if model.wiring is not None:
        a["wiring"] = [list(w) for w in model.wiring]     # a graph: the inputs of each layer
    return a


def _arrays(model, copy):
    c = np.copy if copy else (lambda a: a)
    arrays = {"params": c(model.params)}
    for op in model.plan.ops:
        for name, a in op.state.items():
            arrays[f"state{op.index}_{name}"] = c(a)
    for k, v in model.opt_state.items():
        arrays[f"opt_{k}"] = c(v)
    return arrays


def _meta(model):
    return {"architecture": architecture(model), "step_count": model.step_count, "epochs_done": model.epochs_done,
            "optimizer": O.to_dict(model.optimizer) if model.optimizer is not None else None,
            "history": model.history, "training": model.training}


def _temp_prefix():
    """Temp files carry the writer's host and pid, so a later save can tell a dead writer's file."""
    return f".fastbp-{socket.gethostname()}-{os.getpid()}-"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder):
    """Remove temp files of killed saves in ``folder``: those of a process of this host that is gone,
    and any older than an hour (another host's, or an older fastbp's unnamed ones)."""
    now, host = time.time(), socket.gethostname()
    for old in glob.glob(os.path.join(folder, ".fastbp-*.tmp")):
        parts = os.path.basename(old)[len(".fastbp-"):].rsplit("-", 2)
        try:
            dead = len(parts) == 3 and parts[0] == host and not _alive(int(parts[1]))
        except ValueError:
            dead = False
        try:
            if dead or now - os.path.getmtime(old) > _STALE_SECONDS:
                os.unlink(old)
        except OSError:
            pass


def write_atomic(path, data, kind):
    """Write bytes to ``path`` atomically (temp file in the same folder, fsync, rename); first
    removes temp files of earlier killed writes (``remove_stale_temps``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: folder {folder} does not exist")
    remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), suffix=kind + ".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def is_safetensors(path):
    return os.fspath(path).endswith(".safetensors")


def save(model, path):
    """Write ``path`` atomically: ``.safetensors`` (PyTorch-named weights, see fastbp.interop,
    plus ``optimizer.*`` state and JSON metadata) or else the npz format.  Refuses non-finite
    parameters; removes stale temp files of earlier killed saves."""
    if not model.built:
        raise ValueError("save: the model has no parameters yet (call fit or build first)")
    if not os.fspath(path).lower().endswith(SUFFIXES):
        raise ValueError(f"path {os.fspath(path)!r}: expected a file ending in .npz or .safetensors")
    if count_nonfinite(model.params):
        raise ValueError("save: the parameters contain NaN or inf; refusing to write a broken checkpoint")
    meta = json.dumps(_meta(model))
    if is_safetensors(path):
        from safetensors.numpy import save as st_save

        from .interop import state_dict
        tensors = state_dict(model)
        tensors.update({f"optimizer.{k}": np.ascontiguousarray(v) for k, v in model.opt_state.items()})
        return write_atomic(path, st_save(tensors, metadata={"fastbp": meta}), ".safetensors")
    arrays = _arrays(model, copy=False)
    arrays["meta_json"] = np.frombuffer(meta.encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_atomic(path, buf.getbuffer(), ".npz")


def _read_safetensors(path):
    """(arrays in the npz layout, meta) from a .safetensors file: the weights are checked by
    loading them into a model of the stored architecture."""
    from safetensors import SafetensorError, safe_open

    from .interop import load_state_dict
    try:
        with safe_open(path, framework="np") as f:
            meta = json.loads((f.metadata() or {})["fastbp"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a valid fastbp safetensors file ({type(e).__name__}: {e})") from None
    m = _model_from(meta, path)
    weights = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    load_state_dict(m, weights, source=path)
    arrays = _arrays(m, copy=False)
    arrays.update({f"opt_{k[len('optimizer.'):]}": v for k, v in tensors.items() if k.startswith("optimizer.")})
    return arrays, meta


def read(path):
    """(arrays, meta) of a checkpoint; ValueError naming the file on anything malformed."""
    if is_safetensors(path):
        return _read_safetensors(path)
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":   # every npz is a zip archive
            raise ValueError(f"{path}: not a fastbp checkpoint (expected an .npz or .safetensors file written by "
                             f"Model.save)")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta_json").tobytes().decode())
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, NotImplementedError, UnicodeDecodeError,
            RuntimeError,   # zipfile: "File ... is encrypted" (a flipped flag bit)
            json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid fastbp checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("architecture"), dict) or "params" not in arrays:
        raise ValueError(f"{path}: not a valid fastbp checkpoint (missing metadata or params)")
    return arrays, meta


def _model_from(meta, path, cls=None):
    a = meta.get("architecture") if isinstance(meta, dict) else None
    if not isinstance(a, dict):
        raise ValueError(f"{path}: not a valid fastbp checkpoint (missing architecture metadata)")
    if a.get("format") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: unsupported checkpoint format {a.get('format')!r}")
    if cls is None:
        from .model import Model as cls
    try:
        specs = [L.spec_from_dict(d) for d in a["layers"]]
        return cls(specs, loss=a["loss"], input_dim=a["input_dim"], dtype=a["dtype"], seed=a["seed"],
                   wiring=a.get("wiring"))
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: invalid architecture in checkpoint ({type(e).__name__}: {e})") from None


def load(cls, path):
    arrays, meta = read(path)
    m = _model_from(meta, path, cls)
    apply(m, arrays, meta, path)
    return m


def restore(model, path):
    """Load ``path`` into an existing model of the same architecture."""
    arrays, meta = read(path)
    keys = ("layers", "loss", "dtype", "input_dim", "wiring")
    mine, theirs = architecture(model), meta["architecture"]
    if {k: mine.get(k) for k in keys} != {k: theirs.get(k) for k in keys}:
        raise ValueError(f"{path}: checkpoint is for a different architecture "
                         f"({theirs.get('layers')}, input_dim={theirs.get('input_dim')}) than this model")
    apply(model, arrays, meta, path)


def _put(path, name, dst, src):
    if not isinstance(src, np.ndarray) or src.shape != dst.shape or src.dtype.kind != "f":
        raise ValueError(f"{path}: array {name!r} has shape {getattr(src, 'shape', None)} "
                         f"{getattr(src, 'dtype', None)}, expected {dst.shape} {dst.dtype}")
    if count_nonfinite(np.ascontiguousarray(src, dst.dtype).reshape(-1)):
        raise ValueError(f"{path}: array {name!r} contains NaN or inf")
    dst[...] = src


def apply(model, arrays, meta, path):
    """Copy checked arrays and counters into ``model`` (all checks before any write)."""
    p = arrays["params"]
    if p.shape != model.params.shape or p.dtype != model.params.dtype:
        raise ValueError(f"{path}: parameter buffer has shape {p.shape} {p.dtype}, "
                         f"expected {model.params.shape} {model.params.dtype} for this architecture")
    try:
        opt = O.from_dict(meta["optimizer"]) if meta.get("optimizer") else None
        counters = int(meta.get("step_count", 0)), int(meta.get("epochs_done", 0))
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: invalid optimizer or counters in checkpoint ({type(e).__name__}: {e})") from None
    opt_state = opt.init_state(model.params.size, model.dtype) if opt is not None else {}
    staged = [("params", model.params, p)]
    for op in model.plan.ops:
        for name, a in op.state.items():
            key = f"state{op.index}_{name}"
            if key not in arrays and f"bn{op.index}_{name}" in arrays:   # format 1's name
                key = f"bn{op.index}_{name}"
            if key not in arrays:
                raise ValueError(f"{path}: missing array {key!r} ({type(op).__name__} {op.index}'s {name})")
            staged.append((key, a, arrays[key]))
    for k, a in opt_state.items():
        if a.size and f"opt_{k}" not in arrays:
            raise ValueError(f"{path}: missing optimizer state {'opt_' + k!r} of {type(opt).__name__}")
        if f"opt_{k}" in arrays:
            staged.append((f"opt_{k}", a, arrays[f"opt_{k}"]))
    nonneg = {f"opt_{k}" for k in getattr(opt, "nonnegative_state", ())} | {
        f"{pre}{op.index}_{k}" for op in model.plan.ops for k in getattr(op, "nonnegative_state", ())
        for pre in ("state", "bn")}
    for name, dst, src in staged:   # check everything first: nothing is half-written
        _put(path, name, np.empty_like(dst), src)
        if name in nonneg and np.any(np.asarray(src) < 0):
            raise ValueError(f"{path}: array {name!r} has negative entries (it holds variances or second moments, "
                             f"which cannot be negative)")
    for _, dst, src in staged:
        dst[...] = src
    model.step_count, model.epochs_done = counters
    model.history = meta.get("history")
    model.optimizer, model.opt_state = opt, opt_state


def to_state(model):
    """Everything a copy needs (for pickle / deepcopy): plain data and numpy arrays."""
    state = {"specs": model.specs, "loss": model.loss, "dtype": model.dtype.name, "seed": model.seed,
             "training": model.training, "precision": model.precision, "wiring": model.wiring}
    if model.built:
        state.update(input_dim=model.input_dim, arrays=_arrays(model, copy=True), meta=json.loads(json.dumps(
            _meta(model))))
    return state


def from_state(model, state):
    model.__init__(state["specs"], loss=state["loss"], input_dim=state.get("input_dim"), dtype=state["dtype"],
                   seed=state["seed"], precision=state.get("precision", "fp32"), wiring=state.get("wiring"))
    if "arrays" in state:
        apply(model, state["arrays"], state["meta"], "<copy>")
    model.training = state["training"]
