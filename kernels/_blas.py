"""GEMM for the kernels: a Fortran-ABI ``?gemm`` bound by symbol name.

Shapes: row-major ``C (M, N) = alpha * op(A) @ op(B) + beta * C`` where
``op(A)`` is ``(M, K)`` and ``op(B)`` is ``(K, N)``.

Design
------
The kernels call BLAS from inside jitted code (also from inside ``prange``
bodies), so the GEMM must be callable from nopython mode *and* survive
``cache=True``.  A function-pointer constant baked into machine code would be
stale in the next process, so instead the address of the chosen ``sgemm``/
``dgemm`` is registered with LLVM's JIT linker under the fixed names
``fastbp_sgemm`` / ``fastbp_dgemm`` (``llvmlite.binding.add_symbol``) each time
this module is imported; cached code refers to the names and is relinked.

BLAS is always called single-threaded: fastbp has exactly one thread domain,
numba's.  Kernels split a GEMM into per-thread row/column blocks inside
``prange`` and each block is one sequential BLAS call, so no second thread
pool ever spins against numba's (see README, "Threading design").

Backends (``FASTBP_BLAS`` = ``auto`` | ``openblas`` | ``mkl``):

* ``openblas``: SciPy's bundled OpenBLAS through ``scipy.linalg.cython_blas``
  (always available; scipy is a dependency).  Its thread count is set to 1.
* ``mkl``: ``libmkl_rt`` from PyPI's ``mkl`` wheel, set to its sequential layer.

``auto`` picks openblas: on the measured machine (AMD Zen 5) sequential MKL was
~2x slower than OpenBLAS for these shapes (README has the figures).
"""
import ctypes
import glob
import os
import sys

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import cast_like, jit

BACKEND = None          # "openblas" or "mkl" once loaded
LIBRARY_PATH = None     # file that provides the GEMM


def _capsule_address(capsule):
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def _load_openblas():
    from scipy.linalg import cython_blas
    s = _capsule_address(cython_blas.__pyx_capi__["sgemm"])
    d = _capsule_address(cython_blas.__pyx_capi__["dgemm"])
    path = None
    try:
        from threadpoolctl import ThreadpoolController
        ctl = ThreadpoolController()
        import scipy
        root = os.path.dirname(os.path.dirname(scipy.__file__))
        for lib in ctl.lib_controllers:
            if lib.user_api == "blas" and lib.filepath.startswith(root) and "scipy.libs" in lib.filepath:
                lib.set_num_threads(1)
                path = lib.filepath
    except Exception:  # pragma: no cover - threadpoolctl is a dependency
        pass
    return s, d, path


def _find_mkl_rt():
    for prefix in (sys.prefix, sys.base_prefix):
        hits = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
        if hits:
            return hits[0]
    return None


def _load_mkl():
    path = _find_mkl_rt()
    if path is None:
        raise OSError("libmkl_rt not found (pip install mkl)")
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    lib.MKL_Set_Threading_Layer(ctypes.c_int(1))  # MKL_THREADING_SEQUENTIAL
    s = ctypes.cast(lib.sgemm, ctypes.c_void_p).value
    d = ctypes.cast(lib.dgemm, ctypes.c_void_p).value
    return s, d, path


def _register():
    global BACKEND, LIBRARY_PATH
    want = os.environ.get("FASTBP_BLAS", "auto").strip().lower()
    if want not in ("auto", "openblas", "mkl"):
        raise ValueError(f"FASTBP_BLAS must be 'auto', 'openblas' or 'mkl', got {want!r}")
    if want == "mkl":
        s, d, path = _load_mkl()
        BACKEND = "mkl"
    else:
        s, d, path = _load_openblas()
        BACKEND = "openblas"
    LIBRARY_PATH = path
    llvm.add_symbol("fastbp_sgemm", s)
    llvm.add_symbol("fastbp_dgemm", d)


_register()


@intrinsic
def _fortran_gemm(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call ``fastbp_{s,d}gemm`` (Fortran ABI, every argument by pointer)."""
    if alpha not in (types.float32, types.float64):
        return None
    name = "fastbp_sgemm" if alpha == types.float32 else "fastbp_dgemm"
    sig = types.void(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        i32 = ir.IntType(32)
        out = []
        for val, ty in zip(args, signature.args):
            if isinstance(ty, types.Array):
                ptr = context.make_array(ty)(context, builder, val).data
                out.append(builder.bitcast(ptr, i8p))
                continue
            if ty in (types.float32, types.float64):
                slot = cgutils.alloca_once_value(builder, val)
            elif ty == types.uint8:
                slot = cgutils.alloca_once_value(builder, val)
            else:  # integer: the LP64 BLAS takes 32-bit ints
                slot = cgutils.alloca_once_value(builder, builder.trunc(val, i32)
                                                 if val.type.width > 32 else val)
            out.append(builder.bitcast(slot, i8p))
        builder.call(fn, out)
        return context.get_dummy_value()

    return sig, codegen


_N = np.uint8(ord("N"))
_T = np.uint8(ord("T"))


@jit
def gemm(C, A, B, trans_a, trans_b, alpha, beta):
    """``C = alpha * op(A) @ op(B) + beta * C`` for row-major 2-D views.

    Views may be row/column slices as long as the last axis has unit stride
    (leading dimension = ``strides[0] // itemsize``).  Writes ``C`` only.
    No checking: callers guarantee shapes.
    """
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    isz = C.itemsize
    lda = max(A.strides[0] // isz, 1)
    ldb = max(B.strides[0] // isz, 1)
    ldc = max(C.strides[0] // isz, 1)
    # row-major C = op(A) op(B)  <=>  column-major C^T = op(B)^T op(A)^T
    tb = _T if trans_b else _N
    ta = _T if trans_a else _N
    if k == 0:
        for i in range(m):
            for j in range(n):
                C[i, j] = cast_like(beta, C) * C[i, j] if beta != 0 else 0
        return
    _fortran_gemm(tb, ta, n, m, k, cast_like(alpha, C), B, ldb, A, lda,
                  cast_like(beta, C), C, ldc)
