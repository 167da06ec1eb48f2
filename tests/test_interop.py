"""Exchange: PyTorch state dicts and modules, ONNX (checked with onnxruntime), safetensors.

Tolerances: weights round-trip bitwise; outputs computed by another library agree to float32
round-off: 1e-4 absolute on logits, 1e-5 on probabilities."""
import numpy as np
import pytest

import fastbp
from fastbp import BatchNorm, Dense, Dropout, Model

ARCHS = {
    "tanh": [Dense(16, "tanh"), Dense(12, "relu"), Dense(3)],
    "bn_dropout": [Dense(16, bias=False), BatchNorm("relu"), Dropout(0.3), Dense(8, "leaky_relu", alpha=0.05),
                   Dense(3)],
    "sigmoid_standalone": [Dense(10), fastbp.Activation("sigmoid"), BatchNorm(), fastbp.Activation("tanh"),
                           Dense(3)],
}


def trained(arch, rng, dtype="float32"):
    X = rng.normal(size=(256, 20)).astype(dtype)
    y = rng.integers(0, 3, 256)
    m = Model(ARCHS[arch], seed=3, dtype=dtype)
    m.fit(X, y, epochs=2, batch_size=32, optimizer="adam", lr=1e-2)
    return m.eval(), X


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_dict_names_layout_and_round_trip(arch, rng):
    m, X = trained(arch, rng)
    sd = m.state_dict()
    assert "0.weight" in sd and sd["0.weight"].shape == (16 if arch != "sigmoid_standalone" else 10, 20)
    np.testing.assert_array_equal(sd["0.weight"], m.layers[0].W.T)
    back = Model.from_state_dict(sd, ARCHS[arch])
    assert back.input_dim == 20 and back.dtype == np.float32
    np.testing.assert_array_equal(back.params, m.params)
    np.testing.assert_array_equal(back.eval().forward(X), m.forward(X))
    sd["0.weight"] = sd["0.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"'0.weight' has shape"):
        Model.from_state_dict(sd, ARCHS[arch], input_dim=20)


def test_load_state_dict_rejects_bad_entries_and_writes_nothing(rng):
    m, _ = trained("bn_dropout", rng)
    before = m.params.copy()
    sd = m.state_dict()
    bad = dict(sd, **{"1.running_var": -np.ones(16, np.float32)})
    with pytest.raises(ValueError, match="running_var"):
        m.load_state_dict(bad)
    bad = dict(sd, **{"6.weight": np.full((3, 8), np.nan, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        m.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing '0.weight'"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "0.weight"})
    with pytest.raises(ValueError, match="unexpected keys"):
        m.load_state_dict(dict(sd, extra=np.zeros(1)))
    m.load_state_dict(dict(sd, extra=np.zeros(1)), strict=False)
    np.testing.assert_array_equal(m.params, before)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_round_trip(arch, dtype, rng):
    torch = pytest.importorskip("torch", reason="PyTorch not installed (CI installs the CPU build)")
    m, X = trained(arch, rng, dtype)
    seq = fastbp.interop.to_torch(m)
    assert not seq.training
    with torch.no_grad():
        z = seq(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(z, m.forward(X), atol=1e-4 if dtype == "float32" else 1e-10)
    # plain torch API: load_state_dict from fastbp's numpy state dict into a hand-built module
    seq2 = fastbp.interop.to_torch(Model.from_state_dict(m.state_dict(), ARCHS[arch]))
    seq2.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    back = fastbp.interop.from_torch(seq)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.params, m.params)
    np.testing.assert_array_equal(back.eval().predict_proba(X), m.predict_proba(X))


def test_from_torch_rejects_unsupported_modules():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    with pytest.raises(ValueError, match=r"1: Conv1d has no fastbp layer"):
        fastbp.interop.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Conv1d(1, 1, 1)))
    with pytest.raises(ValueError, match="momentum"):
        fastbp.interop.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4, momentum=None)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastbp.interop.from_torch([1, 2])


def test_torch_trained_model_comes_over(rng):
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    X = torch.randn(64, 6)
    opt = torch.optim.SGD(seq.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        ((seq(X) - X[:, :1]) ** 2).mean().backward()
        opt.step()
    m = fastbp.interop.from_torch(seq.eval(), loss="mse")
    with torch.no_grad():
        np.testing.assert_allclose(m.predict(X.numpy()), seq(X).numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_onnx_export_matches_onnxruntime(arch, rng, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'fastbp[onnx]'")
    m, X = trained(arch, rng)
    for output, ref in (("logits", m.forward(X)), ("proba", m.predict_proba(X))):
        path = m.to_onnx(tmp_path / f"m_{output}.onnx", output=output)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run([output], {"x": X})[0]
        np.testing.assert_allclose(got, ref, atol=1e-4 if output == "logits" else 1e-5)
    with pytest.raises(ValueError, match="output"):
        m.to_onnx(tmp_path / "x.onnx", output="labels")


def test_safetensors_round_trip_resumes_bitwise(rng, tmp_path):
    pytest.importorskip("safetensors", reason="safetensors not installed: pip install 'fastbp[safetensors]'")
    X = rng.normal(size=(256, 20)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    a = Model(ARCHS["bn_dropout"], seed=3)
    a.fit(X, y, epochs=1, batch_size=32, optimizer="adam", lr=1e-2)
    a.save(tmp_path / "a.safetensors")
    b = Model.load(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(b.params, a.params)
    a.fit(X, y, epochs=1, batch_size=32)
    b.fit(X, y, epochs=1, batch_size=32)
    np.testing.assert_array_equal(b.params, a.params)     # optimizer state and step count came along
    from safetensors.numpy import load_file
    names = set(load_file(tmp_path / "a.safetensors"))
    assert {"0.weight", "1.running_var", "optimizer.m", "optimizer.v"} <= names


def test_safetensors_bad_files_name_the_file(rng, tmp_path):
    pytest.importorskip("safetensors", reason="safetensors not installed")
    from safetensors.numpy import save_file
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="junk.safetensors"):
        Model.load(p)
    m, _ = trained("tanh", rng)
    m.save(tmp_path / "ok.safetensors")
    from safetensors import safe_open
    with safe_open(tmp_path / "ok.safetensors", framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["4.bias"] = np.full(3, np.inf, np.float32)
    save_file(tensors, tmp_path / "inf.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"inf.safetensors: '4.bias' contains NaN or inf"):
        Model.load(tmp_path / "inf.safetensors")
    save_file(tensors, tmp_path / "nometa.safetensors")
    with pytest.raises(ValueError, match="nometa.safetensors"):
        Model.load(tmp_path / "nometa.safetensors")
