"""How every kernel cuts its work into per-thread chunks.

A parallel kernel runs ``for c in prange(nchunks)`` and chunk ``c`` owns the
half-open range ``split(n, nchunks, c)`` of rows (or columns, or flat indices).
Chunks are disjoint, so parallel loops write disjoint outputs; reductions write
one partial per chunk and are summed serially in chunk order (``serial_sum``),
which makes every result bitwise reproducible for a given ``nchunks``.
"""
from ._jit import jit


@jit
def split(n, parts, i):
    """Bounds [lo, hi) of part ``i`` when ``n`` items are cut into ``parts`` near-equal parts."""
    return (i * n) // parts, ((i + 1) * n) // parts


@jit
def serial_sum(partial, n):
    """partial[0] + ... + partial[n - 1], left to right (float64)."""
    s = 0.0
    for i in range(n):
        s += partial[i]
    return s


@jit
def copy_rows(dst, src, r0, r1):
    """dst[r0:r1] = src[r0:r1] without numba's overlap temporary (a no-op when dst is src)."""
    if dst.ctypes.data == src.ctypes.data:
        return
    for r in range(r0, r1):
        d = dst[r]
        s = src[r]
        for c in range(src.shape[1]):
            d[c] = s[c]
