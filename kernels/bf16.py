"""bf16 mixed precision for dense layers: fp32 master weights, bf16 GEMM operands, fp32 results.

Shapes: N=batch, D=in, F=out.  x (N, D), W (D, F), b (F,) or (0,), out / dz (N, F), dx (N, D),
all float32.  bf16 copies are uint16 arrays of the same shape (the upper half of each float32,
rounded as ``ROUNDING`` says): x16 (N, D), W16 (D, F), dz16 (N, F).

    forward:   x16 = bf16(x); W16 = bf16(W);  out = act(x16 @ W16 + b)        (fp32 accumulation)
    backward:  dz16 = bf16(dz);  dx = (dz16 @ W16^T) * act'(prev_y);  dW = x16^T dz16;  db = sum dz

The GEMM is a library's bf16 x bf16 -> fp32 GEMM, sequential, called from inside numba's parallel
regions like every fastbp GEMM.  ``bind_bf16`` loads it and must run before any kernel here is
compiled or loaded.  Two libraries can provide it (``pip install fastbp[bf16]`` installs both):

- oneDNN's ``dnnl_gemm_bf16bf16f32`` (PyPI ``onednn-cpu-gomp``, the GNU-OpenMP build): uses
  AVX512_BF16 on any CPU that has it (2.0x sgemm's rate on an AMD EPYC, measured);
- Intel MKL's ``cblas_gemm_bf16bf16f32`` (PyPI ``mkl``): AMX/AVX512_BF16 on Intel CPUs only.

``FASTBP_BF16_GEMM=auto|onednn|mkl`` picks one; ``auto`` times both once per machine (one step's
blocks, one thread) and remembers the faster in fastbp's cache folder, so every process on a machine
computes the same bits.  Only the GEMM operands are rounded: biases, activations, the loss, the
gradients written to ``dW``/``db`` and the optimizer stay fp32.

Levels: ``to_bf16_rows`` / ``to_bf16_store_rows`` / ``gemm_bf16`` (serial); ``dense_forward_bf16_launch`` /
``dense_backward_bf16_launch`` (two parallel regions each: convert by rows, then the GEMM
blocks by weight columns/rows as in ``dense``; no checks).
"""
import ctypes
import os
import threading

import numpy as np
from numba import prange

from . import _blas
from ._blas import _find_mkl, cpu_flags
from ._jit import JIT_DISABLED, JIT_OPTIONS, jit
from ._parallel import split
from .activation import act_grad_block, bias_act_block
from .dense import bias_grad_block, forward_by_rows
from .validate import Bf16Unavailable

#: the one symbol the kernels call, row-major with oneDNN's ABI:
#: (char ta, char tb, i64 m, n, k, f32 alpha, bf16 *a, i64 lda, bf16 *b, i64 ldb, f32 beta, f32 *c, i64 ldc)
SYMBOL = "fastbp_gemm_bf16_v2"
BACKENDS = ("onednn", "mkl")
BACKEND = None        # "onednn" or "mkl" once bound
BOUND = None          # path of the library once bound
CHOICE = None         # how it was picked: {"how": ..., "backend": ..., ["ms": {...}]}
CHOICE_FILE = "bf16-choice.json"
SPEEDUP = None        # bf16_speedup()'s measurement, once per process
_LOCK = threading.Lock()
_LIB = []             # libraries and shims once bound (kept alive: LLVM holds their addresses)
_SHIMS = {}           # backend -> address of its shim with SYMBOL's ABI


#: how fp32 becomes bf16 everywhere in fastbp (kernels, pure-Python mode, tests' reference): the
#: CPU's ``vcvtneps2bf16`` rule, so that the instruction and the software loop give the same bits:
#: round to nearest, ties to even; a NaN stays NaN (quieted, sign and top payload bits kept);
#: denormal inputs become a zero of their sign (the instruction treats them as zero)
ROUNDING = "nearest-even; NaN quieted; denormal inputs -> signed zero (as vcvtneps2bf16)"


def _compiles_for_bf16():
    """True when numba generates code for a CPU with AVX512_BF16: the host (unless
    ``NUMBA_CPU_NAME`` names another CPU) with the feature (unless ``NUMBA_CPU_FEATURES`` leaves it
    out).  Only then may a kernel contain ``vcvtneps2bf16``; elsewhere LLVM could not select it."""
    from numba.core import config
    if config.CPU_NAME not in (None, "host"):
        return False
    if config.CPU_FEATURES is not None:
        return "+avx512bf16" in config.CPU_FEATURES.split(",")
    import llvmlite.binding as llvm
    return bool(llvm.get_host_cpu_features().get("avx512bf16", False))


def cpu_supports_bf16():
    """True when the CPU has AVX512_BF16 or AMX-BF16 (Linux /proc/cpuinfo)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def _find_onednn():
    """libdnnl of this environment, or None (the same file the fp32 BLAS candidate uses)."""
    return _blas._find_onednn()


def _load_onednn():
    """Register oneDNN's bf16 GEMM: (library path, description)."""
    lib, path, desc = _blas._open_onednn(_find_onednn())
    import llvmlite.binding as llvm
    llvm.add_symbol("fastbp_dnnl_gemm_bf16bf16f32", ctypes.cast(lib.dnnl_gemm_bf16bf16f32, ctypes.c_void_p).value)
    _LIB.append(lib)
    return path, desc


def _load_mkl_bf16():
    path = _find_mkl()
    if path is None:
        raise OSError("MKL not found (pip install mkl)")
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    lib.MKL_Set_Threading_Layer(ctypes.c_int(1))   # MKL_THREADING_SEQUENTIAL: numba owns the threads
    import llvmlite.binding as llvm
    llvm.add_symbol("fastbp_mkl_cblas_gemm_bf16bf16f32",
                    ctypes.cast(lib.cblas_gemm_bf16bf16f32, ctypes.c_void_p).value)
    _LIB.append(lib)
    return path, "MKL"


def _find(name):
    """The library file of backend ``name``, or None (looked up at call time: tests replace the finders)."""
    return _find_onednn() if name == "onednn" else _find_mkl()


def _load(name):
    """Load backend ``name`` and register its symbols: (library path, description)."""
    return _load_onednn() if name == "onednn" else _load_mkl_bf16()


#: (m, n, k, A transposed, B transposed): one step's per-thread bf16 GEMM blocks (784-512-512 MLP,
#: 2 threads, batch 128 and 512), timed when both libraries are installed
_CHOICE_SHAPES = [s for B in (128, 512) for s in ((B, 256, 784, False, False), (B, 392, 512, False, True),
                                                  (392, 512, B, True, False))]
_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_int8, ctypes.c_int8, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                          ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                          ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)


def _time_bf16(shims, reps=5):
    """{backend: total of per-shape best seconds} for bf16 shims ``{backend: address}``, interleaved."""
    import time
    rng = np.random.default_rng(0)
    calls = {k: _PROTO(a) for k, a in shims.items()}
    total = dict.fromkeys(shims, 0.0)
    for m, n, k, ta, tb in _CHOICE_SHAPES:
        A = rng.integers(0x3C00, 0x3F80, (k, m) if ta else (m, k), dtype=np.uint16)   # bf16 in [2^-7, 1)
        B = rng.integers(0x3C00, 0x3F80, (n, k) if tb else (k, n), dtype=np.uint16)
        C = np.empty((m, n), np.float32)
        best = dict.fromkeys(shims, float("inf"))
        for _ in range(reps + 1):                # the first round loads each library's kernels
            for name, call in calls.items():
                t = time.perf_counter()
                call(84 if ta else 78, 84 if tb else 78, m, n, k, 1.0, A.ctypes.data, A.shape[1], B.ctypes.data,
                     B.shape[1], 0.0, C.ctypes.data, n)
                best[name] = min(best[name], time.perf_counter() - t)
        for name in shims:
            total[name] += best[name]
    return total


def bind_bf16():
    """Load the bf16 GEMM (once) and register it for the kernels; returns the library path.
    Raises Bf16Unavailable (a RuntimeError) on a CPU without bf16 instructions, without a library
    that has the GEMM, or for a bad ``FASTBP_BF16_GEMM``."""
    global BOUND, BACKEND, CHOICE
    if BOUND is not None or JIT_DISABLED:
        return BOUND
    with _LOCK:
        if BOUND is not None:
            return BOUND
        want = os.environ.get("FASTBP_BF16_GEMM", "auto").strip().lower()
        if want not in ("auto", *BACKENDS):
            raise Bf16Unavailable(f"FASTBP_BF16_GEMM must be 'auto', 'onednn' or 'mkl', got {want!r}")
        if not cpu_supports_bf16():
            raise Bf16Unavailable("precision='bf16' needs a CPU with AVX512_BF16 or AMX-BF16 instructions; "
                                  "this one has neither (use precision='fp32')")
        names = [want] if want != "auto" else [n for n in BACKENDS if _find(n) is not None]
        if not names:
            raise Bf16Unavailable("precision='bf16' needs a bf16 GEMM library: pip install 'fastbp[bf16]' "
                                  "(PyPI onednn-cpu-gomp or mkl)")
        key = _blas._choice_key([_find(n) for n in names]) if len(names) > 1 else None
        known = _blas._remembered(key, CHOICE_FILE) if key else None
        if known in names:
            names = [known]
        loaded, failed = {}, {}
        for name in names:
            try:
                loaded[name] = _load(name)
            except (OSError, AttributeError) as e:
                failed[name] = str(e)
        if not loaded:
            how = f"FASTBP_BF16_GEMM={want}" if want != "auto" else "no usable bf16 GEMM library"
            raise Bf16Unavailable(f"precision='bf16': {how} (" + "; ".join(f"{n}: {e}" for n, e in failed.items())
                                  + ")")
        for name in loaded:
            _SHIMS[name] = _shim_address(name)
        if len(loaded) > 1 and _blas._under_launcher():   # ranks timing at once could disagree
            backend = "onednn"
            CHOICE = {"how": "default under an MPI launcher (no remembered choice)", "backend": backend}
        elif len(loaded) > 1:
            secs = _time_bf16({n: _SHIMS[n] for n in loaded})
            backend = min(secs, key=secs.get)
            CHOICE = {"how": "measured", "backend": backend, "ms": {n: round(s * 1e3, 3) for n, s in secs.items()}}
            _blas._remember(key, backend, CHOICE_FILE)
        else:
            backend = next(iter(loaded))
            how = "remembered" if known == backend else ("asked for" if want != "auto" else "only one installed")
            CHOICE = {"how": how, "backend": backend}
        CHOICE["library"] = loaded[backend][1]
        import llvmlite.binding as llvm
        llvm.add_symbol(SYMBOL, _SHIMS[backend])
        BACKEND, BOUND = backend, loaded[backend][0]
        return BOUND


#: one per-thread block of a 784-512-512 step (rows, columns, depth)
SPEEDUP_SHAPE = (256, 512, 784)


def bf16_speedup(reps=5):
    """How much faster the bound bf16 GEMM is than the bound fp32 GEMM on this CPU: the ratio of
    their best single-threaded times on one SPEEDUP_SHAPE block, interleaved (~20 ms, measured once
    per process; None in pure-Python mode).  Why: MKL runs its AVX512_BF16/AMX kernels on Intel CPUs
    only; on an AMD EPYC with AVX512_BF16 its bf16 GEMM ran at 0.98-1.00x the fp32 rate, so bf16
    steps (which also round their operands) were slower than fp32; oneDNN's ran at 2.0x there."""
    global SPEEDUP
    if SPEEDUP is not None or JIT_DISABLED:
        return SPEEDUP
    bind_bf16()
    _blas.bind()
    import time
    m, n, k = SPEEDUP_SHAPE
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
    a16, b16 = (a.view(np.uint32) >> 16).astype(np.uint16), (b.view(np.uint32) >> 16).astype(np.uint16)
    c = np.empty((m, n), np.float32)
    fp32, bf16 = _blas._PROTOS[0](_blas._SLOTS[0]), _PROTO(_SHIMS[BACKEND])
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    best = {}
    for _ in range(reps + 1):       # the first round loads the libraries' kernels
        for name in ("fp32", "bf16"):
            t = time.perf_counter()
            if name == "fp32":
                fp32(m, n, k, one, a.ctypes.data, k, 1, b.ctypes.data, n, 1, zero, c.ctypes.data, n, 1)
            else:
                bf16(78, 78, m, n, k, 1.0, a16.ctypes.data, k, b16.ctypes.data, n, 0.0, c.ctypes.data, n)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    SPEEDUP = best["fp32"] / best["bf16"]
    return SPEEDUP


if JIT_DISABLED:
    HW_ROUND = False

    def _bf16_bits(v):
        u = np.ascontiguousarray(v, np.float32).view(np.uint32)
        u = np.where(u & 0x7F800000, u, u & 0x80000000)       # denormals in: signed zero
        r = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        nan = (u & 0x7FFFFFFF) > 0x7F800000
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
        return r

    def to_bf16_rows(dst, src, r0, r1):
        """dst[r0:r1] = bf16(src[r0:r1]) (see ROUNDING)."""
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

    HW_ROUND = _compiles_for_bf16()

    class _BFloat(ir.Type):
        """LLVM's ``bfloat`` (llvmlite has no class for it; its IR is text)."""
        def _to_string(self):
            return "bfloat"

        def __eq__(self, other):
            return isinstance(other, _BFloat)

        def __hash__(self):
            return hash("bfloat")

    @intrinsic
    def _cvtneps2bf16_x16(typingctx, d, s, i):
        """d[i:i+16] = bf16(s[i:i+16]) by one ``vcvtneps2bf16``: d uint16, s the float32 bits (uint32),
        1-D with unit stride (the caller checks), 16 elements from i in both."""
        def codegen(context, builder, sig, args):
            da = context.make_array(sig.args[0])(context, builder, args[0])
            sa = context.make_array(sig.args[1])(context, builder, args[1])
            at = context.cast(builder, args[2], sig.args[2], types.intp)
            f16 = ir.VectorType(ir.FloatType(), 16)
            v = builder.load(builder.bitcast(builder.gep(sa.data, [at]), f16.as_pointer()), align=4)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VectorType(_BFloat(), 16), [f16]),
                                                "llvm.x86.avx512bf16.cvtneps2bf16.512")
            r = builder.bitcast(builder.call(fn, [v]), ir.VectorType(ir.IntType(16), 16))
            builder.store(r, builder.bitcast(builder.gep(da.data, [at]), r.type.as_pointer()), align=2)
            return context.get_dummy_value()
        return types.void(d, s, i), codegen

    if HW_ROUND:
        @jit
        def _round_head(d, s):
            """Round the first multiple of 16 elements with the CPU's instruction; how many it did."""
            n = s.shape[0] - s.shape[0] % 16 if d.strides[0] == 2 and s.strides[0] == 4 else 0
            for c in range(0, n, 16):
                _cvtneps2bf16_x16(d, s, c)
            return n
    else:
        @jit
        def _round_head(d, s):
            """numba compiles for a CPU without AVX512_BF16 here: all elements in software."""
            return 0

    @jit
    def _round_row(d, s):
        """d[:len(s)] = bf16 bits of the float32 bits ``s`` (uint32, 1-D), see ROUNDING.  Runs of 16
        use ``vcvtneps2bf16`` where numba targets AVX512_BF16 (2x faster, measured); the rest, and
        everything elsewhere, the software loop (vectorized)."""
        _round_sw(d, s, _round_head(d, s))

    @jit
    def _round_sw(d, s, start):
        """d[start:len(s)] = bf16 bits of s[start:], in software, with the instruction's rule."""
        for c in range(start, s.shape[0]):
            u = s[c]
            u = u if (u & np.uint32(0x7F800000)) != 0 else u & np.uint32(0x80000000)   # denormal: signed zero
            rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            quiet = (u >> np.uint32(16)) | np.uint32(0x40)
            d[c] = np.uint16(quiet if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)

    @jit
    def to_bf16_rows(dst, src, r0, r1):
        """dst[r0:r1] = bf16(src[r0:r1]) (see ROUNDING), row by row."""
        for r in range(r0, r1):
            _round_row(dst[r], src[r].view(np.uint32))

    @jit
    def to_bf16_store_rows(store, src, r0, r1):
        """Rows r0:r1 of the float32 ``store`` (N, ceil(D/2)) := the bf16 pairs of src[r0:r1] (N, D).
        Same values as ``to_bf16_rows`` into ``_bf16_view(store, D)``, but each row is written as one
        contiguous uint16 run (3x faster than through the strided view, measured)."""
        for r in range(r0, r1):
            _round_row(store[r].view(np.uint16), src[r].view(np.uint32))

    from ._blas import DNNL_ABI as _ABI
    from ._blas import _c_call, _omp_set_num_threads, _one_omp_thread

    _i32, _f32, _vp = types.int32, types.float32, types.voidptr
    _call_bf16 = _c_call(SYMBOL, *_ABI)
    _call_onednn = _c_call("fastbp_dnnl_gemm_bf16bf16f32", *_ABI)
    _call_mkl = _c_call("fastbp_mkl_cblas_gemm_bf16bf16f32", _i32, _i32, _i32, _i32, _i32, _i32, _f32, _vp, _i32,
                        _vp, _i32, _f32, _vp, _i32)      # cblas, 32-bit ints (MKL's LP64 interface)

    def _onednn_shim(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        keep = _one_omp_thread()              # one thread for this call: numba owns the threads
        _call_onednn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        _omp_set_num_threads(keep)

    def _mkl_shim(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        _call_mkl(101, 112 if ta == 84 else 111, 112 if tb == 84 else 111, m, n, k, alpha, a, lda, b, ldb, beta, c,
                  ldc)                               # CblasRowMajor, CblasTrans / CblasNoTrans

    _SHIM_FUNCS = {"onednn": _onednn_shim, "mkl": _mkl_shim}

    def _shim_address(name):
        """Compile (or load from numba's cache) ``name``'s shim; its address."""
        from numba import cfunc
        c = cfunc(types.void(*_ABI), cache=JIT_OPTIONS["cache"], nopython=True)(_SHIM_FUNCS[name])
        _LIB.append(c)
        return c.address

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
        _call_bf16(84 if trans_a else 78, 84 if trans_b else 78, m, n, k, alpha, A, max(A.strides[0] // 2, 1),
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
