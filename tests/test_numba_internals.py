"""fastbp/_numba_internals.py is the only place that uses numba internals: these tests fail on a
numba release that breaks them (then fix that one module)."""
import numpy as np
import pytest

from fastbp import ops
from fastbp._numba_internals import disk_cached, function_value, is_function_value
from fastbp.kernels import JIT_DISABLED
from fastbp.program import entry_signature, typed_list

pytestmark = pytest.mark.skipif(JIT_DISABLED, reason="numba internals exist only when numba compiles")


def test_a_compiled_entry_becomes_a_first_class_function_value_in_a_typed_list():
    from numba import types
    sig = entry_signature(np.float32)
    ops.activation_forward_entry.compile(sig)
    v = function_value(ops.activation_forward_entry, sig)
    assert is_function_value(v) and not is_function_value(ops.activation_forward_entry)
    lst = typed_list([v, v], types.FunctionType(sig))
    assert len(lst) == 2


def test_the_disk_cache_index_answers_for_a_compiled_entry():
    sig = entry_signature(np.float32)
    ops.activation_forward_entry.compile(sig)
    assert disk_cached(ops.activation_forward_entry, sig) is True
    assert disk_cached(object(), sig) is None          # unknown, never an exception
