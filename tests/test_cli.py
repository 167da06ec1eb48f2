import json
import subprocess
import sys

import pytest

from fastbp import cli


def test_train_sphere_prints_table(capsys, tmp_path):
    hist = tmp_path / "h.csv"
    rc = cli.main(["train", "--dataset", "sphere", "--hidden", "8", "--activation", "tanh", "--epochs", "2",
                   "--batch-size", "64", "--lr", "0.5", "--no-progress", "--history", str(hist),
                   "--save", str(tmp_path / "m.npz")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "train loss" in out and "samples/s" in out
    assert len([l for l in out.splitlines() if l.strip().startswith(("1 ", "2 "))]) == 2
    assert hist.read_text().startswith("epoch,loss")
    assert (tmp_path / "m.npz").exists()


def test_train_missing_data_dir_fails_cleanly(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("fastbp.data.download_mnist", lambda: (_ for _ in ()).throw(OSError("offline")))
    rc = cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--epochs", "1"])
    assert rc == 2
    assert "Looked in" in capsys.readouterr().err


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--hidden", "0,5"])
    assert e.value.code == 2


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastbp.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "bench" in r.stdout


def test_bench_json_small(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = cli.main(["bench", "--batch-sizes", "32", "--repeat", "1", "--no-peers", "--no-scaling",
                   "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    row = res["steps"][0]
    assert row["batch"] == 32 and row["fastbp_ms"] > 0 and row["floor_ms"] > 0 and row["numpy_ms"] > 0


def test_train_threads_beyond_the_pool_is_a_clear_error(capsys):
    rc = cli.main(["train", "--dataset", "sphere", "--threads", "100000", "--epochs", "1"])
    assert rc == 2
    assert "--threads" in capsys.readouterr().err


def test_warmup_compiles_and_reports(capsys):
    assert cli.main(["warmup", "--dtype", "float64"]) == 0
    assert "compiled (or loaded from numba's cache) every kernel for float64" in capsys.readouterr().out


def test_compile_time_is_reported_apart_from_epoch_time(rng):
    import numpy as np

    from fastbp import Dense, Model
    X = rng.standard_normal((40, 3)).astype(np.float32)
    h = Model([Dense(4, "tanh"), Dense(2)]).fit(X, (X[:, 0] > 0).astype(np.int64), epochs=2)
    assert len(h["compile_seconds"]) == 2 and all(c >= 0 for c in h["compile_seconds"])
    assert h["compile_seconds"][1] == 0, "nothing new to compile in epoch 2"
