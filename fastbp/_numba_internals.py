"""The only module that touches numba internals (not numba's public API).  Two uses:

* ``function_value(fn, sig)``: a compiled entry as a first-class function value of type
  ``FunctionType(sig)`` (``CompileResultWAP``), so every entry of a step program has one numba type
  and the typed List of entries is compiled once (numba has no public wrapper for a
  dispatcher's compiled overload);
* ``disk_cached(fn, sig)``: whether numba's disk cache holds ``fn`` compiled for ``sig`` (the cache
  index), to hand only uncached entries to compile helpers (``fastbp.warmup``).

tests/test_numba_internals.py fails on a numba release that breaks either.
"""
from numba.core.types.function_type import CompileResultWAP


def function_value(fn, sig):
    """``fn`` (a dispatcher already compiled for ``sig``) as a first-class function value."""
    return CompileResultWAP(fn.overloads[sig.args])


def is_function_value(obj):
    return isinstance(obj, CompileResultWAP)


def disk_cached(fn, sig):
    """True / False: numba's disk cache holds / lacks ``fn`` for ``sig``; None: cannot tell."""
    try:
        c = fn._cache
        key = c._index_key(sig, fn.targetctx.codegen())
        return key in c._cache_file._load_index()
    except Exception:    # noqa: BLE001 - unknown means: do not spawn helpers
        return None
