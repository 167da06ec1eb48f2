"""Vectorizable exp / tanh / sigmoid for the kernels.

pip's llvmlite has no SVML, so ``np.exp``/``np.tanh`` inside ``@njit`` become one
scalar libm call per element (measured 391 us vs numpy's 18 us on 128x512
float32).  The float32 versions here are branch-free (selects, not branches),
use only + - * / floor min max and an integer->float bit cast, so LLVM turns a
contiguous loop over them into SIMD code.  float64 keeps libm (accuracy first;
float64 is the checking precision, not the speed path).

Every step is float32 arithmetic (tested: no float64 instruction in the loops; a float64
``math.floor`` once made them run at half the SIMD width, tanh 1.9x slower).  Max errors
against float64 numpy over the whole float32 range are asserted in ``tests/test_mathfn.py``
(measured: exp 3.0e-7 relative, tanh 8.9e-8 absolute / 1.8e-7 relative, sigmoid 8.9e-8):

* ``exp_f32``: relative error <= 4e-7 where the result is a normal float32;
  results below 2**-126 are flushed to 0, above float32 max they are inf.
* ``tanh_f32``: absolute error <= 2.5e-7, relative <= 4e-7 (``e / (e + 2)`` with
  ``e = expm1(2|x|)``; measured 8.9e-8 / 1.8e-7).
* ``sigmoid_f32``: absolute error <= 2e-7.

Public names dispatch on the argument's type: ``exp``, ``tanh``, ``sigmoid``
(scalars, usable from any jitted code) and ``tanh_inplace`` etc. are not needed:
kernels call the scalar functions in their loops.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import JIT_DISABLED, JIT_OPTIONS, jit

if JIT_DISABLED:
    def _i32_as_f32(i):
        """Pure-Python fallback: the low 32 bits of ``i`` as a float32."""
        return np.array([int(i) & 0xFFFFFFFF], np.uint32).view(np.float32)[0]

    def _f32_as_i32(f):
        """Pure-Python fallback: the bits of float32 ``f`` as an int32."""
        return np.array([f], np.float32).view(np.int32)[0]
else:
    @intrinsic
    def _i32_as_f32(typingctx, i):
        """Reinterpret the low 32 bits of integer ``i`` as a float32."""
        if not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            v = args[0]
            if v.type.width != 32:
                v = builder.trunc(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())

        return types.float32(i), codegen

    @intrinsic
    def _f32_as_i32(typingctx, f):
        """Reinterpret the bits of float32 ``f`` as an int32."""
        if f != types.float32:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(f), codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)       # exact in float32 (few bits)
_LN2_LO = np.float32(1.428606765330187e-06)
_HI = np.float32(88.72283)     # above: overflow to inf
_LO = np.float32(-87.33654)    # below: result < 2**-126, flushed to 0
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)
# Taylor coefficients 1/k! for k = 2..7 (|r| <= ln2/2, truncation < 1e-8)
_E2 = np.float32(1 / 2)
_E3 = np.float32(1 / 6)
_E4 = np.float32(1 / 24)
_E5 = np.float32(1 / 120)
_E6 = np.float32(1 / 720)
_E7 = np.float32(1 / 5040)
# tanh's argument 2|x| is clamped here: tanh(20) is 1 in float32 and exp(40) far from overflow
_TANH_CLAMP = np.float32(40.0)


@jit
def _reduce_ln2(u):
    """(n, r) with u = n ln2 + r, n integral, |r| <= ln2 / 2 (Cody-Waite: ln2 in two parts)."""
    n = np.float32(np.floor(u * _LOG2E + _HALF))   # float32 throughout: math.floor gives an int64,
    return n, (u - n * _LN2_HI) - n * _LN2_LO       # which made all below float64 (half the lanes)


@jit
def _exp_tail(r):
    """P(r) = 1/2 + r/6 + ... + r^5/7!, so that exp(r) = 1 + r + r^2 P(r) (truncation < 1e-8)."""
    p = _E7
    p = p * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    return p * r + _E2


@jit
def exp_f32(x):
    """float32 exp, branch-free; flushes results below 2**-126 to 0; NaN gives NaN."""
    if JIT_DISABLED and x != x:   # pure Python: math.floor(nan) raises; compiled code gives NaN below
        return x
    n, r = _reduce_ln2(min(max(x, _LO), _HI))
    p = _exp_tail(r) * r + _ONE
    p = p * r + _ONE
    # 2**n from the exponent bits; n reaches 128 just below the overflow threshold, so that case
    # is p * 2**127 with one more added to the exponent field of the product: an integer add,
    # which fastmath's reassociation cannot turn into p * (2**127 * 2) = p * inf
    big = n > np.float32(127.0)
    ni = np.int32(n - _ONE if big else n)
    y = p * _i32_as_f32((ni + 127) << 23)
    y = _i32_as_f32(_f32_as_i32(y) + (np.int32(1 << 23) if big else np.int32(0)))
    y = _ZERO if x < _LO else y
    return _INF if x > _HI else y


@jit
def tanh_f32(x):
    """float32 tanh, branch-free: with e = expm1(2|x|), tanh|x| = e / (e + 2), exact in the limit of
    small |x| (no cancellation, so no separate polynomial near 0); |x| is clamped at 20, where
    tanh is 1 in float32 (it is from |x| ~ 9 on)."""
    if JIT_DISABLED and x != x:   # pure Python: np.int32(nan) below raises; compiled code gives NaN
        return x
    a = abs(x)
    u = min(a + a, _TANH_CLAMP)                     # NaN stays NaN (min keeps its first argument)
    n, r = _reduce_ln2(u)                           # 0 <= n <= 58
    q = (r * r) * _exp_tail(r) + r                  # expm1(r)
    s = _i32_as_f32((np.int32(n) + 127) << 23)      # 2**n, exact
    e = s * q + (s - _ONE)                          # expm1(u) = 2**n expm1(r) + (2**n - 1)
    y = e / (e + _TWO)
    return -y if x < _ZERO else y


@jit
def sigmoid_f32(x):
    """float32 logistic sigmoid 1 / (1 + exp(-x)), branch-free."""
    return _ONE / (_ONE + exp_f32(-x))


@jit
def exp_f64(x):
    return math.exp(x)


@jit
def tanh_f64(x):
    return math.tanh(x)


@jit
def sigmoid_f64(x):
    # stable for both signs: exp never overflows
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


if JIT_DISABLED:   # pure-Python mode: math.exp raises OverflowError where machine code gives inf
    exp_f64 = jit(lambda x: float(np.exp(np.float64(x))))


def _dispatching(name, f32, f64):
    def stub(x):   # called only in pure-Python mode (NUMBA_DISABLE_JIT=1); jitted code uses the overload
        return f32(x) if isinstance(x, np.float32) else f64(x)
    stub.__name__ = name
    if JIT_DISABLED:
        return stub

    @overload(stub, jit_options=JIT_OPTIONS)
    def _ov(x):
        if x == types.float32:
            return lambda x: f32(x)
        if isinstance(x, types.Float):
            return lambda x: f64(x)
        return None
    return stub


exp = _dispatching("exp", exp_f32, exp_f64)
tanh = _dispatching("tanh", tanh_f32, tanh_f64)
sigmoid = _dispatching("sigmoid", sigmoid_f32, sigmoid_f64)


@jit
def exp_array(out, x):
    """out[i] = exp(x[i]) over 1-D contiguous arrays (writes out)."""
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


@jit
def tanh_array(out, x):
    """out[i] = tanh(x[i]) over 1-D contiguous arrays (writes out)."""
    for i in range(x.shape[0]):
        out[i] = tanh(x[i])


@jit
def sigmoid_array(out, x):
    """out[i] = sigmoid(x[i]) over 1-D contiguous arrays (writes out)."""
    for i in range(x.shape[0]):
        out[i] = sigmoid(x[i])
