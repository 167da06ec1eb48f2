import json
import re
import signal
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


def one_line_error(capsys, argv, match):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("fastbp: error: "), err
    assert re.search(match, err.splitlines()[0]), err
    return err


SPHERE = ["train", "--dataset", "sphere", "--hidden", "8", "--epochs", "1", "--no-progress"]


def test_train_missing_data_dir_fails_cleanly(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("fastbp.data.download_mnist", lambda: pytest.fail("no download with --data-dir"))
    one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")], "no such folder")
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["train", "--data-dir", str(tmp_path / "file")], "is a file, not a folder")
    one_line_error(capsys, ["train", "--data-dir", str(tmp_path)], "has none of the four IDX files")


def test_header_names_the_data_folder(capsys):
    pytest.importorskip("fastbp.data").locate("fashion-mnist") or pytest.fail("CI installs dataset-fashion-mnist")
    from fastbp import data
    folder = data.locate("fashion-mnist")
    assert cli.main(["train", "--hidden", "4", "--epochs", "1", "--no-progress", "--data-dir", folder]) == 0
    assert f"fashion-mnist ({folder}):" in capsys.readouterr().out


def test_expected_errors_are_one_line_exit_2(capsys, tmp_path):
    one_line_error(capsys, SPHERE + ["--save", str(tmp_path / "missing" / "m.npz")], "folder .* does not exist")
    one_line_error(capsys, SPHERE + ["--history", str(tmp_path)], "is a folder")
    one_line_error(capsys, SPHERE + ["--hidden", "100000,100000"], r"needs about .* GiB, only .* available")
    one_line_error(capsys, SPHERE + ["--lr", "1e30", "--activation", "relu"], "training diverged")
    one_line_error(capsys, SPHERE + ["--resume"], "--resume: needs --checkpoint")
    (tmp_path / "bad.json").write_text('{"epoch": [1], "loss": "x"}')
    one_line_error(capsys, ["plot", str(tmp_path / "bad.json")], "bad.json: not a fastbp history")
    (tmp_path / "bad2.json").write_text('{"a": [1')
    one_line_error(capsys, ["plot", str(tmp_path / "bad2.json")], "bad2.json: not a fastbp history")
    assert not list(tmp_path.glob("*.npz"))


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FloatingPointError):
        cli.main(["--debug"] + SPHERE + ["--lr", "1e30", "--activation", "relu"])


def test_checkpoint_resume_flags(capsys, tmp_path):
    ck = str(tmp_path / "ck.npz")
    assert cli.main(SPHERE + ["--checkpoint", ck]) == 0
    one_line_error(capsys, SPHERE + ["--checkpoint", ck], "exists; pass --resume")
    assert cli.main(SPHERE[:-3] + ["--epochs", "2", "--no-progress", "--checkpoint", ck, "--resume"]) == 0
    out = capsys.readouterr().out
    assert [l.split()[0] for l in out.splitlines() if l.strip()[:1].isdigit()] == ["2"], out


def test_version_and_defaults_in_help(capsys):
    from fastbp import __version__
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastbp {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: 512,512)" in text and "adam and adamw 0.001" in text and "(default: 128)" in text


def test_adam_gets_its_own_default_learning_rate(capsys):
    assert cli.main(SPHERE + ["--optimizer", "adam"]) == 0
    assert "adam lr 0.001" in capsys.readouterr().out


@pytest.mark.slow
def test_adam_default_lr_reaches_80_percent_on_fashion_mnist_in_one_epoch(capsys, tmp_path):
    h = tmp_path / "h.json"
    assert cli.main(["train", "--optimizer", "adam", "--epochs", "1", "--no-progress", "--history", str(h)]) == 0
    acc = json.loads(h.read_text())["val_accuracy"][-1]
    assert acc >= 0.80, acc


@pytest.mark.heavy
def test_piped_output_has_no_carriage_returns_and_ctrl_c_exits_130_with_a_checkpoint(tmp_path):
    ck = tmp_path / "ck.npz"
    p = subprocess.Popen([sys.executable, "-m", "fastbp.cli", "train", "--dataset", "sphere", "--hidden", "64,64",
                          "--epochs", "100000", "--batch-size", "8", "--checkpoint", str(ck)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # as from a terminal: a shell starts background jobs with SIGINT ignored, and a
                         # Python started that way never raises KeyboardInterrupt (this test then hung)
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in p.stdout:                  # wait until training runs (the first epoch row)
        lines.append(line)
        if line.strip().startswith("1 "):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    out = "".join(lines) + out
    assert p.returncode == 130, err
    assert "Traceback" not in err and "\r" not in out + err
    assert "saved the parameters reached so far" in err
    from fastbp import Model
    assert Model.load(ck).epochs_done >= 1


@pytest.mark.parametrize("argv, what", [(["train", "--hidden", "0,5"], "--hidden"),
                                        (["train", "--hidden", "512,,512"], "no empty item"),
                                        (["train", "--epochs", "-1"], "--epochs"),
                                        (["train", "--optimizer", "lbfgs"], "--optimizer")])
def test_bad_arguments_exit_2_with_one_line(argv, what, capsys):
    """A usage error is one line naming the argument and pointing at --help, not the usage block."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and what in err[0] and "--help" in err[0], err


@pytest.mark.parametrize("flag, path, kinds", [("--save", "m.txt", ".npz or .safetensors"),
                                               ("--history", "h.xlsx", ".json or .csv"),
                                               ("--checkpoint", "ck.bin", ".npz or .safetensors")])
def test_output_suffixes_that_cannot_be_written_are_refused_before_training(flag, path, kinds, tmp_path, capsys):
    target = tmp_path / path
    assert cli.main(["train", "--dataset", "sphere", flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {target}: expected a file ending in {kinds}" in err and not target.exists()


def test_early_stopping_never_selects_on_the_test_set(capsys):
    """--early-stopping without --validation-split holds out part of the training set, says so, and the
    final report evaluates on the test set, which chose nothing."""
    assert cli.main(["train", "--dataset", "sphere", "--epochs", "3", "--early-stopping", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "holding out 10% of the training set" in out
    assert "val loss" in out and "test loss" not in out.split("epoch")[1].splitlines()[0]
    assert "the test set was not used in training" in out


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastbp.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "bench" in r.stdout


def test_bench_json_metadata_spread_and_compare_exit_codes(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--batch-sizes", "32", "--repeat", "2", "--no-peers", "--no-scaling", "--predict-rows", "64"]
    assert cli.main(args + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())
    row = res["steps"][0]
    assert row["batch"] == 32 and row["fastbp_ms"] > 0 and row["floor_ms"] > 0 and row["numpy_ms"] > 0
    sp = row["spread"]["fastbp"]
    assert sp["min"] <= sp["median"] <= sp["max"] and 0 < row["share_of_peak"] < 1.5
    meta = res["meta"]
    for key in ("cpu", "cpu_flags", "versions", "commit", "threading", "load_average", "date"):
        assert key in meta, key
    assert meta["versions"]["numpy"] and meta["threading"]["blas"] and res["sgemm_peak_gflops"] > 1
    text = capsys.readouterr().out
    assert "sgemm peak" in text and "[" in text     # spread printed beside each median
    assert res["predict"]["rows"] == 64 and res["predict"]["fastbp_fp32_ms"] > 0
    assert "predict on 64 rows" in text
    fast, slow = json.loads(out.read_text()), json.loads(out.read_text())
    for res_, f in ((fast, 1 / 100), (slow, 100)):   # "old" was 100x faster (a regression) or slower
        res_["steps"][0]["fastbp_ms"] *= f
        res_["steps"][0]["samples_ms"]["fastbp"] = [v * f for v in res_["steps"][0]["samples_ms"]["fastbp"]]
        res_["predict"]["fastbp_fp32_ms"] *= f
        res_["predict"]["samples_ms"]["fastbp_fp32"] = [v * f for v in res_["predict"]["samples_ms"]["fastbp_fp32"]]
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    assert cli.main(args + ["--compare", str(tmp_path / "fast.json")]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert cli.main(args + ["--compare", str(tmp_path / "slow.json")]) == 0
    (tmp_path / "junk.json").write_text("[]")
    assert cli.main(args + ["--compare", str(tmp_path / "junk.json")]) == 2


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


@pytest.mark.filterwarnings("ignore::fastbp.kernels.validate.Bf16SlowWarning")   # tested in test_bf16
def test_train_precision_bf16_or_a_one_line_error(capsys, monkeypatch):
    from fastbp.kernels import JIT_DISABLED
    from fastbp.kernels import bf16 as K
    argv = ["train", "--dataset", "sphere", "--hidden", "8", "--epochs", "1", "--precision", "bf16", "--no-progress"]
    if not JIT_DISABLED:
        monkeypatch.setattr(K, "BOUND", None)
        monkeypatch.setattr(K, "cpu_supports_bf16", lambda: False)
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "AVX512_BF16" in err[0]
        monkeypatch.undo()
    try:
        K.bind_bf16()
    except K.Bf16Unavailable:
        pytest.skip("no bf16 here")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out and "total" in out
