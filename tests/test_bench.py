"""The benchmark's peer protocol: peers time their own blocks in their own processes, and the
driver interleaves those blocks with fastbp's (``fastbp.bench._Peer`` / ``_measure``)."""
import numpy as np
import pytest

from fastbp import bench

FAKE = r"""
import json, sys, time
calls = []
def block():
    calls.append("block")
    if len(calls) > 2 * int(sys.argv[1]):       # dies after argv[1] blocks
        sys.exit(3)
    return 0.001 * len(calls)
info = {"who": "fake", "threads": int(sys.argv[2])}
""" + bench._SERVE


def test_a_peer_times_blocks_on_request_after_an_untimed_block():
    p = bench._Peer("fake", 5, 2, scripts={"fake": FAKE})
    try:
        assert p.info == {"who": "fake", "threads": 2}
        # every timed block follows an untimed one: calls 2 and 4 are reported
        assert [p.block(), p.block()] == [pytest.approx(0.002), pytest.approx(0.004)]
    finally:
        p.close()
    assert p.proc.returncode == 0


def test_a_peer_that_fails_to_start_or_hangs_is_an_oserror_not_a_hang():
    with pytest.raises(OSError, match="broken"):
        bench._Peer("broken", 1, 1, scripts={"broken": "raise SystemExit(1)"})
    hung = "import time\ntime.sleep(60)"
    with pytest.raises(OSError, match="hung"):
        bench._Peer("hung", 1, 1, scripts={"hung": hung}, timeout=0.5)


def test_measure_interleaves_peers_and_drops_one_that_dies():
    warned = []
    peers = bench._start_peers(["fake", "broken"], 2, 1, warned.append,
                               scripts={"fake": FAKE, "broken": "raise SystemExit(1)"})
    assert list(peers) == ["fake"] and len(warned) == 1 and "broken" in warned[0]
    order = []
    try:
        samples = bench._measure({"local": lambda: order.append("local")}, 4, peers=peers)
    finally:
        for p in peers.values():
            p.close()
    assert "fake" not in samples and len(samples["local"]) == 4   # it died after 2 blocks


def test_bf16_speedup_is_the_median_of_per_round_ratios(monkeypatch):
    import fastbp.kernels as kern
    monkeypatch.setattr(kern, "bf16_info", lambda: {"library": "fake", "choice": {"how": "asked"}})
    monkeypatch.setattr(kern, "bf16_speedup", lambda: 2.0, raising=False)
    monkeypatch.setattr(bench, "_fastbp_step", lambda B, rng, precision="fp32": None)
    # per round: fp32/bf16 = 2, 2.5, 1 (median 2); the ratio of the medians would be 3/3 = 1
    monkeypatch.setattr(bench, "_measure", lambda c, repeat: {"fp32": [1.0, 10.0, 3.0], "bf16": [0.5, 4.0, 3.0]})
    (row,) = bench.bf16((64,), repeat=3)
    assert row["speedup"] == pytest.approx(2.0)
    assert row["fp32_ms"] == pytest.approx(3000.0) and row["bf16_ms"] == pytest.approx(3000.0)


def test_step_table_reports_per_round_ratios_against_each_peer(monkeypatch):
    """``fastbp bench`` gives, beside the ratio of medians, the median over rounds of fastbp's block
    / the peer's block of the same round (the steadier figure on a drifting VM)."""
    import io

    class Peer:
        def close(self):
            pass
    monkeypatch.setattr(bench, "metadata", lambda: {"load_average": (0.0,), "versions": {}, "commit": None,
                                                    "cpu": "fake", "threading": {"blas": "fake"}, "cpus": 2})
    monkeypatch.setattr(bench, "peers_available", lambda: ["fake"])
    monkeypatch.setattr(bench, "sgemm_peak", lambda nt: 100.0)
    monkeypatch.setattr(bench, "_gemm_floor_steps", lambda B, rng: (None, None))
    monkeypatch.setattr(bench, "_fastbp_step", lambda B, rng, precision="fp32": None)
    monkeypatch.setattr(bench, "_reference_step", lambda B, rng: None)
    monkeypatch.setattr(bench, "_start_peers", lambda names, B, nt, warn: {"fake": Peer()})
    # per round: fastbp / fake = 2, 2.5, 1 (median 2); the ratio of the medians is 3 / 3 = 1
    monkeypatch.setattr(bench, "_measure", lambda c, repeat, peers=None: {
        "fastbp": [1.0, 10.0, 3.0], "numpy": [1.0] * 3, "gemm_numpy": [1.0] * 3, "gemm_fastbp": [1.0] * 3,
        "fake": [0.5, 4.0, 3.0]})
    out = io.StringIO()
    res = bench.run(batch_sizes=(64,), repeat=3, scaling=False, out=out)
    (row,) = res["steps"]
    assert row["ratio_fake"] == pytest.approx(1.0)
    assert row["round_ratio_fake"]["median"] == pytest.approx(2.0)
    assert row["round_ratio_fake"]["q1"] <= 2.0 <= row["round_ratio_fake"]["q3"]
    assert "vs peers per round" in out.getvalue() and "vs fake 2.00" in out.getvalue()


def _noisy_run(rng, base, rounds=7):
    """Per-round samples of one bench run on a noisy machine: a factor for the whole run (up to
    ~30% between runs, as seen here on one commit), a drift per round shared by fastbp and the
    yardstick, independent jitter per block and an occasional 30% spike."""
    machine = rng.lognormal(0, 0.12)
    drift = rng.lognormal(0, 0.05, rounds)
    spike = lambda: np.where(rng.random(rounds) < 0.1, 1.3, 1.0)
    fb = base * machine * drift * rng.lognormal(0, 0.03, rounds) * spike()
    yard = 2.0 * machine * drift * rng.lognormal(0, 0.03, rounds) * spike()
    return list(fb), list(yard)


def test_compare_verdict_does_not_cry_wolf_and_catches_a_25_percent_slowdown():
    from fastbp.bench import verdict
    rng = np.random.default_rng(20261204)
    same = caught = 0
    for _ in range(20):
        old, oy = _noisy_run(rng, 1.0)
        new, ny = _noisy_run(rng, 1.0)
        same += not verdict(new, old, 0.10, ny, oy)["regressed"]
        slow, sy = _noisy_run(rng, 1.25)
        caught += verdict(slow, old, 0.10, sy, oy)["regressed"]
    assert same >= 19, f"same commit flagged in {20 - same} of 20 runs"
    assert caught >= 19, f"a 25% slowdown caught in only {caught} of 20 runs"
    # without the yardstick the run-to-run factor is not cancelled: the rule is still quartile-based
    v = verdict([1.0, 1.02, 0.98], [1.0, 1.01, 0.99], 0.10)
    assert v["basis"] == "per round" and not v["regressed"] and v["q1"] <= v["median"] <= v["q3"]
