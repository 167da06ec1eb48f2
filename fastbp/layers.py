"""Layer specifications: what the user writes.  Plain frozen descriptions, validated on
creation; ``fastbp.ops`` compiles each into an op.

A list of specs is a chain.  Calling a spec on earlier nodes builds a graph (``fastbp.graph``):
``h = Dense(64, "tanh")(x)``, ``Add("tanh")(h, r)``, ``Concat()(a, b)``."""
from dataclasses import dataclass

from .kernels.names import CODE_NAMES, act_code, check_alpha
from .kernels.validate import flag, real, scalar


class _Layer:
    """Calling a spec on nodes of a graph gives the node of its output (``fastbp.graph``)."""
    inputs = 1     # how many inputs the layer takes

    def __call__(self, *nodes):
        from .graph import Node
        return Node(self, nodes)


@dataclass(frozen=True)
class Dense(_Layer):
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
        object.__setattr__(self, "alpha", check_alpha(self.alpha, "Dense.alpha"))
        object.__setattr__(self, "bias", flag("Dense.bias", self.bias))
        if not isinstance(self.init, str):
            raise TypeError(f"Dense.init: expected an initializer name, got {self.init!r}")


@dataclass(frozen=True)
class Activation(_Layer):
    """Standalone activation; fused into the preceding Dense/BatchNorm when that has none."""
    name: str
    alpha: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, "name", CODE_NAMES[act_code(self.name, "Activation.name")])
        object.__setattr__(self, "alpha", check_alpha(self.alpha, "Activation.alpha"))


@dataclass(frozen=True)
class BatchNorm(_Layer):
    """Batch normalization over the batch axis, followed by an optional fused activation."""
    activation: str = "identity"
    alpha: float = 0.01
    momentum: float = 0.1
    eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "activation", CODE_NAMES[act_code(self.activation, "BatchNorm.activation")])
        object.__setattr__(self, "alpha", check_alpha(self.alpha, "BatchNorm.alpha"))
        object.__setattr__(self, "momentum", scalar("BatchNorm.momentum", self.momentum, lo=0, hi=1))
        object.__setattr__(self, "eps", scalar("BatchNorm.eps", self.eps, lo=0, lo_open=True))


@dataclass(frozen=True)
class Dropout(_Layer):
    """Inverted dropout: drops each unit with probability ``p`` in training, identity in eval."""
    p: float

    def __post_init__(self):
        p = real("Dropout.p", self.p)
        if not 0 <= p < 1:
            raise ValueError(f"Dropout.p: expected a probability in [0, 1), got {self.p!r}")
        object.__setattr__(self, "p", p)


@dataclass(frozen=True)
class _Join(_Layer):
    """Two inputs joined, then an optional activation."""
    activation: str = "identity"
    alpha: float = 0.01
    inputs = 2

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "activation", CODE_NAMES[act_code(self.activation, f"{name}.activation")])
        object.__setattr__(self, "alpha", check_alpha(self.alpha, f"{name}.alpha"))


@dataclass(frozen=True)
class Add(_Join):
    """Sum of two inputs of equal width (a residual connection), then an optional activation."""


@dataclass(frozen=True)
class Concat(_Join):
    """The columns of two inputs side by side, then an optional activation."""


SPECS = (Dense, Activation, BatchNorm, Dropout, Add, Concat)


def spec_to_dict(spec):
    return {"type": type(spec).__name__, **spec.__dict__}


def spec_from_dict(d):
    kinds = {k.__name__: k for k in SPECS}
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in kinds:
        raise ValueError(f"unknown layer type {kind!r} in architecture")
    try:
        return kinds[kind](**d)
    except TypeError as e:
        raise ValueError(f"invalid {kind} layer in architecture: {e}") from None
