"""Activation names and codes, and their checks, in plain Python (no numba import)."""
import numpy as np

from .validate import real

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH = 0, 1, 2, 3, 4
NAMES = {"identity": IDENTITY, "linear": IDENTITY, "none": IDENTITY, "relu": RELU,
         "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID, "tanh": TANH}
CODE_NAMES = {IDENTITY: "identity", RELU: "relu", LEAKY_RELU: "leaky_relu", SIGMOID: "sigmoid", TANH: "tanh"}


def act_code(act, name="act"):
    """Activation name or code -> code; raises ValueError/TypeError naming ``name``."""
    if act is None:
        return IDENTITY
    if isinstance(act, str):
        key = act.strip().lower()
        if key in NAMES:
            return NAMES[key]
    elif isinstance(act, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an activation name or code, got {act!r}")
    elif isinstance(act, (int, np.integer)) and int(act) in CODE_NAMES:
        return int(act)
    raise ValueError(f"{name}: unknown activation {act!r}; expected one of {sorted(set(NAMES))}")


def check_alpha(alpha, name="alpha"):
    """leaky_relu's slope: a finite real >= 0 (the derivative is taken from the output's sign)."""
    a = real(name, alpha)
    if a < 0:
        raise ValueError(f"{name}: leaky_relu slope must be >= 0 (derivatives are computed from the "
                         f"output's sign), got {alpha!r}")
    return a
