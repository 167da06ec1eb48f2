"""fastbp.kernels: Numba CPU kernels for backpropagation.

Kernels are pairs of free functions, outputs first, then inputs, then options.
Two documented levels, one naming convention:

* **Checked wrappers** (``dense_forward``, ``dense_backward``, ``softmax_cross_entropy``,
  ``sgd``, ...): plain Python.  They validate every argument (dtype, byte order, shape,
  contiguity, finiteness, overlap, scalar ranges) and raise ``TypeError``/``ValueError``
  naming the argument before any kernel runs, so nothing is written on error.
* **Jitted launches** (``dense_forward_launch``, ``dense_backward_launch``, ...): one
  ``parallel=True`` region each, same semantics, *no checks*; activations are the integer
  constants ``IDENTITY``, ``RELU``, ``LEAKY_RELU``, ``SIGMOID``, ``TANH`` and the last
  argument ``nchunks`` is the number of per-thread chunks (``dense_forward_launch`` takes an
  optional ``rows_from`` after it: pass ``forward_rows_from()``, the bound BLAS's measured
  threshold for cutting the forward by rows of x).  They may be called from a user's
  own ``@numba.njit`` code (also inside ``prange``).  Call ``bind_blas()`` once from Python
  first to surface BLAS set-up errors as exceptions (otherwise the first GEMM binds).

Below them, ``*_block`` functions do the serial work of one chunk; ``split`` says how a
range is cut into chunks.  This package never imports from the rest of fastbp.
"""
import importlib

# Lazy: importing fastbp.kernels (or a numba-free part such as .names or .validate) loads no numba, BLAS or
# SciPy; a name is imported from its module on first access.
_EXPORTS = {
    "bind_blas": ("_blas", "bind"),
    "blas_choice_pending": ("_blas", "choice_pending"),
    "cpu_model": ("_blas", "cpu_model"),
    "add": ("combine", "add"),
    "add_backward_launch": ("combine", "add_backward_launch"),
    "add_into": ("combine", "add_into"),
    "add_into_launch": ("combine", "add_into_launch"),
    "add_launch": ("combine", "add_launch"),
    "concat": ("combine", "concat"),
    "concat_backward_launch": ("combine", "concat_backward_launch"),
    "concat_launch": ("combine", "concat_launch"),
    "count_nonfinite": ("_check", "count_nonfinite"),
    "scan_nonfinite": ("_check", "scan_nonfinite"),
    "count_nonfinite_launch": ("_check", "count_nonfinite_launch"),
    "PARALLEL_SCAN_FROM": ("_check", "PARALLEL_SCAN_FROM"),
    "first_out_of_range": ("_check", "first_out_of_range"),
    "JIT_DISABLED": ("_jit", "JIT_DISABLED"),
    "jit": ("_jit", "jit"),
    "serial_sum": ("_parallel", "serial_sum"),
    "split": ("_parallel", "split"),
    "IDENTITY": ("names", "IDENTITY"),
    "LEAKY_RELU": ("names", "LEAKY_RELU"),
    "RELU": ("names", "RELU"),
    "SIGMOID": ("names", "SIGMOID"),
    "TANH": ("names", "TANH"),
    "act_code": ("names", "act_code"),
    "activation_backward": ("activation", "activation_backward"),
    "activation_backward_launch": ("activation", "activation_backward_launch"),
    "activation_forward": ("activation", "activation_forward"),
    "activation_forward_launch": ("activation", "activation_forward_launch"),
    "batchnorm_backward": ("batchnorm", "batchnorm_backward"),
    "batchnorm_backward_launch": ("batchnorm", "batchnorm_backward_launch"),
    "batchnorm_forward": ("batchnorm", "batchnorm_forward"),
    "batchnorm_forward_launch": ("batchnorm", "batchnorm_forward_launch"),
    "bind_bf16": ("bf16", "bind_bf16"),
    "Bf16Unavailable": ("validate", "Bf16Unavailable"),
    "Bf16SlowWarning": ("validate", "Bf16SlowWarning"),
    "bf16_speedup": ("bf16", "bf16_speedup"),
    "bf16_store_shape": ("bf16", "store_shape"),
    "cpu_supports_bf16": ("bf16", "cpu_supports_bf16"),
    "dense_backward_bf16_launch": ("bf16", "dense_backward_bf16_launch"),
    "dense_forward_bf16_launch": ("bf16", "dense_forward_bf16_launch"),
    "gemm_bf16": ("bf16", "gemm_bf16"),
    "to_bf16_rows": ("bf16", "to_bf16_rows"),
    "to_bf16_store_rows": ("bf16", "to_bf16_store_rows"),
    "dense_backward": ("dense", "dense_backward"),
    "dense_backward_launch": ("dense", "dense_backward_launch"),
    "dense_forward": ("dense", "dense_forward"),
    "dense_forward_launch": ("dense", "dense_forward_launch"),
    "forward_rows_from": ("_blas", "forward_rows_from"),
    "dense_forward_ksplit_launch": ("dense", "dense_forward_ksplit_launch"),
    "forward_by_k": ("dense", "forward_by_k"),
    "KSPLIT_BELOW_ROWS": ("dense", "KSPLIT_BELOW_ROWS"),
    "dropout_backward": ("dropout", "dropout_backward"),
    "dropout_backward_launch": ("dropout", "dropout_backward_launch"),
    "dropout_forward": ("dropout", "dropout_forward"),
    "dropout_forward_launch": ("dropout", "dropout_forward_launch"),
    "take_rows": ("gather", "take_rows"),
    "take_rows_launch": ("gather", "take_rows_launch"),
    "count_argmax_correct": ("loss", "count_argmax_correct"),
    "count_threshold_correct": ("loss", "count_threshold_correct"),
    "mse": ("loss", "mse"),
    "mse_launch": ("loss", "mse_launch"),
    "sigmoid_bce": ("loss", "sigmoid_bce"),
    "sigmoid_bce_launch": ("loss", "sigmoid_bce_launch"),
    "softmax_ce_launch": ("loss", "softmax_ce_launch"),
    "softmax_ce_soft_launch": ("loss", "softmax_ce_soft_launch"),
    "softmax_cross_entropy": ("loss", "softmax_cross_entropy"),
    "adam": ("optim", "adam"),
    "adam_launch": ("optim", "adam_launch"),
    "adamw": ("optim", "adamw"),
    "sgd": ("optim", "sgd"),
    "sgd_launch": ("optim", "sgd_launch"),
}

__all__ = sorted(_EXPORTS) + ["bf16_info", "blas_backend", "blas_info"]


def __getattr__(name):
    if name in _EXPORTS:
        mod, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f"{__name__}.{mod}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__


def blas_info():
    """{"backend", "library", "blis_kernels", "choice"} of the bound BLAS (binding it if needed);
    ``choice`` says how ``FASTBP_BLAS=auto`` chose between BLIS and OpenBLAS (None otherwise)."""
    from . import _blas
    _blas.bind()
    return {"backend": _blas.BACKEND or "numpy", "library": _blas.LIBRARY_PATH, "blis_kernels": _blas.BLIS_KERNELS,
            "choice": _blas.CHOICE}


def bf16_info():
    """{"backend", "library", "path", "choice"} of the bound bf16 GEMM (binding it if needed; raises
    Bf16Unavailable where it cannot); ``choice`` says how ``FASTBP_BF16_GEMM`` picked oneDNN or MKL.
    None in pure-Python mode."""
    from . import bf16
    if bf16.bind_bf16() is None:
        return None
    return {"backend": bf16.BACKEND, "library": bf16.CHOICE["library"], "path": bf16.BOUND,
            "choice": {k: v for k, v in bf16.CHOICE.items() if k != "library"}}


def blas_backend():
    """The bound BLAS ("blis", "openblas", "mkl"; "numpy" in pure-Python mode), binding it if needed."""
    from ._blas import bind
    return bind()
