import numpy as np
import pytest

from fastbp.kernels import JIT_DISABLED


def pytest_collection_modifyitems(config, items):
    """In pure-Python mode (NUMBA_DISABLE_JIT=1) skip what only means something when compiled."""
    if not JIT_DISABLED:
        return
    skip = pytest.mark.skip(reason="needs the JIT (machine code, BLAS binding or NRT statistics)")
    for item in items:
        if "jit" in item.keywords:
            item.add_marker(skip)

# Stated tolerances: float64 is checked tightly, float32 loosely (single precision
# accumulations over up to 513 terms plus the ~1e-7 error of the vectorized tanh/exp).
TOL = {np.float64: dict(rtol=1e-9, atol=1e-11), np.float32: dict(rtol=2e-4, atol=2e-5)}


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def close(a, b, dtype):
    np.testing.assert_allclose(a, b, **TOL[dtype])


def central_diff(f, x, idx, eps=1e-6):
    """Central finite difference of scalar f() w.r.t. x.flat[i] for i in idx (x modified in place)."""
    out = []
    for i in idx:
        old = x.flat[i]
        x.flat[i] = old + eps
        fp = f()
        x.flat[i] = old - eps
        fm = f()
        x.flat[i] = old
        out.append((fp - fm) / (2 * eps))
    return np.array(out)
