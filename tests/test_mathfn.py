"""Accuracy of the vectorizable float32 exp/tanh/sigmoid over the whole float32 range, and SIMD codegen."""
import numpy as np
import pytest
from numba import njit

from fastbp.kernels import JIT_DISABLED
from fastbp.kernels import activation as KA
from fastbp.kernels import mathfn as M

# every 61st bit pattern: ~70 million finite float32 values covering the whole range; in
# pure-Python mode (NUMBA_DISABLE_JIT=1, the coverage run) every 214,741st: ~20,000 values
STRIDE = 214741 if JIT_DISABLED else 61


#: bit patterns per chunk: the whole range is walked in pieces so the suite's memory stays small
#: (all ~70 million values at once, with their float64 references, peaked at 4.3 GB)
CHUNK = 1 << 22


def float_chunks():
    """The finite float32 values of every STRIDE-th bit pattern, in chunks of CHUNK patterns."""
    step = STRIDE * CHUNK
    for start in range(0, 2 ** 32, step):
        bits = np.arange(start, min(start + step, 2 ** 32), STRIDE, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        yield x[np.isfinite(x)]


def test_tanh_error_bound():
    worst_abs = worst_rel = 0.0
    for x in float_chunks():
        out = np.empty_like(x)
        M.tanh_array(out, x)
        ref = np.tanh(x.astype(np.float64))
        err = np.abs(out - ref)
        worst_abs = max(worst_abs, err.max())
        tiny = np.abs(ref) > 1e-30
        worst_rel = max(worst_rel, (err[tiny] / np.abs(ref[tiny])).max(initial=0.0))
        assert np.all(out[x > 10] == 1) and np.all(out[x < -10] == -1)
    assert worst_abs <= 2.5e-7
    assert worst_rel <= 4e-7


def test_sigmoid_error_bound():
    for x in float_chunks():
        out = np.empty_like(x)
        M.sigmoid_array(out, x)
        with np.errstate(over="ignore"):
            ref = 1 / (1 + np.exp(-x.astype(np.float64)))
        assert np.abs(out - ref).max() <= 2e-7
        assert np.all((out >= 0) & (out <= 1))


def test_exp_error_bound():
    for x in float_chunks():
        out = np.empty_like(x)
        M.exp_array(out, x)
        with np.errstate(over="ignore"):
            ref = np.exp(x.astype(np.float64))
        normal = (ref >= 2.0 ** -126) & (ref <= np.finfo(np.float32).max)
        assert (np.abs(out[normal] - ref[normal]) / ref[normal]).max(initial=0.0) <= 4e-7
        assert np.all(out[ref < 2.0 ** -126] <= 2.0 ** -126)
        assert np.all(np.isinf(out[ref > np.finfo(np.float32).max]))


jit_only = pytest.mark.jit   # inspects machine code


def _asm(disp, *args):
    """Assembly of a fresh, uncached compile (numba refuses to inspect code loaded from its cache)."""
    opts = {k: v for k, v in disp.targetoptions.items() if k not in ("cache", "nopython")}
    fresh = njit(**opts)(disp.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_asm(sig) for sig in fresh.signatures)


@pytest.mark.parametrize("fn", [M.tanh_array, M.exp_array, M.sigmoid_array])
@jit_only
def test_hot_loops_vectorize(fn):
    x = np.linspace(-5, 5, 1000, dtype=np.float32)
    asm = _asm(fn, np.empty_like(x), x)
    assert "ymm" in asm or "zmm" in asm, "no 256/512-bit SIMD registers: the loop fell back to scalar code"
    for libm in ("tanhf", "expf", "tanh@", "exp@"):
        assert libm not in asm, f"scalar libm call {libm} in the hot loop"
    # float32 throughout: one float64 step (math.floor returns an int64) once made the whole
    # polynomial float64, half the lanes per register and 1.9x slower
    ops = {ln.split()[0] for ln in asm.splitlines() if ln.split() and not ln.split()[0].endswith(":")}
    widened = sorted(op for op in ops if op in ("vcvtps2pd", "vcvtss2sd", "vdivpd", "vdivsd") or
                     (op.startswith("vfmadd") and op.endswith(("pd", "sd"))))
    assert not widened, f"float64 arithmetic in the float32 loop: {widened}"


@jit_only
def test_fused_activation_kernel_vectorizes():
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    out = np.empty_like(x)
    asm = _asm(KA.activation_forward_launch, out, x, KA.TANH, 0.01, 1)
    assert ("ymm" in asm or "zmm" in asm) and "tanhf" not in asm


def test_nan_and_inf_propagate_like_libm():
    for f, ref in ((M.exp_f32, np.exp), (M.tanh_f32, np.tanh), (M.sigmoid_f32, lambda v: 1 / (1 + np.exp(-v)))):
        assert np.isnan(f(np.float32(np.nan))), f
        with np.errstate(over="ignore"):
            for v in (np.float32(np.inf), np.float32(-np.inf)):
                assert f(v) == np.float32(ref(v)), (f, v)


def test_nan_propagates_in_the_vectorized_loops():
    """The SIMD loops, not only the scalar calls: a clamp compiled to vminps/vmaxps with its
    operands swapped would turn NaN into the clamp bound (tanh(NaN) = 1) without a trace."""
    x = np.full(1000, np.nan, np.float32)
    x[::3] = 0.5
    for f in (M.tanh_array, M.exp_array, M.sigmoid_array):
        out = np.empty_like(x)
        f(out, x)
        assert np.isnan(out[1::3]).all() and np.isnan(out[2::3]).all(), f
        assert np.isfinite(out[::3]).all(), f
