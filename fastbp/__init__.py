"""fastbp: Numba-accelerated backpropagation for MLPs on multicore CPUs.

Importing fastbp (or any of its modules that do not run kernels, e.g. ``fastbp.layers``) loads
no numba, BLAS or SciPy and changes no library's settings: names are imported on first use.
"""
import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "Model": "model", "Dense": "layers", "Activation": "layers", "BatchNorm": "layers", "Dropout": "layers",
    "Add": "layers", "Concat": "layers", "Input": "graph",
    "SGD": "optim", "Adam": "optim", "AdamW": "optim", "gradcheck": "gradient_check",
    "set_num_threads": "_threads", "get_num_threads": "_threads", "threading_info": "_threads",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
