"""Optimizers and learning-rate schedules for Model.fit.

Each optimizer is one fused kernel launch over the model's flat parameter
buffer (``fastbp.kernels.optim``).  Plain SGD (no momentum) is additionally
fused into the dense layers' weight-gradient GEMMs by the Model, so it costs no
pass of its own.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from .kernels import optim as K


@dataclass
class SGD:
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    state_names = ("velocity",)

    def __post_init__(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD.nesterov: requires momentum > 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"SGD.momentum: expected a value in [0, 1), got {self.momentum!r}")

    @property
    def fusable(self):
        """True when the update is p -= lr (g + wd p): the Model folds it into the GEMMs."""
        return self.momentum == 0

    def init_state(self, P, dtype):
        return {"velocity": np.zeros(P if self.momentum else 0, dtype)}

    def step(self, params, grads, state, lr, t, nchunks):
        K._sgd(params, grads, state["velocity"] if self.momentum else params[:0], lr, self.momentum,
               self.nesterov, self.weight_decay, nchunks)


@dataclass
class Adam:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled = False
    fusable = False

    def init_state(self, P, dtype):
        return {"m": np.zeros(P, dtype), "v": np.zeros(P, dtype)}

    def step(self, params, grads, state, lr, t, nchunks):
        K._adam(params, grads, state["m"], state["v"], float(t), lr, self.beta1, self.beta2, self.eps,
                self.weight_decay, self.decoupled, nchunks)


@dataclass
class AdamW(Adam):
    weight_decay: float = 1e-2
    decoupled = True


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make(opt, lr=None):
    """An optimizer from a name or instance; ``lr`` (if given) overrides its rate."""
    if isinstance(opt, str):
        key = opt.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {opt!r}; expected one of {sorted(OPTIMIZERS)}")
        opt = OPTIMIZERS[key]()
    elif not isinstance(opt, (SGD, Adam)):
        raise TypeError(f"optimizer: expected a name or an SGD/Adam/AdamW instance, got {type(opt).__name__}")
    if lr is not None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr: expected a finite number >= 0, got {lr!r}")
        opt.lr = float(lr)
    return opt


def to_dict(opt):
    return {"type": type(opt).__name__, **asdict(opt)}


def from_dict(d):
    d = dict(d)
    kind = d.pop("type")
    return {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[kind](**d)


# --- learning-rate schedules: epoch (0-based) -> multiplier of the base lr -----------------

def constant():
    return lambda epoch: 1.0


def step_lr(step_size, gamma=0.1):
    if step_size < 1:
        raise ValueError(f"step_size: expected >= 1, got {step_size!r}")
    return lambda epoch: gamma ** (epoch // step_size)


def exponential_lr(gamma):
    return lambda epoch: gamma ** epoch


def cosine_lr(t_max, eta_min_ratio=0.0):
    if t_max < 1:
        raise ValueError(f"t_max: expected >= 1, got {t_max!r}")
    return lambda epoch: eta_min_ratio + (1 - eta_min_ratio) * (1 + math.cos(math.pi * min(epoch, t_max) / t_max)) / 2


SCHEDULES = {"constant": constant, "step": step_lr, "exponential": exponential_lr, "cosine": cosine_lr}
