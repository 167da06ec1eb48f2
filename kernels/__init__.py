"""fastbp.kernels: Numba CPU kernels for backpropagation.

Kernels are pairs of free functions, outputs first, then inputs, then options.
Public functions validate every argument (dtype, shape, contiguity, finiteness)
and raise ``TypeError``/``ValueError`` naming the argument before any kernel
runs; they write only into caller-owned buffers.

This package never imports from the rest of fastbp.
"""
from ._blas import BACKEND as blas_backend
from .activation import (IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH, act_code,
                         activation_backward, activation_forward)
from .batchnorm import batchnorm_backward, batchnorm_forward
from .dense import dense_backward, dense_forward
from .dropout import dropout_backward, dropout_forward
from .loss import mse, sigmoid_bce, softmax_cross_entropy
from .optim import adam, adamw, sgd

__all__ = [
    "IDENTITY", "RELU", "LEAKY_RELU", "SIGMOID", "TANH", "act_code", "blas_backend",
    "activation_forward", "activation_backward", "dense_forward", "dense_backward",
    "batchnorm_forward", "batchnorm_backward", "dropout_forward", "dropout_backward",
    "softmax_cross_entropy", "mse", "sigmoid_bce", "sgd", "adam", "adamw",
]
