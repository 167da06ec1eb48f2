"""Losses: one unit per kind.  Each owns its target checks, its value-and-gradient entry,
probabilities, predictions and its rule for counting a prediction as correct.

The loss entry writes ``deltas[-1]`` = dL/d(pre-activation output of the last op): it takes the
gradient with respect to the last op's output and applies that op's activation derivative.
It also stores ``[loss, correct]`` in the workspace's ``stats``.
"""
import numpy as np

from .kernels import (
    IDENTITY,
    activation_backward_launch,
    count_argmax_correct,
    count_nonfinite,
    count_threshold_correct,
    jit,
    mse_launch,
    sigmoid_bce_launch,
    softmax_ce_launch,
)
from .kernels.loss import check_int_labels
from .signature import A2, AI, Float, Int, Signature

LOSSES = {}


def register(cls):
    LOSSES[cls.name] = cls
    return cls


def get(name):
    if isinstance(name, Loss):
        return name
    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {tuple(LOSSES)}, got {name!r}")
    return LOSSES[name]()


class Loss:
    name = None
    needs_logits = False     # the last layer must have no activation (the loss applies it)
    has_accuracy = True
    entries = ()             # the jitted entries ``entry`` returns (see Op.entries)

    def check_targets(self, y, n, C, dtype, name="y"):
        raise NotImplementedError

    def target_buffer(self, N, C, dtype):
        return np.empty((N, C), dtype)

    def entry(self, io, last, want_grad, count):
        raise NotImplementedError

    def proba(self, z):
        return z

    def predict(self, p):
        return p

    def labels(self, z):
        """What ``Model.predict`` returns, from the last layer's outputs ``z``."""
        return self.predict(self.proba(z).astype(z.dtype, copy=False))

    def __repr__(self):
        return repr(self.name)


def _float_targets(y, n, C, dtype, name):
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected numeric targets, got {y.dtype}")
    if y.ndim == 1 and C == 1:
        y = y[:, None]
    if y.shape != (n, C):
        raise ValueError(f"{name}: expected shape ({n}, {C}), got {y.shape}")
    y = np.ascontiguousarray(y, dtype=dtype)
    if count_nonfinite(y.reshape(-1)):
        raise ValueError(f"{name}: contains NaN or inf")
    return y


_FLAGS = dict(want_grad=Int("flag: write the gradient"), count=Int("flag: count correct rows"))
SOFTMAX_CE = Signature("softmax cross-entropy", z=A2("input (logits)", "N", "C"), dz=A2("delta", "N", "C"),
                       y=AI("target labels", "N"), **_FLAGS)
MSE_LOSS = Signature("mse", p=A2("input (predictions)", "N", "C"), dp=A2("delta", "N", "C"),
                     y=A2("targets", "N", "C"), **_FLAGS, last_act=Int("last op's activation"),
                     last_alpha=Float("last op's slope"))
SIGMOID_BCE = Signature("sigmoid binary cross-entropy", z=A2("input (logits)", "N", "C"), dz=A2("delta", "N", "C"),
                        y=A2("targets", "N", "C"), **_FLAGS)
_SC, _MS, _SB = SOFTMAX_CE.at, MSE_LOSS.at, SIGMOID_BCE.at


@SOFTMAX_CE.entry
@jit
def softmax_ce_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    A = _SC
    z, d, y = a2[ia[A.z]], a2[ia[A.dz]], ai[ia[A.y]]
    loss = softmax_ce_launch(d, z, y, ia[A.want_grad] != 0, af[0], nt)
    stats = af[1]
    stats[0] = loss
    stats[1] = count_argmax_correct(z, y) if ia[A.count] != 0 else 0
    return loss


@register
class SoftmaxCE(Loss):
    """Mean softmax cross-entropy over rows; int class labels; the last layer gives logits."""
    name = "softmax_ce"
    needs_logits = True
    entries = (softmax_ce_entry,)

    def check_targets(self, y, n, C, dtype, name="y"):
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"{name}: expected 1-D integer class labels, got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integer class labels, got {y.dtype}")
        if y.shape[0] != n:
            raise ValueError(f"{name}: expected {n} labels (one per row of X), got {y.shape[0]}")
        y = np.ascontiguousarray(y, dtype=np.int64)
        check_int_labels(y, n, C, name)
        return y

    def target_buffer(self, N, C, dtype):
        return np.empty(N, np.int64)

    def entry(self, io, last, want_grad, count):
        return SOFTMAX_CE.bind(io.ws, "the loss", z=io.out, dz=io.delta, y=io.ws.y, want_grad=want_grad, count=count)

    def proba(self, z):
        z = z.astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, p):
        return p.argmax(axis=1)

    def labels(self, z):
        # the largest logit: softmax keeps the order and the float32 probabilities of two close
        # logits can tie (argmax of those picks the first; the accuracy count uses the logits too)
        return z.argmax(axis=1)


@MSE_LOSS.entry
@jit
def mse_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    A = _MS
    p, d, y = a2[ia[A.p]], a2[ia[A.dp]], a2[ia[A.y]]
    loss = mse_launch(d, p, y, ia[A.want_grad] != 0, af[0], nt)
    if ia[A.want_grad] != 0 and ia[A.last_act] != IDENTITY:
        activation_backward_launch(d, d, p, ia[A.last_act], fa[A.last_alpha], nt)
    stats = af[1]
    stats[0] = loss
    stats[1] = 0
    return loss


@register
class MSE(Loss):
    """Mean squared error over all N*C elements; float targets (N, C)."""
    name = "mse"
    has_accuracy = False
    entries = (mse_entry,)

    def check_targets(self, y, n, C, dtype, name="y"):
        return _float_targets(y, n, C, dtype, name)

    def entry(self, io, last, want_grad, count):
        return MSE_LOSS.bind(io.ws, "the loss", p=io.out, dp=io.delta, y=io.ws.y, want_grad=want_grad, count=count,
                             last_act=last.act, last_alpha=last.alpha)


@SIGMOID_BCE.entry
@jit
def sigmoid_bce_entry(a2, a1, ai, af, ia, fa, t, lr, training, nt):
    A = _SB
    z, d, y = a2[ia[A.z]], a2[ia[A.dz]], a2[ia[A.y]]
    loss = sigmoid_bce_launch(d, z, y, ia[A.want_grad] != 0, af[0], nt)
    stats = af[1]
    stats[0] = loss
    stats[1] = count_threshold_correct(z, y) if ia[A.count] != 0 else 0
    return loss


@register
class SigmoidBCE(Loss):
    """Mean binary cross-entropy of sigmoid(logits) over all elements; targets in [0, 1]."""
    name = "sigmoid_bce"
    needs_logits = True
    entries = (sigmoid_bce_entry,)

    def check_targets(self, y, n, C, dtype, name="y"):
        y = _float_targets(y, n, C, dtype, name)
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"{name}: sigmoid_bce targets must lie in [0, 1]")
        return y

    def entry(self, io, last, want_grad, count):
        return SIGMOID_BCE.bind(io.ws, "the loss", z=io.out, dz=io.delta, y=io.ws.y, want_grad=want_grad, count=count)

    def proba(self, z):
        return 1 / (1 + np.exp(-z.astype(np.float64)))

    def predict(self, p):
        return (p >= 0.5).astype(np.int64)
