"""fastbp's training step against PyTorch eager and JAX jit as the median of per-round ratios.

    python benches/peer_rounds.py [--batch-sizes 32,128,512] [--rounds 25]

``fastbp bench`` reports each contender's median block; on a noisy VM the ratio of two medians
still moves with the machine's speed.  Here every round times one block of each (fastbp in this
process, each peer in its own, ``fastbp.bench._Peer``), each block after a pause and an untimed
block, and the figure is the median over rounds of fastbp's block / the peer's block, with
quartiles.  Peers that are not installed are skipped.
"""
import argparse
import json
import statistics
import time

import numpy as np

from fastbp import bench, get_num_threads


def rounds(B, n_rounds, peers):
    f = bench._fastbp_step(B, np.random.default_rng(0))
    n = max(1, int(0.05 / bench._timeit(f, 3)))
    started = bench._start_peers(peers, B, get_num_threads(), print)
    s = {"fastbp": [], **{p: [] for p in started}}
    try:
        for _ in range(n_rounds):
            time.sleep(0.2)
            bench._timeit(f, n)
            s["fastbp"].append(bench._timeit(f, n))
            for p, peer in started.items():
                time.sleep(0.2)
                s[p].append(peer.block())
    finally:
        for peer in started.values():
            peer.close()
    out = {"batch": B, "fastbp_ms": statistics.median(s["fastbp"]) * 1e3}
    for p in started:
        r = bench.round_ratios(s["fastbp"], s[p])
        out[p] = {"ms": statistics.median(s[p]) * 1e3, "ratio_median": r["median"], "q1": r["q1"], "q3": r["q3"]}
        print(f"batch {B:>5}: fastbp/{p} median {out[p]['ratio_median']:.3f} (quartiles {out[p]['q1']:.3f}-"
              f"{out[p]['q3']:.3f}); fastbp {out['fastbp_ms']:.3f} ms, {p} {out[p]['ms']:.3f} ms", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="32,128,512")
    ap.add_argument("--rounds", type=int, default=25)
    a = ap.parse_args()
    peers = bench.peers_available()
    print(json.dumps([rounds(int(b), a.rounds, peers) for b in a.batch_sizes.split(",")]))


if __name__ == "__main__":
    main()
