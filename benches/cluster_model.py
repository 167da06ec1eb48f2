"""Cost model of data-parallel training: predicted step time for M machines x N ranks.

    T_step = T_single(B / M rows, on one machine's cores) + T_allreduce

* ``T_single``: one process's training step on the rows one machine gets, on all its cores.  On
  one machine, N ranks x (cores / N) threads share the same cores, memory and caches, so their
  compute costs what one process on all cores costs for the whole batch (measured below: splitting
  a machine into ranks did not make its compute faster).
* ``T_allreduce``: the gradient buffer (4 bytes per parameter in fp32) summed over every rank.
  Within a machine, a measured cost (``fastbp bench --distributed`` prints it); across machines,
  a ring all-reduce: 2 (M - 1) / M x bytes / bandwidth + 2 (M - 1) x latency.  It is not
  overlapped with the backward (fastbp reduces once, after it).

Usage: python benches/cluster_model.py [--single-ms 128:1.35,512:2.80,2048:8.28] [--machines 8]
The default single-machine step times are the 16-core Intel VM's (docs/benchmarks.md).
"""
import argparse
import sys

PARAMS = 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10    # the MLP 784-512-512-10


def ring_allreduce_s(nbytes, machines, gbit_s, latency_s):
    """Seconds for a ring all-reduce of ``nbytes`` over ``machines`` on links of ``gbit_s``."""
    if machines <= 1:
        return 0.0
    bw = gbit_s * 1e9 / 8
    return 2 * (machines - 1) / machines * nbytes / bw + 2 * (machines - 1) * latency_s


def step_s(single_s, allreduce_s):
    """Predicted seconds per data-parallel step (compute, then the all-reduce)."""
    return single_s + allreduce_s


def speedup(batch_rows, machines, single_of, link_gbit_s, latency_s, params=PARAMS, bytes_per=4):
    """Rows per second on ``machines`` machines over one machine's, at global batch ``batch_rows``
    (each machine gets batch_rows / machines rows); ``single_of(rows)`` -> one machine's step seconds."""
    per = batch_rows // machines
    t = step_s(single_of(per), ring_allreduce_s(params * bytes_per, machines, link_gbit_s, latency_s))
    return (batch_rows / t) / (per / single_of(per)), t


def _interp(points):
    """Step seconds at any row count, linear between measured (rows, ms) points."""
    pts = sorted(points.items())

    def f(rows):
        for (r0, t0), (r1, t1) in zip(pts, pts[1:]):
            if rows <= r1:
                return (t0 + (t1 - t0) * (rows - r0) / (r1 - r0)) / 1e3
        (r0, t0), (r1, t1) = pts[-2], pts[-1]
        return (t1 + (t1 - t0) * (rows - r1) / (r1 - r0)) / 1e3
    return f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single-ms", default="128:1.35,512:2.80,2048:8.28")
    ap.add_argument("--machines", type=int, default=8)
    ap.add_argument("--links", default="1:50e-6,25:10e-6", help="Gbit/s:latency_s,...")
    a = ap.parse_args(argv)
    single = _interp({int(k): float(v) for k, v in (p.split(":") for p in a.single_ms.split(","))})
    M = a.machines
    print(f"{M} machines, MLP 784-512-512-10 fp32 ({PARAMS * 4 / 1e6:.2f} MB of gradients per step), "
          f"one rank per machine on all its cores")
    print(f"{'link':>10} {'global batch':>12} {'rows/machine':>12} {'compute ms':>10} {'all-reduce ms':>13} "
          f"{'step ms':>8} {'vs 1 machine':>12}")
    for link in a.links.split(","):
        g, lat = (float(x) for x in link.split(":"))
        for B in (512 * M, 2048 * M):
            s, t = speedup(B, M, single, g, lat)
            ar = ring_allreduce_s(PARAMS * 4, M, g, lat)
            print(f"{g:>6g} Gb/s {B:>12} {B // M:>12} {single(B // M) * 1e3:>10.2f} {ar * 1e3:>13.2f} "
                  f"{t * 1e3:>8.2f} {s:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
