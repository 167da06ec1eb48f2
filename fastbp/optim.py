"""Optimizers for Model.fit (learning-rate schedules: fastbp.schedules).

Each optimizer contributes one entry to the training program: one fused kernel launch
over the model's flat parameter buffer (``fastbp.kernels.optim``).  Plain SGD (no
momentum) is instead fused into the layers' backward launches by the plan, so it costs
no pass of its own.  An optimizer owns only its hyperparameters; its state buffers are
made by ``init_state`` and kept by the model.
"""
from dataclasses import asdict, dataclass, replace

import numpy as np

from .kernels import adam_launch, jit, sgd_launch
from .kernels import validate as _check
from .signature import A1, Float, Int, Signature

_FLAT = dict(params=A1("param", "P"), grads=A1("grad", "P"))
SGD_UPDATE = Signature("sgd", **_FLAT, velocity=A1("state", "*"), nesterov=Int("flag"), momentum=Float(),
                       weight_decay=Float())
ADAM_UPDATE = Signature("adam", **_FLAT, m=A1("state", "P"), v=A1("state", "P"), decoupled=Int("flag: AdamW"),
                        beta1=Float(), beta2=Float(), eps=Float(), weight_decay=Float())
_SG, _AD = SGD_UPDATE.at, ADAM_UPDATE.at


@SGD_UPDATE.entry
@jit
def sgd_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    A = _SG
    sgd_launch(a1[ia[A.params]], a1[ia[A.grads]], a1[ia[A.velocity]], lr, fa[A.momentum], ia[A.nesterov] != 0,
               fa[A.weight_decay], nt)
    return 0.0


@ADAM_UPDATE.entry
@jit
def adam_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    A = _AD
    adam_launch(a1[ia[A.params]], a1[ia[A.grads]], a1[ia[A.m]], a1[ia[A.v]], float(t), lr, fa[A.beta1], fa[A.beta2],
                fa[A.eps], fa[A.weight_decay], ia[A.decoupled] != 0, nt)
    return 0.0


def check_lr(lr, name="lr"):
    return _check.scalar(name, lr, lo=0)


@dataclass
class SGD:
    """SGD with optional momentum / Nesterov and (coupled) weight decay."""
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        self.lr = check_lr(self.lr, "SGD.lr")
        self.momentum = _check.scalar("SGD.momentum", self.momentum, lo=0, hi=1, hi_open=True)
        self.weight_decay = _check.scalar("SGD.weight_decay", self.weight_decay, lo=0)
        self.nesterov = _check.flag("SGD.nesterov", self.nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD.nesterov: requires momentum > 0")

    @property
    def fusable(self):
        """True when the update is p -= lr (g + wd p): the plan folds it into the backward GEMMs."""
        return self.momentum == 0

    def init_state(self, P, dtype):
        return {"velocity": np.zeros(P if self.momentum else 0, dtype)}

    def entry(self, ws, params, grads, state):
        return SGD_UPDATE.bind(ws, "the optimizer (SGD)", params=params, grads=grads, velocity=state["velocity"],
                               nesterov=self.nesterov, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass
class Adam:
    """Adam (PyTorch's conventions); weight decay added to the gradient."""
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled = False
    fusable = False
    nonnegative_state = ("v",)   # second moments: a checkpoint with a negative one is refused

    def __post_init__(self):
        n = type(self).__name__
        self.lr = check_lr(self.lr, f"{n}.lr")
        self.beta1 = _check.scalar(f"{n}.beta1", self.beta1, lo=0, hi=1, hi_open=True)
        self.beta2 = _check.scalar(f"{n}.beta2", self.beta2, lo=0, hi=1, hi_open=True)
        self.eps = _check.scalar(f"{n}.eps", self.eps, lo=0, lo_open=True)
        self.weight_decay = _check.scalar(f"{n}.weight_decay", self.weight_decay, lo=0)

    def init_state(self, P, dtype):
        return {"m": np.zeros(P, dtype), "v": np.zeros(P, dtype)}

    def entry(self, ws, params, grads, state):
        if params.dtype.type(self.eps) == 0:
            raise ValueError(f"{type(self).__name__}.eps: {self.eps!r} underflows to 0 in {params.dtype}")
        return ADAM_UPDATE.bind(ws, f"the optimizer ({type(self).__name__})", params=params, grads=grads,
                                m=state["m"], v=state["v"], decoupled=self.decoupled, beta1=self.beta1,
                                beta2=self.beta2, eps=self.eps, weight_decay=self.weight_decay)


@dataclass
class AdamW(Adam):
    """Adam with decoupled weight decay (p -= lr wd p before the Adam step)."""
    weight_decay: float = 1e-2
    decoupled = True


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make(opt, lr=None):
    """A *new* optimizer from a name or instance (the instance is copied, never mutated);
    ``lr`` (if given) overrides its rate."""
    if isinstance(opt, str):
        key = opt.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {opt!r}; expected one of {sorted(OPTIMIZERS)}")
        opt = OPTIMIZERS[key]()
    elif not isinstance(opt, (SGD, Adam)):
        raise TypeError(f"optimizer: expected a name or an SGD/Adam/AdamW instance, got {type(opt).__name__}")
    return replace(opt) if lr is None else replace(opt, lr=check_lr(lr))


def to_dict(opt):
    return {"type": type(opt).__name__, **asdict(opt)}


def from_dict(d):
    d = dict(d)
    kind = d.pop("type")
    return {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[kind](**d)


# learning-rate schedules live in fastbp.schedules; the per-epoch functions are re-exported here
from .schedules import SCHEDULES, constant, cosine_lr, exponential_lr, step_lr  # noqa: E402,F401
