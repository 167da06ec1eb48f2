"""Issue 5: gradcheck CLI, the vanishing-gradient and regularizer experiments, plots, history export."""
import struct
import sys
import zlib

import numpy as np
import pytest

from fastbp import cli, experiments, plotting
from fastbp.history import load_history, save_history


def assert_png_with_content(path, min_size=(200, 150)):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    assert w >= min_size[0] and h >= min_size[1]
    import matplotlib.image as mpimg
    img = mpimg.imread(path)
    colours = np.unique(img.reshape(-1, img.shape[-1]).round(3), axis=0)
    assert len(colours) > 10, "image is (almost) a single colour"
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0], "corrupt IHDR"


def test_gradcheck_cli_exit_codes(capsys):
    assert cli.main(["gradcheck", "--batchnorm", "--dropout", "0.2"]) == 0
    assert "ok: max relative error" in capsys.readouterr().out
    for loss in ("mse", "sigmoid_bce"):
        assert cli.main(["gradcheck", "--loss", loss, "--activation", "sigmoid"]) == 0
    assert cli.main(["gradcheck", "--threshold", "1e-300"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow   # 12,000 small steps: seconds compiled, minutes in the pure-Python coverage run
def test_vanishing_experiment_on_article_000_data_sigmoid_deltas_shrink_toward_input(tmp_path):
    out = []
    res, files = experiments.vanishing(str(tmp_path), seed=0, relu=True, say=out.append)
    sig = list(res["sigmoid"]["deltas"].values())     # input layer first
    assert sig[0] < sig[1] < sig[2], sig
    assert res["sigmoid"]["steps_to_target"] is not None and res["relu"]["steps_to_target"] is not None
    text = "\n".join(out)
    assert "article 000's spheres" in text and "C = 1/(2n)" in text and "steps to cost<=0.01" in text
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == 1
    assert_png_with_content(pngs[0])
    h = load_history(tmp_path / "history_sigmoid.json")
    assert len(h["grad_norms"]) == 300 * 20 and "layer0.delta" in h["grad_norms"][0]   # 200 rows / batch 10


@pytest.mark.slow   # 2 x 20-layer nets for 60 epochs: ~15 s jitted
def test_vanishing_deep_residual_connections_keep_the_first_layers_gradient(tmp_path):
    res, files = experiments.vanishing(str(tmp_path), seed=0, epochs=60, deep=True, say=lambda *a: None)
    chain, residual = res["20-layer chain"], res["20-layer residual"]
    assert chain["first_layer_delta"] < 1e-8 * chain["last_layer_delta"]          # vanished
    assert residual["first_layer_delta"] > 1e-2 * residual["last_layer_delta"]    # kept
    assert residual["accuracy"] == 1.0 and residual["final_loss"] < 0.01
    assert chain["accuracy"] < 0.9
    pngs = [f for f in files if f.endswith("grad_norms_deep.png")]
    assert len(pngs) == 1
    assert_png_with_content(pngs[0])


@pytest.mark.slow
def test_vanishing_full_batch_variant(tmp_path):
    res, _ = experiments.vanishing(str(tmp_path), variant="full-batch", epochs=300, say=lambda *a: None)
    sig = list(res["sigmoid"]["deltas"].values())
    assert sig[0] < sig[-1] and set(res) == {"sigmoid"}
    with pytest.raises(ValueError, match="variant"):
        experiments.vanishing(str(tmp_path), variant="nope")


@pytest.mark.slow   # four 784-512-512-10 runs: ~100 s in the pure-Python coverage run
def test_regularizers_experiment_writes_three_figures_and_a_table(tmp_path):
    out = []
    summary, files = experiments.regularizers(str(tmp_path), epochs=1, subset=1200, say=out.append, bias=False)
    assert set(summary) == set(experiments.REGULARIZER_RUNS)
    for r in summary.values():
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1 and r["seconds"] > 0
    pngs = sorted(f for f in files if f.endswith(".png"))
    assert [p.rsplit("/", 1)[1] for p in pngs] == ["batchnorm.png", "dropout.png", "input_normalization.png"]
    for p in pngs:
        assert_png_with_content(p)
    text = "\n".join(out)
    assert "test acc" in text and "adam lr 0.001" in text and "(no bias)" in text
    assert "1080 train / 120 validation / 200 test" in text


def test_experiment_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("x")
    assert cli.main(["experiment", "vanishing", "--out", str(tmp_path), "--epochs", "2"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["experiment", "vanishing", "--out", str(tmp_path), "--epochs", "2", "--force"]) == 0


def test_experiment_without_matplotlib_prints_table_and_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    assert not plotting.available()
    rc = cli.main(["experiment", "vanishing", "--out", str(tmp_path), "--epochs", "5"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "pip install 'fastbp[plot]'" in out and "sigmoid" in out
    assert not list(tmp_path.glob("*.png"))
    save_history({"epoch": [1], "loss": [1.0]}, tmp_path / "h.json")
    assert cli.main(["plot", str(tmp_path / "h.json")]) == 2
    assert "matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize("ext", ["json", "csv"])
def test_history_export_and_plot_command(tmp_path, ext, capsys):
    h = {"epoch": [1, 2, 3], "loss": [1.0, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8], "val_loss": [1.1, 0.7, 0.5],
         "val_accuracy": [0.45, 0.65, 0.75], "seconds": [1, 1, 1], "samples_per_s": [10, 10, 10],
         "lr": [0.1, 0.1, 0.1]}
    p = save_history(h, tmp_path / f"h.{ext}")
    back = load_history(p)
    assert back["loss"] == h["loss"] and back["val_accuracy"] == h["val_accuracy"]
    png = tmp_path / "curves.png"
    assert cli.main(["plot", str(p), "--out", str(png)]) == 0
    assert str(png) in capsys.readouterr().out
    assert_png_with_content(png)


def test_curves_integer_epoch_ticks_validation_labels_and_no_empty_panel(tmp_path):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    h = {"epoch": [1, 2, 3, 4], "loss": [1.0, 0.5, 0.4, 0.3], "val_loss": [1.1, 0.6, 0.5, 0.45],
         "accuracy": [None] * 4, "val_accuracy": [None] * 4}
    captured = {}
    real_save = plotting._save
    plotting._save = lambda fig, path: captured.setdefault("fig", fig) and real_save(fig, path)
    try:
        plotting.curves({"mse run": h}, str(tmp_path / "c.png"), "t")
    finally:
        plotting._save = real_save
    fig = captured["fig"]
    axes = fig.axes
    assert len(axes) == 1, "a regression history has no accuracy panel"
    ticks = [t for t in axes[0].get_xticks() if 1 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "mse run validation" in labels and not any("test" in label for label in labels)
    plt.close("all")


def test_grad_norm_plot_axis_is_bounded_and_smoothed():
    """Dead ReLU units give RMS deltas of 0 or ~1e-30 in some steps: the log axis must still span at
    most LOG_DECADES below the largest value, and the moving RMS must equal the definition."""
    from fastbp.plotting import LOG_DECADES, log_limits, moving_rms
    lo, hi = log_limits([[1e-2, 1e-4, 0.0, 1e-31], [3e-3, float("nan")]])
    assert hi == 2e-2 and lo == hi / 10 ** LOG_DECADES
    lo, hi = log_limits([[1e-3, 2e-3]])
    assert lo == 5e-4 and hi == 4e-3           # a narrow range is shown whole
    assert log_limits([[0.0]]) == (1e-3, 1.0)
    v = np.array([3.0, 4.0, 0.0, 12.0])
    np.testing.assert_allclose(moving_rms(v, 2), [3.0, np.sqrt(12.5), np.sqrt(8.0), np.sqrt(72.0)])
