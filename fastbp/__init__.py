"""fastbp: Numba-accelerated backpropagation for MLPs on multicore CPUs."""
from ._threads import get_num_threads, set_num_threads, threading_info
from .gradcheck import gradcheck
from .layers import Activation, BatchNorm, Dense, Dropout
from .model import Model
from .optim import SGD, Adam, AdamW

__version__ = "0.1.0"
__all__ = ["Model", "Dense", "Activation", "BatchNorm", "Dropout", "SGD", "Adam", "AdamW",
           "set_num_threads", "get_num_threads", "threading_info", "gradcheck", "__version__"]
