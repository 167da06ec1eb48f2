import gzip
import os

import numpy as np
import pytest

from fastbp import data


def _write_idx(path, arr, code=0x08, gz=False, magic=None, trunc=0):
    hdr = bytes([0, 0, code, arr.ndim]) if magic is None else magic
    hdr += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    body = hdr + arr.astype(">u1" if code == 0x08 else ">i4").tobytes()
    body = body[:len(body) - trunc]
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(body)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = _write_idx(tmp_path / "a.idx", a, gz=gz)
    assert np.array_equal(data.read_idx(p), a)
    b = np.array([1, -2, 3], dtype=np.int32)
    p = _write_idx(tmp_path / "b.idx", b, code=0x0C, gz=gz)
    assert np.array_equal(data.read_idx(p), b)


def test_idx_rejects_bad_files(tmp_path):
    a = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match="bad IDX magic"):
        data.read_idx(_write_idx(tmp_path / "m", a, magic=b"\x12\x34\x08\x02"))
    with pytest.raises(ValueError, match="unknown IDX element type"):
        data.read_idx(_write_idx(tmp_path / "t", a, magic=b"\x00\x00\x07\x02"))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(_write_idx(tmp_path / "tr", a, trunc=1))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(_write_idx(tmp_path / "trg", a, trunc=2, gz=True))
    p = tmp_path / "short"
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        data.read_idx(p)
    p = tmp_path / "badgz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        data.read_idx(p)


def test_local_folder_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTBP_DATA", raising=False)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labs = np.array([0, 1, 2, 3, 9], np.uint8)
    d = tmp_path / "mydata"
    d.mkdir()
    for key, stem in data.FILES.items():
        _write_idx(d / (stem + ".gz"), imgs if "images" in key else labs, gz=True)
    (X, y), (Xt, yt) = data.load_mnist(data_dir=d, download=False)
    assert X.shape == (5, 784) and X.dtype == np.float32 and X.max() <= 1 and y.dtype == np.int64
    np.testing.assert_allclose(X[0], imgs[0].ravel() / 255, rtol=1e-6)
    assert data.locate("mnist", d) == str(d)
    (Xr, _), _ = data.load_mnist(data_dir=d, download=False, normalize=False)
    np.testing.assert_array_equal(Xr[0], imgs[0].ravel().astype(np.float32))   # raw 0-255
    with pytest.raises(FileNotFoundError, match="Looked in") as e:
        data.load_mnist(download=False)
    assert "--data-dir" in str(e.value)


def test_a_given_data_dir_is_used_or_the_error_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "download_mnist", lambda: pytest.fail("must not download when data_dir is given"))
    with pytest.raises(FileNotFoundError, match="nothing: no such folder"):
        data.load_mnist(data_dir=tmp_path / "nothing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        data.load_fashion_mnist(data_dir=tmp_path / "f")
    d = tmp_path / "partial"
    d.mkdir()
    labs = np.array([0, 1], np.uint8)
    for key, stem in list(data.FILES.items())[:3]:
        _write_idx(d / stem, np.zeros((2, 28, 28), np.uint8) if "images" in key else labs)
    with pytest.raises(FileNotFoundError, match=r"partial lacks t10k-labels-idx1-ubyte\[\.gz\]$"):
        data.load_fashion_mnist(data_dir=d)


def test_download_failure_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTBP_DATA", raising=False)
    monkeypatch.setattr(data, "MNIST_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setattr(data, "download_mnist", lambda: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(FileNotFoundError, match="Download from .* failed: offline"):
        data.load_mnist()


def test_download_verifies_sha256(tmp_path, monkeypatch):
    import io
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: io.BytesIO(b"not mnist"))
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        data.download_mnist(dest=str(tmp_path))
    assert os.listdir(tmp_path) == [], "a file failing verification must not be kept"


def test_spheres_default_to_article_000():
    X, y = data.make_spheres()
    assert X.shape == (200, 3) and X.dtype == np.float32 and (np.bincount(y) == [100, 100]).all()
    assert np.linalg.norm(X[y == 1] - np.array([1, 1, 1]), axis=1).max() <= 1 + 1e-6
    assert np.linalg.norm(X[y == 0] - np.array([-1, 2, -7]), axis=1).max() <= 1 + 1e-6
    assert np.linalg.norm(X[y == 1] - np.array([1, 1, 1]), axis=1).min() < 0.5    # filled balls, not shells
    np.testing.assert_array_equal(X, data.make_spheres()[0])
    X3, y3 = data.make_spheres((5, 7), centers=((0, 0), (9, 9), ), radii=(0.5, 2.0), labels=(3, 4), seed=2)
    assert X3.shape == (12, 2) and (np.bincount(y3)[3:] == [5, 7]).all()
    for bad in (dict(radii=0), dict(n_per_class=0), dict(centers=((1, 2, 3),), labels=(0, 1)),
                dict(centers=((np.nan, 0, 0), (1, 1, 1)))):
        with pytest.raises(ValueError, match=next(iter(bad)) if "labels" not in bad else "labels"):
            data.make_spheres(**bad)


def test_diagonal_spheres():
    X, y = data.diagonal_spheres(400, seed=0)
    assert X.shape == (400, 3) and set(np.unique(y)) == {0, 1}
    c1 = np.full(3, 3 / np.sqrt(3))
    assert np.linalg.norm(X[y == 0], axis=1).max() <= 1 + 1e-6
    assert np.linalg.norm(X[y == 1] - c1, axis=1).max() <= 1 + 1e-6
    X2, y2 = data.diagonal_spheres(400, seed=0)
    assert np.array_equal(X, X2)
