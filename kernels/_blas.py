"""GEMM for the kernels: one strided ABI, bound to a BLAS on first use.

Shapes: ``C (M, N) = alpha * op(A) @ op(B) + beta * C``, ``op(A)`` is (M, K), ``op(B)`` is (K, N),
every operand a 2-D view whose last axis has unit stride (row or column slices are fine).

Design
------
Kernels call BLAS from jitted code, also inside ``prange`` bodies, and must survive
``cache=True``: a function address baked into machine code would be stale in the next process.
So kernels load the address of a function with one fixed ABI,

    void gemm(i64 m, i64 n, i64 k, f32 alpha, f32* a, i64 rsa, i64 csa,
              f32* b, i64 rsb, i64 csb, f32 beta, f32* c, i64 rsc, i64 csc)

(and the float64 twin) from a two-entry table whose address is registered under the symbol
``fastbp_gemm_slot_v3`` (the version changes whenever the ABI does, so code cached against an
older ABI fails to link instead of calling a mismatched function).  Importing this module only
allocates that table and points both entries at a small *binder*; nothing is loaded.

Binding (``bind()``) happens once, on first kernel use: the checked wrappers and the model call
it before their first launch, and if a user's own ``@njit`` code reaches a GEMM first, the binder
entry itself binds (under a lock) and forwards the call.  ``bind()`` loads the chosen library,
compiles (or loads from numba's cache) a small ``cfunc`` shim that maps the strided ABI onto it,
and writes the shim's address into the table.  The shims reach the libraries through registered
symbol names too, so everything is cacheable and the backend can differ between processes that
share one cache.

BLAS is always called single-threaded: fastbp has one thread domain, numba's.  Kernels cut each
GEMM into per-thread blocks inside ``prange``; no second thread pool ever spins against numba's.

Backends (``FASTBP_BLAS`` = ``auto`` | ``blis`` | ``openblas`` | ``mkl`` | ``onednn``):

* ``blis``: PyPI's ``blis`` package (single-threaded BLIS 0.7).  It does not recognise newer
  CPUs (e.g. AMD Zen 5 is "generic", ~40 GFLOP/s), so on a CPU with AVX-512 F/DQ/BW/VL we build
  its ``skx`` (AVX-512) kernel context ourselves and pass it to every call.
* ``openblas``: SciPy's bundled OpenBLAS through ``scipy.linalg.cython_blas`` (SciPy's own copy,
  not numpy's); binding sets *its* thread count to 1 (see ``_load_openblas``).
* ``mkl``: ``libmkl_rt`` from PyPI's ``mkl``, sequential layer.
* ``onednn``: ``dnnl_sgemm`` from PyPI's ``onednn-cpu-gomp`` (oneDNN's GNU-OpenMP build; float64
  stays on SciPy's OpenBLAS: oneDNN has no dgemm).  oneDNN runs serially inside an active OpenMP
  team (numba's omp layer shares the system libgomp) but starts a team of its own elsewhere, so its
  shim sets OpenMP's thread count to 1 for each call and restores it.  Builds whose CPU runtime is
  TBB or a threadpool (PyPI ``onednn`` 2026.x is TBB/SYCL) are refused.

``auto``: the candidates are BLIS (on a CPU with AVX-512, when ``blis`` imports), SciPy's
OpenBLAS, MKL when PyPI ``mkl`` is installed (``fastbp[mkl]`` or ``fastbp[bf16]``) and oneDNN when
``onednn-cpu-gomp`` is (``fastbp[onednn]`` or ``fastbp[bf16]``).  With
more than one, a child process binds them all and times a training step's GEMMs as the kernels
cut them (``gemm_floor.gemm_only_step``, 784-512-512-10 at batch 32, 128 and 512) on numba's
threads, swapping each backend's shims into the table in turn (``_time_floors``); the fastest by
geometric mean is kept and remembered per machine and library build in ``blas-choice.json`` in
fastbp's cache folder, so later processes do not time again (2.7 s once per machine; ~11 s when
numba has not cached the floor kernels yet).  Timing single blocks serially (the fallback, and the
only way when a kernel binds: ``_time_shims``) did not predict the threaded step: on an AMD EPYC
VM it picked MKL, which ran the step 10-13% slower than OpenBLAS at batch 128 and 512.
(Measured: BLIS skx was 1.7x faster than OpenBLAS on an AMD Zen 5 VM; on an Intel VM with
AVX-512 and AMX, MKL made steps 1.2-1.45x faster than OpenBLAS.)  Ranks under an MPI launcher do
not time (they would all at once): they use the remembered choice, else BLIS (else OpenBLAS).

Pure-Python mode (``NUMBA_DISABLE_JIT=1``): ``gemm`` is numpy's matmul; nothing is bound.
"""
import ctypes
import glob
import os
import sys
import threading

import numpy as np

from ._jit import JIT_DISABLED, JIT_OPTIONS, cast_like, jit

BACKEND = None          # "blis", "openblas", "mkl" or "onednn" once bound
LIBRARY_PATH = None     # file that provides the GEMM
BLIS_KERNELS = None     # BLIS kernel set in use ("skx", or BLIS's own choice)

_KEEP = []              # objects whose addresses were registered: keep them alive
_LOCK = threading.RLock()
SLOT_SYMBOL = "fastbp_gemm_slot_v3"
_SLOTS = (ctypes.c_void_p * 2)()    # [0]: float32 shim, [1]: float64 shim

_I64 = ctypes.c_int64
_VP = ctypes.c_void_p
_PROTOS = [ctypes.CFUNCTYPE(None, _I64, _I64, _I64, ft, _VP, _I64, _I64, _VP, _I64, _I64, ft, _VP, _I64, _I64)
           for ft in (ctypes.c_float, ctypes.c_double)]


def _capsule_address(capsule):
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def _load_openblas():
    """(sgemm, dgemm, library path, None).  SciPy's bundled OpenBLAS is set to one thread.

    That is a global setting of SciPy's own copy (numpy's OpenBLAS is a different library and is
    not touched), made when this backend binds, not at import.  OpenBLAS's
    ``openblas_set_num_threads_local`` was tried for per-call single threading: in SciPy's build it
    changes the process-wide count, so concurrent set/restore pairs from numba's threads raced and
    left it at 1 in 3 of 4 runs."""
    import scipy
    from scipy.linalg import cython_blas
    from threadpoolctl import ThreadpoolController
    s = _capsule_address(cython_blas.__pyx_capi__["sgemm"])
    d = _capsule_address(cython_blas.__pyx_capi__["dgemm"])
    root = os.path.dirname(os.path.dirname(scipy.__file__))
    path = None
    for c in ThreadpoolController().lib_controllers:
        if c.user_api == "blas" and c.filepath.startswith(root) and "scipy.libs" in c.filepath:
            c.set_num_threads(1)
            path = c.filepath
    return s, d, path, None


def _find_in_env_lib(pattern):
    """The first file matching ``pattern`` in this environment's lib folder (where PyPI's data
    wheels put shared libraries), or None."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        hits = sorted(glob.glob(os.path.join(prefix, "lib", pattern)))
        if hits:
            return hits[0]
    return None


def _find_mkl():
    """libmkl_rt of this environment (PyPI ``mkl``), or None."""
    return _find_in_env_lib("libmkl_rt.so*")


def _load_mkl():
    path = _find_mkl()
    if path is None:
        raise OSError("FASTBP_BLAS=mkl: libmkl_rt not found (pip install mkl)")
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    lib.MKL_Set_Threading_Layer(ctypes.c_int(1))  # MKL_THREADING_SEQUENTIAL
    _KEEP.append(lib)
    return (ctypes.cast(lib.sgemm, ctypes.c_void_p).value, ctypes.cast(lib.dgemm, ctypes.c_void_p).value, path,
            None)


def _find_onednn():
    """libdnnl of this environment (PyPI ``onednn-cpu-gomp``), or None."""
    return _find_in_env_lib("libdnnl.so*")


class _DnnlVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


_DNNL_RUNTIMES = {1: "sequential", 2: "OpenMP"}   # DNNL_RUNTIME_SEQ / _OMP; TBB (4) and others are refused


def _open_onednn(path):
    """(library, path, description) of the oneDNN at ``path``, with the OpenMP thread-count functions
    its shims use registered; OSError when it is missing (None) or not a sequential/OpenMP build (a
    TBB or threadpool build would start threads of its own inside numba's)."""
    if path is None:
        raise OSError("oneDNN not found (pip install onednn-cpu-gomp)")
    lib = ctypes.CDLL(path)
    lib.dnnl_version.restype = ctypes.POINTER(_DnnlVersion)
    v = lib.dnnl_version().contents
    if v.cpu_runtime not in _DNNL_RUNTIMES:
        raise OSError(f"{path}: oneDNN {v.major}.{v.minor} uses CPU runtime {v.cpu_runtime}; fastbp needs its "
                      f"sequential or GNU OpenMP build (pip install onednn-cpu-gomp)")
    gomp = ctypes.CDLL("libgomp.so.1")         # the OpenMP runtime oneDNN and numba's omp layer share
    import llvmlite.binding as llvm
    llvm.add_symbol("fastbp_omp_get_max_threads", ctypes.cast(gomp.omp_get_max_threads, ctypes.c_void_p).value)
    llvm.add_symbol("fastbp_omp_set_num_threads", ctypes.cast(gomp.omp_set_num_threads, ctypes.c_void_p).value)
    _KEEP.extend([lib, gomp])
    return lib, path, f"oneDNN {v.major}.{v.minor}.{v.patch} ({_DNNL_RUNTIMES[v.cpu_runtime]})"


def _load_onednn():
    """oneDNN's sgemm for float32; float64 stays on SciPy's OpenBLAS (oneDNN has no dgemm)."""
    lib, path, _ = _open_onednn(_find_onednn())
    _, d, _, _ = _load_openblas()
    return ctypes.cast(lib.dnnl_sgemm, ctypes.c_void_p).value, d, path, None


def _cpuinfo(field):
    """The first ``field`` line's value in /proc/cpuinfo ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    return set(_cpuinfo("flags").split())


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else the platform's processor string."""
    import platform
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def _cpu_has_avx512():
    return {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= cpu_flags()


def _load_blis():
    """(bli_sgemm_ex, bli_dgemm_ex, context address, library path, kernel set name)."""
    import blis.cy
    lib = ctypes.CDLL(blis.cy.__file__)
    lib.bli_init()
    lib.bli_arch_query_id.restype = ctypes.c_int
    lib.bli_arch_string.restype = ctypes.c_char_p
    arch = lib.bli_arch_string(lib.bli_arch_query_id()).decode()
    if arch != "generic":
        lib.bli_gks_query_cntx.restype = ctypes.c_void_p
        cntx, name = lib.bli_gks_query_cntx(), arch
    elif _cpu_has_avx512():
        buf = ctypes.create_string_buffer(1 << 16)   # cntx_t is a few KiB in BLIS 0.7
        lib.bli_cntx_init_skx(buf)
        _KEEP.append(buf)
        cntx, name = ctypes.addressof(buf), "skx"
    else:
        raise OSError("BLIS recognises no optimised kernel set for this CPU")
    _KEEP.append(lib)
    # BLIS sized its global packing pools from the generic context at bli_init; a request for a
    # larger block later re-initialises a pool, and if another thread holds one of its blocks
    # at that moment BLIS aborts the process ("not all blocks were checked back in").  Size the
    # pools from the context we will use, once, before any concurrent call.
    lib.bli_membrk_query.restype = ctypes.c_void_p
    membrk = lib.bli_membrk_query()
    lib.bli_membrk_finalize_pools(ctypes.c_void_p(membrk))
    lib.bli_membrk_init_pools(ctypes.c_void_p(cntx), ctypes.c_void_p(membrk))
    _self_check_blis(lib, cntx)
    return (ctypes.cast(lib.bli_sgemm_ex, ctypes.c_void_p).value,
            ctypes.cast(lib.bli_dgemm_ex, ctypes.c_void_p).value, cntx, blis.cy.__file__, name)


def _self_check_blis(lib, cntx):
    """A few single-threaded products per dtype (small and large paths) checked exactly."""
    I, P = ctypes.c_int64, ctypes.c_void_p
    for fn, dt in ((lib.bli_sgemm_ex, np.float32), (lib.bli_dgemm_ex, np.float64)):
        fn.argtypes = [ctypes.c_int, ctypes.c_int, I, I, I, P, P, I, I, P, I, I, P, P, I, I, P, P]
        fn.restype = None
        one, zero = np.ones(1, dt), np.zeros(1, dt)
        for m, n, k in ((8, 8, 8), (64, 512, 256), (512, 512, 512)):   # small (sup) and large paths
            A, B, C = np.ones((m, k), dt), np.ones((k, n), dt), np.empty((m, n), dt)
            fn(0, 0, m, n, k, one.ctypes.data, A.ctypes.data, k, 1, B.ctypes.data, n, 1,
               zero.ctypes.data, C.ctypes.data, n, 1, cntx, None)
            if not np.all(C == k):
                raise OSError(f"BLIS {dt.__name__} gemm self-check failed for ({m}, {n}, {k})")



CHOICE = None           # how ``auto`` chose: {"how": "measured" | "remembered", "ms": {...}}
CHOICE_FILE = "blas-choice.json"
# (m, n, k, A transposed, B transposed): a step's per-thread GEMM blocks, 784-512-512 MLP on 2
# threads at batch 32, 128 and 512 (forward x @ W[:, block], dx = dz @ W[block]^T, dW = x^T dz)
_CHOICE_SHAPES = [s for B in (32, 128, 512) for s in ((B, 256, 784, False, False), (B, 256, 512, False, True),
                                                      (392, 512, B, True, False))]


def _choice_key(paths):
    """This machine and these library files: a changed CPU or library upgrade times again."""
    import hashlib
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = "".join(sorted({ln for ln in f if ln.startswith(("model name", "flags"))}))
    except OSError:
        pass
    stamps = [f"{p}:{os.path.getsize(p)}:{int(os.path.getmtime(p))}" for p in paths if p and os.path.exists(p)]
    return hashlib.sha256("\n".join([cpu, *stamps]).encode()).hexdigest()[:32]


def _choice_path(name=CHOICE_FILE):
    """Where the pick is remembered: fastbp's per-user cache folder ($XDG_CACHE_HOME/fastbp or
    ~/.cache/fastbp), else numba's NUMBA_CACHE_DIR; None when neither is writable.  The user's
    folder comes first so that processes with different NUMBA_CACHE_DIRs on one machine bind the
    same BLAS (and so compute the same bits)."""
    from numba import config

    from ._jit import _writable
    home = os.environ.get("HOME")
    xdg = os.environ.get("XDG_CACHE_HOME") or (os.path.join(home, ".cache") if home else None)
    for base in ([os.path.join(xdg, "fastbp")] if xdg else []) + ([config.CACHE_DIR] if config.CACHE_DIR else []):
        if _writable(base):
            return os.path.join(base, name)
    return None


def _time_shims(shims, reps=5):
    """{name: per-shape best seconds} for float32 shims ``{name: address}``, interleaved."""
    rng = np.random.default_rng(0)
    best = {k: [float("inf")] * len(_CHOICE_SHAPES) for k in shims}
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    calls = {k: _PROTOS[0](a) for k, a in shims.items()}
    import time
    for i, (m, n, k, ta, tb) in enumerate(_CHOICE_SHAPES):
        A = rng.random((k, 784) if ta else (m, 784), dtype=np.float32)        # blocks of wider arrays
        Bm = rng.random((n, 512) if tb else (k, 512), dtype=np.float32)
        C = np.empty((m, n), np.float32)
        rsa, csa = (1, 784) if ta else (784, 1)
        rsb, csb = (1, 512) if tb else (512, 1)
        for _ in range(reps):
            for name, call in calls.items():
                t = time.perf_counter()
                call(m, n, k, one, A.ctypes.data, rsa, csa, Bm.ctypes.data, rsb, csb, zero, C.ctypes.data, n, 1)
                best[name][i] = min(best[name][i], time.perf_counter() - t)
    return best


def _under_launcher():
    """True when an MPI launcher started several ranks (they would all time BLAS at once)."""
    for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        v = os.environ.get(k, "")
        if v.isdigit() and int(v) > 1:
            return True
    return False


def _library_files():
    """Files that identify the two candidate builds (BLIS's extension, SciPy's OpenBLAS)."""
    out = []
    try:
        import blis.cy
        out.append(blis.cy.__file__)
    except ImportError:
        pass
    import scipy
    out += sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs",
                                         "*openblas*")))
    return out + [p for p in [_find_mkl(), _find_onednn()] if p]


def _remembered(key, name=CHOICE_FILE):
    import json
    path = _choice_path(name)
    if path is None:
        return None
    try:
        with open(path) as f:
            known = json.load(f)
        return known.get(key) if isinstance(known, dict) else None
    except (OSError, ValueError):
        return None


def _remember(key, pick, name=CHOICE_FILE):
    import json
    path = _choice_path(name)
    if path is None:
        return
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[key] = pick
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(known, f)
        os.replace(tmp, path)
    except OSError:
        pass


#: batch sizes at which the choice times a step's GEMMs (784-512-512-10 MLP, kernels/gemm_floor.py)
_CHOICE_BATCHES = (32, 128, 512)


def _time_floors(addrs, nt, rounds=7):
    """{name: [best seconds per batch in _CHOICE_BATCHES]}: the step's GEMMs as the kernels cut
    them (``gemm_only_step``) on ``nt`` numba threads, each backend's shims swapped into the table
    in turn, round-robin (a load burst then hits every backend alike)."""
    import time

    import numba

    from .gemm_floor import floor_operands, gemm_only_step
    numba.set_num_threads(max(1, min(nt, numba.config.NUMBA_NUM_THREADS)))
    rng = np.random.default_rng(0)
    best = {k: [float("inf")] * len(_CHOICE_BATCHES) for k in addrs}

    def per_call(name, ops, reps):
        _SLOTS[0], _SLOTS[1] = addrs[name]
        t = time.perf_counter()
        for _ in range(reps):
            gemm_only_step(*ops, rows_from=FORWARD_ROWS_FROM[name])
        return (time.perf_counter() - t) / reps

    for i, B in enumerate(_CHOICE_BATCHES):
        ops = floor_operands(B, nt, rng)
        for name in addrs:                   # compile / load, first touch
            per_call(name, ops, 1)
        first = max(per_call(name, ops, 1) for name in addrs)
        reps = max(1, int(0.01 / max(first, 1e-6)))
        for _ in range(rounds):
            for name in addrs:
                best[name][i] = min(best[name][i], per_call(name, ops, reps))
    return best


def _choice_worker(argv):
    """``python -c ... nt name...``: time the named backends' step GEMMs here (a fresh process, so
    the caller's own threads stay idle meanwhile) and print {name: [seconds]} as JSON."""
    import json
    nt, names = int(argv[0]), argv[1:]
    _, addrs = _load_candidates(names, "auto")
    print(json.dumps(_time_floors(addrs, nt)), flush=True)


def _floors_in_subprocess(names):
    """``_time_floors`` for ``names`` on this process's thread count, in a child process; None
    when the child cannot run or fails (the caller then times serial blocks instead)."""
    import json
    import subprocess

    import numba
    code = "import sys; from fastbp.kernels._blas import _choice_worker; _choice_worker(sys.argv[1:])"
    env = dict(os.environ, FASTBP_BLAS="auto")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(numba.get_num_threads()), *names],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, env=env)
        out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    if not isinstance(out, dict) or set(out) != set(names):
        return None
    return out


def _measure_choice(addrs, key, parallel=True):
    """The fastest of the backends ``{name: [f32, f64 shim]}`` on this machine (geometric mean over
    the timed cases of each one's time relative to the first), remembered under ``key``.

    Timed as a step's GEMMs on numba's threads in a child process (``_floors_in_subprocess``):
    per-block serial timings did not predict the threaded step (AMD EPYC VM: MKL fastest per
    block, OpenBLAS 10-13% faster in the step).  Serial blocks (``_time_shims``) are the fallback
    when the child fails, and ``parallel=False`` asks for them: when binding from inside a kernel
    (the child would time against this process's spinning threads) and where the pick cannot be
    remembered (every process would pay the child)."""
    global CHOICE
    best = _floors_in_subprocess(sorted(addrs)) if parallel else None
    timing = f"a step's GEMMs at batch {', '.join(map(str, _CHOICE_BATCHES))} on numba's threads"
    if best is None:
        best = _time_shims({k: v[0] for k, v in addrs.items()})
        timing = "per-thread GEMM blocks, serially"
    names = sorted(best)
    ref = np.array(best[names[0]])
    score = {k: float(np.exp(np.mean(np.log(np.array(best[k]) / ref)))) for k in names}
    pick = min(names, key=lambda k: score[k])
    CHOICE = {"how": "measured", "timing": timing, "file": _choice_path(), "backend": pick,
              "relative": {k: score[k] / score[pick] for k in names},
              "ms": {k: [round(v * 1e3, 4) for v in best[k]] for k in names}}
    if key:
        _remember(key, pick)
    return pick


#: rows from which the dense forward is cut by rows of x rather than columns of W, per backend
#: (2 threads, 784-512-512 layers, fastbp's launches timed both ways: MKL by rows 7-20% faster
#: from 128 rows, 0-5% below; OpenBLAS and BLIS 10-40% slower by rows below 512, 0-3% faster from;
#: oneDNN (AMD EPYC VM, steps, 3 interleaved processes each) by rows from 128 rows 0-18% faster at 128
#: and 256 rows, even at 512-1024)
FORWARD_ROWS_FROM = {"mkl": 128, "openblas": 512, "blis": 512, "onednn": 128}


def forward_rows_from():
    """The bound backend's row-split threshold for the dense forward (binds; 0 in pure Python)."""
    return FORWARD_ROWS_FROM.get(bind(), 0)


def bound():
    """True once a BLAS is bound in this process."""
    return BACKEND is not None


def _load_candidates(candidates, want):
    """Load each of ``candidates`` (dropping BLIS when it cannot load and was not asked for) and
    compile its shims: ({backend: (shim, library path, BLIS kernel set)}, {backend: [f32, f64 shim
    addresses]})."""
    import llvmlite.binding as llvm
    from numba import cfunc
    candidates = list(candidates)
    bound = {}     # backend -> (shim or (f32 shim, f64 shim), library path, BLIS kernel set)

    def optional(name, load):
        """``load()``, or None when it fails and ``name`` was not asked for by name."""
        try:
            return load()
        except (ImportError, OSError, AttributeError) as e:
            if want == name:
                raise OSError(f"FASTBP_BLAS={name}: {e}") from None
            candidates.remove(name)
            return None

    got = optional("blis", _load_blis) if "blis" in candidates else None
    if got:
        bs, bd, cntx, path, kernels = got
        llvm.add_symbol("fastbp_bli_sgemm_ex", bs)
        llvm.add_symbol("fastbp_bli_dgemm_ex", bd)
        llvm.add_symbol("fastbp_blis_cntx", cntx)
        bound["blis"] = (_blis_shim, path, kernels)
    if "openblas" in candidates:
        s, d, path, _ = _load_openblas()
        llvm.add_symbol("fastbp_f77_sgemm", s)
        llvm.add_symbol("fastbp_f77_dgemm", d)
        bound["openblas"] = (_f77_shim, path, None)
    if "mkl" in candidates:
        s, d, path, _ = _load_mkl()
        llvm.add_symbol("fastbp_mkl_sgemm", s)
        llvm.add_symbol("fastbp_mkl_dgemm", d)
        bound["mkl"] = (_mkl_shim, path, None)
    got = optional("onednn", _load_onednn) if "onednn" in candidates else None
    if got:
        s, d, path, _ = got
        llvm.add_symbol("fastbp_dnnl_sgemm", s)
        llvm.add_symbol("fastbp_f77_dgemm", d)
        bound["onednn"] = ((_onednn_shim, _f77_shim), path, None)
    addrs = {}
    for name, (shim, _, _) in bound.items():
        addrs[name] = []
        for i, ft in enumerate((types.float32, types.float64)):
            c = cfunc(_shim_sig(ft), **_SHIM_OPTS)(shim[i] if isinstance(shim, tuple) else shim)
            _KEEP.append(c)
            addrs[name].append(c.address)
    return bound, addrs


def _auto_candidates():
    """The backends ``FASTBP_BLAS=auto`` chooses among on this machine (found, not loaded)."""
    return ((["blis"] if _cpu_has_avx512() else []) + ["openblas"] + (["mkl"] if _find_mkl() else [])
            + (["onednn"] if _find_onednn() else []))


def choice_pending():
    """True when the next ``bind()`` will time several BLAS candidates (``FASTBP_BLAS=auto``, more
    than one installed, no remembered pick for this machine): a few seconds, once per machine.
    Lets a caller announce that work and do it before anything is timed.  Loads nothing."""
    if BACKEND is not None or JIT_DISABLED or os.environ.get("FASTBP_BLAS", "auto").strip().lower() != "auto":
        return False
    candidates = _auto_candidates()
    if len(candidates) < 2 or _under_launcher() or _choice_path() is None:
        return False
    return _remembered(_choice_key(_library_files())) not in candidates


def bind(_in_kernel=False):
    """Bind the GEMM table to the backend chosen by ``FASTBP_BLAS`` (once; later calls return at once).

    Returns the backend name.  Raises ``ValueError`` for a bad ``FASTBP_BLAS`` and ``OSError`` when
    the requested library cannot be used."""
    global BACKEND, LIBRARY_PATH, BLIS_KERNELS, CHOICE
    if BACKEND is not None or JIT_DISABLED:
        return BACKEND or "numpy"
    with _LOCK:
        if BACKEND is not None:
            return BACKEND
        want = os.environ.get("FASTBP_BLAS", "auto").strip().lower()
        if want not in ("auto", "blis", "openblas", "mkl", "onednn"):
            raise ValueError(f"FASTBP_BLAS must be 'auto', 'blis', 'openblas', 'mkl' or 'onednn', got {want!r}")
        candidates = [want]
        key = None
        if want == "auto":
            candidates = _auto_candidates()
            key = _choice_key(_library_files()) if len(candidates) > 1 else None
            known = _remembered(key) if key else None
            if known in candidates:
                candidates = [known]
        bound, addrs = _load_candidates(candidates, want)
        if len(bound) > 1 and _under_launcher():   # ranks timing at once on shared cores could disagree
            backend = "blis" if "blis" in bound else "openblas"
            CHOICE = {"how": "default under an MPI launcher (no remembered choice)", "backend": backend}
        elif len(bound) > 1:
            # the child's ~3 s are paid once per machine only where the pick can be remembered
            backend = _measure_choice(addrs, key, parallel=not _in_kernel and _choice_path() is not None)
        else:
            backend = next(iter(bound))
            if want == "auto" and CHOICE is None and len(candidates) == 1 and key:
                CHOICE = {"how": "remembered", "file": _choice_path(), "backend": backend}
        _SLOTS[0], _SLOTS[1] = addrs[backend]
        LIBRARY_PATH, BLIS_KERNELS = bound[backend][1], bound[backend][2]
        BACKEND = backend
        return BACKEND


def _binder(k):
    """Table entry before binding: bind, then forward this one call to the bound shim."""
    proto = _PROTOS[k]

    def first_call(*args):
        try:
            bind(_in_kernel=True)
        except BaseException as e:   # cannot raise into jitted code: never return a garbage product
            sys.stderr.write(f"fastbp: binding BLAS failed inside a kernel: {type(e).__name__}: {e}\n")
            sys.stderr.flush()
            os.abort()
        proto(_SLOTS[k])(*args)
    return proto(first_call)


if not JIT_DISABLED:
    import llvmlite.binding as _llvm
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _BINDERS = [_binder(0), _binder(1)]
    _SLOTS[0] = ctypes.cast(_BINDERS[0], ctypes.c_void_p).value
    _SLOTS[1] = ctypes.cast(_BINDERS[1], ctypes.c_void_p).value
    _llvm.add_symbol(SLOT_SYMBOL, ctypes.addressof(_SLOTS))

    # Arrays and CPointers pass their data pointer; scalars pass by value unless the callee
    # takes them by reference (Fortran BLAS, BLIS's alpha/beta).
    def _ptr(context, builder, ty, val):
        i8p = ir.IntType(8).as_pointer()
        if isinstance(ty, types.Array):
            return builder.bitcast(context.make_array(ty)(context, builder, val).data, i8p)
        return builder.bitcast(val, i8p)

    def _scalar(builder, ty, val, width):
        if isinstance(ty, types.Integer) and val.type.width != width:
            return builder.trunc(val, ir.IntType(width)) if val.type.width > width else \
                builder.sext(val, ir.IntType(width))
        return val

    @intrinsic
    def _call_strided(typingctx, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc):
        """The kernels' entry point: entry 0 (float32) or 1 (float64) of the GEMM table."""
        if alpha not in (types.float32, types.float64):
            return None
        entry = 0 if alpha == types.float32 else 1
        sig = types.void(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)

        def codegen(context, builder, signature, args):
            i32, i64, i8p = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
            ft = context.get_value_type(signature.args[3])
            kinds = [i64, i64, i64, ft, i8p, i64, i64, i8p, i64, i64, ft, i8p, i64, i64]
            fnty = ir.FunctionType(ir.VoidType(), kinds)
            table = builder.module.globals.get(SLOT_SYMBOL)
            if table is None:
                table = cgutils.add_global_variable(builder.module, ir.ArrayType(i8p, 2), SLOT_SYMBOL)
                table.linkage = "external"
            addr = builder.load(builder.gep(table, [ir.Constant(i32, 0), ir.Constant(i32, entry)]))
            fn = builder.bitcast(addr, fnty.as_pointer())
            vals = [_ptr(context, builder, ty, v) if kind == i8p else _scalar(builder, ty, v, 64)
                    for v, ty, kind in zip(args, signature.args, kinds)]
            builder.call(fn, vals)
            return context.get_dummy_value()

        return sig, codegen

    def _f77_intrinsic(prefix):
        """An intrinsic calling ``{prefix}_{s,d}gemm``: Fortran ABI, every argument by reference,
        32-bit ints (LP64).  One per library, so two Fortran BLAS can be bound side by side."""
        @intrinsic
        def call(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            if alpha not in (types.float32, types.float64):
                return None
            name = f"{prefix}_sgemm" if alpha == types.float32 else f"{prefix}_dgemm"
            sig = types.void(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

            def codegen(context, builder, signature, args):
                i8p = ir.IntType(8).as_pointer()
                fnty = ir.FunctionType(ir.VoidType(), [i8p] * 13)
                fn = cgutils.get_or_insert_function(builder.module, fnty, name)
                out = []
                for val, ty in zip(args, signature.args):
                    if isinstance(ty, (types.Array, types.CPointer)):
                        out.append(_ptr(context, builder, ty, val))
                    else:
                        big = isinstance(ty, types.Integer) and ty.bitwidth > 8
                        v = _scalar(builder, ty, val, 32) if big else val
                        out.append(builder.bitcast(cgutils.alloca_once_value(builder, v), i8p))
                builder.call(fn, out)
                return context.get_dummy_value()

            return sig, codegen
        return call

    _call_f77 = _f77_intrinsic("fastbp_f77")     # SciPy's OpenBLAS
    _call_mkl = _f77_intrinsic("fastbp_mkl")     # MKL (PyPI mkl), sequential


    @intrinsic
    def _call_blis(typingctx, m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc):
        """``fastbp_bli_{s,d}gemm_ex`` with the registered context ``fastbp_blis_cntx``, rntm NULL."""
        if alpha not in (types.float32, types.float64):
            return None
        name = "fastbp_bli_sgemm_ex" if alpha == types.float32 else "fastbp_bli_dgemm_ex"
        sig = types.void(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)

        def codegen(context, builder, signature, args):
            i32, i64, i8p = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
            kinds = [i32, i32, i64, i64, i64, i8p, i8p, i64, i64, i8p, i64, i64, i8p, i8p, i64, i64, i8p, i8p]
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), kinds), name)
            cntx = builder.module.globals.get("fastbp_blis_cntx")
            if cntx is None:
                cntx = cgutils.add_global_variable(builder.module, ir.IntType(8), "fastbp_blis_cntx")
                cntx.linkage = "external"
            (m_, n_, k_, al, a_, rsa_, csa_, b_, rsb_, csb_, be, c_, rsc_, csc_) = args
            st = signature.args
            p = lambda i, v: _ptr(context, builder, st[i], v)
            s = lambda i, v: _scalar(builder, st[i], v, 64)
            ref = lambda v: builder.bitcast(cgutils.alloca_once_value(builder, v), i8p)
            zero = ir.Constant(i32, 0)   # BLIS_NO_TRANSPOSE: transposes are expressed by the strides
            builder.call(fn, [zero, zero, s(0, m_), s(1, n_), s(2, k_), ref(al), p(4, a_), s(5, rsa_), s(6, csa_),
                              p(7, b_), s(8, rsb_), s(9, csb_), ref(be), p(11, c_), s(12, rsc_), s(13, csc_),
                              builder.bitcast(cntx, i8p), ir.Constant(i8p, None)])
            return context.get_dummy_value()

        return sig, codegen


    def _c_call(symbol, *kinds):
        """An intrinsic calling the C function ``symbol`` (void; arguments converted to ``kinds``:
        numba integer/float types, or ``types.voidptr`` for an array's or pointer's data)."""
        names = ", ".join(f"a{i}" for i in range(len(kinds)))
        scope = {}
        exec(f"def call(typingctx, {names}):\n    return typer({names})", {"typer": lambda *a: typer(*a)}, scope)

        def typer(*args):
            sig = types.void(*args)

            def codegen(context, builder, signature, vals):
                lltys = [context.get_value_type(kd) for kd in kinds]
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), lltys), symbol)
                out = []
                for val, ty, kd, llty in zip(vals, signature.args, kinds, lltys):
                    if isinstance(ty, types.Array):
                        out.append(builder.bitcast(context.make_array(ty)(context, builder, val).data, llty))
                    elif kd == types.voidptr:
                        out.append(builder.bitcast(val, llty))
                    else:
                        out.append(context.cast(builder, val, ty, kd))
                builder.call(fn, out)
                return context.get_dummy_value()

            return sig, codegen
        return intrinsic(scope["call"])

    @intrinsic
    def _omp_get_max_threads(typingctx):
        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, []), "fastbp_omp_get_max_threads")
            return builder.call(fn, [])
        return types.int32(), codegen

    _omp_set_num_threads = _c_call("fastbp_omp_set_num_threads", types.int32)

    @jit(inline="always")
    def _one_omp_thread():
        """Before a oneDNN call: OpenMP's thread count set to 1; returns the caller's, to restore
        with ``_omp_set_num_threads(keep)`` after.  oneDNN's OpenMP GEMMs run serially inside an
        active OpenMP team (numba's omp layer shares the system libgomp) but start a team of their
        own in numba's 1-thread regions, on workqueue/tbb threads and from plain callers."""
        keep = _omp_get_max_threads()
        _omp_set_num_threads(1)
        return keep
    _i8, _i64, _f32, _vp = types.int8, types.int64, types.float32, types.voidptr
    #: oneDNN's row-major GEMM ABI (dnnl_sgemm; dnnl_gemm_bf16bf16f32 has the same with bf16 a, b)
    DNNL_ABI = (_i8, _i8, _i64, _i64, _i64, _f32, _vp, _i64, _vp, _i64, _f32, _vp, _i64)
    _call_dnnl_sgemm = _c_call("fastbp_dnnl_sgemm", *DNNL_ABI)

    _N = np.uint8(ord("N"))
    _T = np.uint8(ord("T"))


    def _shim_sig(ft):
        P = types.CPointer(ft)
        i = types.int64
        return types.void(i, i, i, ft, P, i, i, P, i, i, ft, P, i, i)


    _SHIM_OPTS = dict(cache=JIT_OPTIONS["cache"], nopython=True, error_model="numpy")


    @jit(inline="always")   # the mapping both Fortran shims share, inlined into each
    def _f77_args(m, n, k, rsa, csa, rsb, csb, rsc):
        # Column-major view: C^T (n x m) = op(B)^T (n x k) @ op(A)^T (k x m).  An operand is either
        # 'N' (unit stride down its columns) or 'T' (unit stride along its rows); along a dimension of
        # size 1 the stride is irrelevant and the leading dimension is chosen legal (>= rows).
        if csa == 1 and (m == 1 or rsa >= k):
            ta, lda = _N, (rsa if m > 1 else k)
        else:
            ta, lda = _T, (csa if k > 1 else m)
        if csb == 1 and (k == 1 or rsb >= n):
            tb, ldb = _N, (rsb if k > 1 else n)
        else:
            tb, ldb = _T, (csb if n > 1 else k)
        return ta, max(lda, 1), tb, max(ldb, 1), max(rsc if m > 1 else n, 1)


    def _f77_shim(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc):
        ta, lda, tb, ldb, ldc = _f77_args(m, n, k, rsa, csa, rsb, csb, rsc)
        _call_f77(tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)


    def _mkl_shim(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc):
        ta, lda, tb, ldb, ldc = _f77_args(m, n, k, rsa, csa, rsb, csb, rsc)
        _call_mkl(tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)


    def _onednn_shim(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc):
        # _f77_args describes A and B as row-major operands ('N'/'T' and leading dimension), which
        # is oneDNN's convention
        ta, lda, tb, ldb, ldc = _f77_args(m, n, k, rsa, csa, rsb, csb, rsc)
        keep = _one_omp_thread()
        _call_dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        _omp_set_num_threads(keep)

    def _blis_shim(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc):
        _call_blis(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)



if JIT_DISABLED:
    def gemm(C, A, B, trans_a, trans_b, alpha, beta):
        """Pure-Python mode: numpy's matmul, same semantics as the jitted ``gemm``."""
        a = A.T if trans_a else A
        b = B.T if trans_b else B
        with np.errstate(over="ignore", invalid="ignore"):   # IEEE results without warnings, as BLAS
            prod = (a @ b).astype(C.dtype, copy=False) * C.dtype.type(alpha)
            if beta == 0:
                C[...] = prod
            else:
                C[...] = prod + C.dtype.type(beta) * C
else:
    @jit
    def gemm(C, A, B, trans_a, trans_b, alpha, beta):
        """``C = alpha * op(A) @ op(B) + beta * C`` for row-major 2-D views (unit stride on the last
        axis).  Writes ``C`` only; ``beta = 0`` overwrites (NaN in C is not propagated).  No checking:
        callers guarantee shapes."""
        m, n = C.shape
        k = A.shape[0] if trans_a else A.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:
            b = cast_like(beta, C)
            for i in range(m):
                for j in range(n):
                    C[i, j] = b * C[i, j] if beta != 0 else 0
            return
        isz = C.itemsize
        lda = A.strides[0] // isz
        ldb = B.strides[0] // isz
        rsa, csa = (1, lda) if trans_a else (lda, 1)
        rsb, csb = (1, ldb) if trans_b else (ldb, 1)
        _call_strided(m, n, k, cast_like(alpha, C), A, rsa, csa, B, rsb, csb, cast_like(beta, C), C,
                      C.strides[0] // isz, 1)
