"""Learning-rate schedules: multipliers of the optimizer's base rate, evaluated at every step.

A schedule is an object with ``multiplier(step, epoch)`` (``step``: 1-based count of training
steps of the model, ``epoch``: 0-based) and, optionally, ``observe(logs)`` called at the end of
each epoch with that epoch's logs (``loss``, ``val_loss``, ...).  ``fit(schedule=...)`` also takes
a plain callable ``epoch -> multiplier`` (applied per epoch).  Every value is checked where it is
used: a NaN, infinite or negative rate stops ``fit`` with an error naming the schedule.

    WarmUp(500, then=Cosine(10_000))      linear warm-up over 500 steps, then cosine decay
    StepDecay(every=2, gamma=0.5, unit="epoch")
    ReduceOnPlateau("val_loss", factor=0.5, patience=2)
"""
import math

from .kernels.validate import integer, scalar


class Schedule:
    def multiplier(self, step, epoch):
        raise NotImplementedError

    def observe(self, logs):
        """End-of-epoch hook (ReduceOnPlateau uses it)."""

    def __call__(self, epoch):   # usable where an epoch -> multiplier function is expected
        return self.multiplier(0, epoch)


class PerEpoch(Schedule):
    """Wraps a callable ``epoch -> multiplier``."""

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"schedule: expected a Schedule or a callable epoch -> multiplier, got {fn!r}")
        self.fn = fn

    def multiplier(self, step, epoch):
        return self.fn(epoch)


def as_schedule(s):
    return s if isinstance(s, Schedule) else PerEpoch(s)


class Constant(Schedule):
    def multiplier(self, step, epoch):
        return 1.0


class WarmUp(Schedule):
    """Linear warm-up from ``start`` to 1 over ``steps`` steps, then ``then`` (counted from the end
    of the warm-up) or constant."""

    def __init__(self, steps, then=None, start=0.0):
        self.steps = integer("WarmUp.steps", steps, 1)
        self.start = scalar("WarmUp.start", start, lo=0, hi=1)
        if then is not None and not isinstance(then, Schedule):
            raise TypeError(f"WarmUp.then: expected a Schedule, got {type(then).__name__}")
        self.then = then

    def multiplier(self, step, epoch):
        if step <= self.steps:
            return self.start + (1 - self.start) * step / self.steps
        return self.then.multiplier(step - self.steps, epoch) if self.then is not None else 1.0

    def observe(self, logs):
        if self.then is not None:
            self.then.observe(logs)


class StepDecay(Schedule):
    """Multiply by ``gamma`` every ``every`` steps (or epochs with ``unit="epoch"``)."""

    def __init__(self, every, gamma=0.1, unit="step"):
        self.every = integer("StepDecay.every", every, 1)
        self.gamma = scalar("StepDecay.gamma", gamma, lo=0, lo_open=True)
        if unit not in ("step", "epoch"):
            raise ValueError(f"StepDecay.unit: expected 'step' or 'epoch', got {unit!r}")
        self.unit = unit

    def multiplier(self, step, epoch):
        k = (max(step - 1, 0) if self.unit == "step" else epoch) // self.every
        return self.gamma ** k


class Cosine(Schedule):
    """Cosine decay from 1 to ``min_ratio`` over ``total`` steps (or epochs), then ``min_ratio``."""

    def __init__(self, total, min_ratio=0.0, unit="step"):
        self.total = integer("Cosine.total", total, 1)
        self.min_ratio = scalar("Cosine.min_ratio", min_ratio, lo=0, hi=1)
        if unit not in ("step", "epoch"):
            raise ValueError(f"Cosine.unit: expected 'step' or 'epoch', got {unit!r}")
        self.unit = unit

    def multiplier(self, step, epoch):
        t = min(max(step - 1, 0) if self.unit == "step" else epoch, self.total)
        return self.min_ratio + (1 - self.min_ratio) * (1 + math.cos(math.pi * t / self.total)) / 2


class ReduceOnPlateau(Schedule):
    """Multiply the rate by ``factor`` when ``monitor`` has not improved by ``min_delta`` for
    ``patience`` epochs (``mode``: min, max or auto: max for accuracies); never below ``min_ratio``."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=2, min_delta=0.0, min_ratio=0.0, mode="auto"):
        self.monitor = monitor
        self.factor = scalar("ReduceOnPlateau.factor", factor, lo=0, hi=1, lo_open=True, hi_open=True)
        self.patience = integer("ReduceOnPlateau.patience", patience, 0)
        self.min_delta = scalar("ReduceOnPlateau.min_delta", min_delta, lo=0)
        self.min_ratio = scalar("ReduceOnPlateau.min_ratio", min_ratio, lo=0, hi=1)
        self.sign = _mode_sign(mode, monitor, "ReduceOnPlateau.mode")
        self.value, self.best, self.wait = 1.0, math.inf, 0

    def multiplier(self, step, epoch):
        return self.value

    def observe(self, logs):
        v = monitored(logs, self.monitor, "ReduceOnPlateau.monitor") * self.sign
        if v < self.best - self.min_delta:
            self.best, self.wait = v, 0
            return
        self.wait += 1
        if self.wait > self.patience:
            self.value, self.wait = max(self.value * self.factor, self.min_ratio), 0


def _mode_sign(mode, monitor, name):
    if mode == "auto":
        return -1.0 if "acc" in str(monitor) else 1.0
    if mode not in ("min", "max"):
        raise ValueError(f"{name}: expected 'min', 'max' or 'auto', got {mode!r}")
    return 1.0 if mode == "min" else -1.0


def monitored(logs, key, name):
    v = logs.get(key)
    if v is None:
        have = sorted(k for k, x in logs.items() if isinstance(x, (int, float)) and x is not None)
        raise ValueError(f"{name}: {key!r} is not in the epoch logs (have {have}; val_* needs validation_data "
                         f"or validation_split)")
    return float(v)


# --- the earlier per-epoch functions (epoch -> multiplier), kept for existing code ---------------
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
