"""bf16 mixed precision for dense layers: fp32 master weights, bf16 GEMM operands, fp32 results.

Shapes: N=batch, D=in, F=out.  x (N, D), W (D, F), b (F,) or (0,), out / dz (N, F), dx (N, D),
all float32.  bf16 copies are uint16 arrays of the same shape (the upper half of each float32,
rounded to nearest even): x16 (N, D), W16 (D, F), dz16 (N, F).

    forward:   x16 = bf16(x); W16 = bf16(W);  out = act(x16 @ W16 + b)        (fp32 accumulation)
    backward:  dz16 = bf16(dz);  dx = (dz16 @ W16^T) * act'(prev_y);  dW = x16^T dz16;  db = sum dz

The GEMM is Intel MKL's ``cblas_gemm_bf16bf16f32`` (AMX or AVX512_BF16 on CPUs that have them),
sequential, called from inside numba's parallel regions like every fastbp GEMM; ``bind_bf16``
loads it (PyPI ``mkl``: ``pip install fastbp[bf16]``) and must run before any kernel here is
compiled or loaded.  Only the GEMM operands are rounded: biases, activations, the loss, the
gradients written to ``dW``/``db`` and the optimizer stay fp32.

Levels: ``to_bf16_rows`` / ``to_bf16_store_rows`` / ``gemm_bf16`` (serial); ``dense_forward_bf16_launch`` /
``dense_backward_bf16_launch`` (two parallel regions each: convert by rows, then the GEMM
blocks by weight columns/rows as in ``dense``; no checks).
"""
import ctypes
import threading

import numpy as np
from numba import prange

from ._blas import _find_mkl, cpu_flags
from ._jit import JIT_DISABLED, jit
from ._parallel import split
from .activation import act_grad_block, bias_act_block
from .dense import bias_grad_block, forward_by_rows
from .validate import Bf16Unavailable

SYMBOL = "fastbp_cblas_gemm_bf16bf16f32"
BOUND = None          # path of the MKL library once bound
SPEEDUP = None        # bf16_speedup()'s measurement, once per process
_LOCK = threading.Lock()
_LIB = []             # the MKL library once bound (kept alive: LLVM holds its function's address)


def cpu_supports_bf16():
    """True when the CPU has AVX512_BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def bind_bf16():
    """Load MKL's bf16 GEMM (once) and register it for the kernels; returns the library path.
    Raises Bf16Unavailable (a RuntimeError) on a CPU without bf16 instructions or without MKL."""
    global BOUND
    if BOUND is not None or JIT_DISABLED:
        return BOUND
    with _LOCK:
        if BOUND is not None:
            return BOUND
        if not cpu_supports_bf16():
            raise Bf16Unavailable("precision='bf16' needs a CPU with AVX512_BF16 or AMX-BF16 instructions; "
                               "this one has neither (use precision='fp32')")
        path = _find_mkl()
        if path is None:
            raise Bf16Unavailable("precision='bf16' needs Intel MKL's bf16 GEMM: pip install 'fastbp[bf16]' "
                                  "(PyPI mkl)")
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        lib.MKL_Set_Threading_Layer(ctypes.c_int(1))   # MKL_THREADING_SEQUENTIAL: numba owns the threads
        fn = lib.cblas_gemm_bf16bf16f32
        _LIB.append(lib)
        import llvmlite.binding as llvm
        llvm.add_symbol(SYMBOL, ctypes.cast(fn, ctypes.c_void_p).value)
        BOUND = path
        return BOUND


#: one per-thread block of a 784-512-512 step (rows, columns, depth)
SPEEDUP_SHAPE = (256, 512, 784)


def bf16_speedup(reps=5):
    """How much faster MKL's bf16 GEMM is than its fp32 sgemm on this CPU: the ratio of their best
    single-threaded times on one SPEEDUP_SHAPE block, interleaved (~20 ms, measured once per
    process; None in pure-Python mode).  Why: MKL runs its AVX512_BF16/AMX kernels on Intel CPUs
    only; on an AMD EPYC with AVX512_BF16 its bf16 GEMM ran at 0.98-1.00x the fp32 rate, so bf16
    steps (which also round their operands) were slower than fp32."""
    global SPEEDUP
    if SPEEDUP is not None or JIT_DISABLED:
        return SPEEDUP
    bind_bf16()
    import time
    lib = _LIB[0]
    m, n, k = SPEEDUP_SHAPE
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    a16, b16 = (a.view(np.uint32) >> 16).astype(np.uint16), (b.view(np.uint32) >> 16).astype(np.uint16)
    c = np.empty((m, n), np.float32)
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    sig = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    fp32, bf16 = lib.cblas_sgemm, lib.cblas_gemm_bf16bf16f32
    fp32.argtypes = bf16.argtypes = sig
    best = {}
    for _ in range(reps + 1):       # the first round loads MKL's kernels
        for name, fn, x, y in (("fp32", fp32, a, b), ("bf16", bf16, a16, b16)):
            t = time.perf_counter()
            fn(101, 111, 111, m, n, k, 1.0, x.ctypes.data, k, y.ctypes.data, n, 0.0, c.ctypes.data, n)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    SPEEDUP = best["fp32"] / best["bf16"]
    return SPEEDUP


if JIT_DISABLED:
    def _bf16_bits(v):
        u = np.ascontiguousarray(v, np.float32).view(np.uint32)
        r = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        nan = (u & 0x7FFFFFFF) > 0x7F800000
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
        return r

    def to_bf16_rows(dst, src, r0, r1):
        """dst[r0:r1] = bf16(src[r0:r1]) (round to nearest even; NaN stays NaN)."""
        dst[r0:r1] = _bf16_bits(src[r0:r1])

    def to_bf16_store_rows(store, src, r0, r1):
        """Rows r0:r1 of the float32 ``store`` (N, ceil(D/2)) := the bf16 pairs of src[r0:r1] (N, D)."""
        store.view(np.uint16)[r0:r1, :src.shape[1]] = _bf16_bits(src[r0:r1])

    def from_bf16(a):
        return (a.astype(np.uint32) << 16).view(np.float32)

    def gemm_bf16(C, A, B, trans_a, trans_b, alpha, beta):
        """Pure-Python mode: the same product in numpy (bf16 operands widened, fp32 result)."""
        a = from_bf16(A.T if trans_a else A).astype(np.float64)
        b = from_bf16(B.T if trans_b else B).astype(np.float64)
        prod = (a @ b).astype(np.float32) * np.float32(alpha)
        C[...] = prod if beta == 0 else prod + np.float32(beta) * C
else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @jit
    def _round_row(d, s):
        """d[:len(s)] = bf16 bits of the float32 bits ``s`` (uint32, 1-D); contiguous rows vectorize."""
        for c in range(s.shape[0]):
            u = s[c]
            rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            quiet = (u >> np.uint32(16)) | np.uint32(0x40)
            d[c] = np.uint16(quiet if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)

    @jit
    def to_bf16_rows(dst, src, r0, r1):
        """dst[r0:r1] = bf16(src[r0:r1]) (round to nearest even; NaN stays NaN), row by row."""
        for r in range(r0, r1):
            _round_row(dst[r], src[r].view(np.uint32))

    @jit
    def to_bf16_store_rows(store, src, r0, r1):
        """Rows r0:r1 of the float32 ``store`` (N, ceil(D/2)) := the bf16 pairs of src[r0:r1] (N, D).
        Same values as ``to_bf16_rows`` into ``_bf16_view(store, D)``, but each row is written as one
        contiguous uint16 run (3x faster than through the strided view, measured)."""
        for r in range(r0, r1):
            _round_row(store[r].view(np.uint16), src[r].view(np.uint32))

    @intrinsic
    def _call_bf16(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        """MKL cblas_gemm_bf16bf16f32, row-major (32-bit ints: MKL's LP64 interface)."""
        sig = types.void(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, signature, args):
            i32, f32, i8p = ir.IntType(32), ir.FloatType(), ir.IntType(8).as_pointer()
            kinds = [i32, i32, i32, i32, i32, i32, f32, i8p, i32, i8p, i32, f32, i8p, i32]
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), kinds), SYMBOL)
            vals = [ir.Constant(i32, 101)]                      # CblasRowMajor
            for val, ty in zip(args, signature.args):
                if isinstance(ty, types.Array):
                    vals.append(builder.bitcast(context.make_array(ty)(context, builder, val).data, i8p))
                elif isinstance(ty, types.Float):
                    vals.append(context.cast(builder, val, ty, types.float32))
                else:
                    vals.append(context.cast(builder, val, ty, types.int32))
            builder.call(fn, vals)
            return context.get_dummy_value()

        return sig, codegen

    @jit
    def gemm_bf16(C, A, B, trans_a, trans_b, alpha, beta):
        """``C = alpha * op(A) @ op(B) + beta * C``: A, B uint16 (bf16) 2-D views, C float32, unit
        stride on the last axis.  Writes ``C`` only; ``beta = 0`` overwrites."""
        m, n = C.shape
        k = A.shape[0] if trans_a else A.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:
            for i in range(m):
                for j in range(n):
                    C[i, j] = np.float32(beta) * C[i, j] if beta != 0 else np.float32(0.0)
            return
        _call_bf16(112 if trans_a else 111, 112 if trans_b else 111, m, n, k, alpha, A, max(A.strides[0] // 2, 1),
                   B, max(B.strides[0] // 2, 1), beta, C, max(C.strides[0] // 4, 1))


@jit
def _bf16_view(store, cols):
    """The (rows, cols) uint16 view of a float32 store of shape (rows, ceil(cols / 2))."""
    return store.view(np.uint16)[:, :cols]


#: from this many rows on (or for narrow outputs, as in ``dense``), the forward GEMM is cut by rows
#: of x (each thread converts and multiplies its own rows: 1.2-1.3x faster at 512-4096 rows,
#: measured); below, by columns of W
ROW_SPLIT_ROWS = 256


@jit(parallel=True)
def dense_forward_bf16_launch(out, x, W, b, x16s, W16s, act, alpha, convert_w, nchunks):
    """out = act(bf16(x) @ bf16(W) + b), overwriting ``out`` (N, F); x16s / W16s: float32 stores of
    the bf16 copies (N, ceil(D/2)) / (D, ceil(F/2)); x16s is overwritten (kept for the backward
    pass), W16s only with ``convert_w`` (else the caller guarantees it holds bf16(W) already)."""
    N, D = x.shape
    F = W.shape[1]
    x16 = _bf16_view(x16s, D)
    W16 = _bf16_view(W16s, F)
    by_rows = forward_by_rows(N, F, nchunks, ROW_SPLIT_ROWS)
    for c in prange(nchunks):
        if convert_w:
            d0, d1 = split(D, nchunks, c)
            to_bf16_store_rows(W16s, W, d0, d1)
        if not by_rows:
            r0, r1 = split(N, nchunks, c)
            to_bf16_store_rows(x16s, x, r0, r1)
    for c in prange(nchunks):
        if by_rows:
            r0, r1 = split(N, nchunks, c)
            to_bf16_store_rows(x16s, x, r0, r1)
            gemm_bf16(out[r0:r1], x16[r0:r1], W16, False, False, 1.0, 0.0)
            bias_act_block(out, b, act, alpha, r0, r1, 0, F)
        else:
            f0, f1 = split(F, nchunks, c)
            gemm_bf16(out[:, f0:f1], x16, W16[:, f0:f1], False, False, 1.0, 0.0)
            bias_act_block(out, b, act, alpha, 0, N, f0, f1)


@jit(parallel=True)
def dense_backward_bf16_launch(dx, dW, db, dz, W, b, x16s, W16s, dz16s, prev_y, prev_act, prev_alpha, want_dx,
                               fused_sgd, lr, wd, nchunks):
    """Backward of one bf16 dense layer given fp32 ``dz``; like ``dense_backward_launch``: thread c
    owns rows [d0, d1) of W and columns [f0, f1) of b.  ``dx`` (overwritten) leaves as the previous
    layer's dz; with ``fused_sgd`` W/b are updated in place (fp32) and the updated rows are rounded
    into W16s again (so it stays bf16(W) for the next forward), else ``dW``/``db`` are overwritten.
    Uses the forward pass's bf16 x and W; writes dz16s (float32 store (N, ceil(F/2)))."""
    N, F = dz.shape
    D = W.shape[0]
    x16 = _bf16_view(x16s, D)
    W16 = _bf16_view(W16s, F)
    dz16 = _bf16_view(dz16s, F)
    for c in prange(nchunks):
        r0, r1 = split(N, nchunks, c)
        to_bf16_store_rows(dz16s, dz, r0, r1)
    for c in prange(nchunks):
        d0, d1 = split(D, nchunks, c)
        f0, f1 = split(F, nchunks, c)
        if want_dx:
            gemm_bf16(dx[:, d0:d1], dz16, W16[d0:d1], False, True, 1.0, 0.0)
            act_grad_block(dx, prev_y, prev_act, prev_alpha, 0, N, d0, d1)
        if fused_sgd:
            _grad_block_bf16(W, b, x16, dz16, dz, d0, d1, f0, f1, -lr, 1.0 - lr * wd)
            to_bf16_store_rows(W16s, W, d0, d1)      # this thread's rows, after their dx GEMM used the old ones
        else:
            _grad_block_bf16(dW, db, x16, dz16, dz, d0, d1, f0, f1, 1.0, 0.0)


@jit
def _grad_block_bf16(dW, db, x16, dz16, dz, d0, d1, f0, f1, scale, beta):
    """dW[d0:d1] = scale * x16[:, d0:d1]^T dz16 + beta * dW[d0:d1]; db[f0:f1] likewise from fp32 dz."""
    gemm_bf16(dW[d0:d1], x16[:, d0:d1], dz16, True, False, scale, beta)
    bias_grad_block(db, dz, f0, f1, scale, beta)


def store_shape(rows, cols):
    """Shape of the float32 store that holds a (rows, cols) bf16 array."""
    return (rows, (cols + 1) // 2)
