"""Weight initializers.  Each takes (rng, fan_in, fan_out, dtype) and returns a (fan_in, fan_out) array."""
import warnings

import numpy as np


def xavier_uniform(rng, d, f, dtype):
    lim = np.sqrt(6.0 / (d + f))
    return rng.uniform(-lim, lim, (d, f)).astype(dtype)


def xavier_normal(rng, d, f, dtype):
    return (rng.standard_normal((d, f)) * np.sqrt(2.0 / (d + f))).astype(dtype)


def he_uniform(rng, d, f, dtype):
    lim = np.sqrt(6.0 / d)
    return rng.uniform(-lim, lim, (d, f)).astype(dtype)


def he_normal(rng, d, f, dtype):
    return (rng.standard_normal((d, f)) * np.sqrt(2.0 / d)).astype(dtype)


def zeros(rng, d, f, dtype):
    warnings.warn("zeros init leaves hidden units symmetric: every unit of a layer gets the same "
                  "gradient and they never differentiate", UserWarning, stacklevel=4)
    return np.zeros((d, f), dtype)


def normal(std):
    def init(rng, d, f, dtype):
        return (rng.standard_normal((d, f)) * std).astype(dtype)
    return init


INITIALIZERS = {
    "xavier_uniform": xavier_uniform, "glorot_uniform": xavier_uniform, "xavier": xavier_uniform,
    "xavier_normal": xavier_normal, "glorot_normal": xavier_normal,
    "he_uniform": he_uniform, "kaiming_uniform": he_uniform,
    "he_normal": he_normal, "kaiming_normal": he_normal, "zeros": zeros,
}


def get(name, activation):
    """``name`` is a key of INITIALIZERS, 'normal:STD', or 'auto' (he for relu-like, xavier otherwise)."""
    if name == "auto":
        return he_uniform if activation in ("relu", "leaky_relu") else xavier_uniform
    if isinstance(name, str) and name.startswith("normal:"):
        std = float(name.split(":", 1)[1])
        if not std > 0:
            raise ValueError(f"init: normal std must be > 0, got {std}")
        return normal(std)
    if name not in INITIALIZERS:
        raise ValueError(f"init: unknown initializer {name!r}; expected one of "
                         f"{sorted(INITIALIZERS)} or 'normal:STD'")
    return INITIALIZERS[name]
