"""Layer specifications: plain descriptions that a Model compiles into kernel calls."""
from dataclasses import dataclass

from .kernels.activation import CODE_NAMES, act_code


@dataclass(frozen=True)
class Dense:
    """Fully connected layer ``act(x @ W + b)`` with ``units`` outputs."""
    units: int
    activation: str = "identity"
    alpha: float = 0.01          # leaky_relu slope
    init: str = "auto"           # auto: xavier_uniform for tanh/sigmoid/identity, he_uniform for relu
    bias: bool = True

    def __post_init__(self):
        if not isinstance(self.units, int) or isinstance(self.units, bool) or self.units < 1:
            raise ValueError(f"Dense.units: expected a positive int, got {self.units!r}")
        object.__setattr__(self, "activation", CODE_NAMES[act_code(self.activation, "Dense.activation")])


@dataclass(frozen=True)
class Activation:
    """Standalone activation; fused into the preceding Dense/BatchNorm when that has none."""
    name: str
    alpha: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "name", CODE_NAMES[act_code(self.name, "Activation.name")])


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalization over the batch axis, followed by an optional fused activation."""
    activation: str = "identity"
    alpha: float = 0.01
    momentum: float = 0.1
    eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "activation", CODE_NAMES[act_code(self.activation, "BatchNorm.activation")])
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"BatchNorm.momentum: expected a value in [0, 1], got {self.momentum!r}")
        if not self.eps > 0:
            raise ValueError(f"BatchNorm.eps: expected > 0, got {self.eps!r}")


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout: drops each unit with probability ``p`` in training, identity in eval."""
    p: float

    def __post_init__(self):
        if not 0 <= self.p < 1:
            raise ValueError(f"Dropout.p: expected a probability in [0, 1), got {self.p!r}")


def spec_to_dict(spec):
    return {"type": type(spec).__name__, **spec.__dict__}


def spec_from_dict(d):
    kinds = {"Dense": Dense, "Activation": Activation, "BatchNorm": BatchNorm, "Dropout": Dropout}
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"unknown layer type {kind!r} in architecture")
    return kinds[kind](**d)
