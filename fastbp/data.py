"""Datasets: an IDX reader, MNIST / Fashion-MNIST loaders and the two-sphere generator.

Where a dataset's four IDX files (``.gz`` or raw) are taken from: a given ``data_dir`` (or
``data_dir/<name>``) and nowhere else: if they are not there, the error says which are missing.
Without ``data_dir``: ``$FASTBP_DATA`` (``<dir>`` or ``<dir>/<name>``), the user cache
(``$XDG_CACHE_HOME/fastbp/<name>``, default ``~/.cache/fastbp/<name>``) and
``/usr/share/datasets/<name>/`` (Debian's dataset-fashion-mnist package).
"""
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

MNIST_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# SHA-256 of the gzipped MNIST files as distributed by the mirror above.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


class DatasetNotFound(FileNotFoundError):
    pass


def read_idx(path):
    """Read one IDX file (gzip or raw) into a numpy array, checking everything.

    Raises ValueError naming the file when the magic number, element type,
    dimensions or length do not match the format.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({type(e).__name__}: {e})") from None
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number {data[:4].hex()} (expected 0000 then type, ndim)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX file with 0 dimensions")
    hdr = 4 + 4 * ndim
    if len(data) < hdr:
        raise ValueError(f"{path}: truncated IDX header (need {hdr} bytes, file has {len(data)})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dt = np.dtype(_IDX_DTYPES[code])
    count = 1
    for d in dims:   # Python ints: no silent int64 overflow for crafted dimensions
        count *= d
    expected = hdr + count * dt.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX length mismatch: dimensions {dims} of {dt} need {expected} bytes, "
                         f"file has {len(data)} ({'truncated' if len(data) < expected else 'trailing data'})")
    return np.frombuffer(data, dtype=dt, offset=hdr).reshape(dims).astype(dt.newbyteorder("="))


def cache_dir(name):
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastbp", name)


def search_dirs(name, data_dir=None):
    if data_dir is not None:
        return [os.fspath(data_dir), os.path.join(os.fspath(data_dir), name)]
    dirs = []
    env = os.environ.get("FASTBP_DATA")
    if env:
        dirs += [env, os.path.join(env, name)]
    dirs += [cache_dir(name), os.path.join("/usr/share/datasets", name)]
    return dirs


def _find(folder, stem):
    for cand in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        p = os.path.join(folder, cand)
        if os.path.isfile(p):
            return p
    return None


def _locate(name, data_dir):
    for d in search_dirs(name, data_dir):
        paths = {k: _find(d, stem) for k, stem in FILES.items()}
        if all(paths.values()):
            return paths
    if data_dir is not None:
        raise _given_dir_problem(name, os.fspath(data_dir))
    return None


def _given_dir_problem(name, d):
    if not os.path.exists(d):
        why = "no such folder"
    elif not os.path.isdir(d):
        why = "is a file, not a folder"
    else:
        best = max((os.path.join(d, name), d), key=lambda f: sum(bool(_find(f, s)) for s in FILES.values()))
        missing = [s + "[.gz]" for s in FILES.values() if not _find(best, s)]
        why = f"{best} lacks {', '.join(missing)}" if len(missing) < len(FILES) else \
            f"has none of the four IDX files {', '.join(FILES.values())} (optionally .gz), nor has {name}/"
    return DatasetNotFound(f"{name}: --data-dir / data_dir {d}: {why}")


def locate(name, data_dir=None):
    """The folder the dataset ``name`` would be read from (None if nowhere)."""
    paths = _locate(name, data_dir)
    return os.path.dirname(paths["train_images"]) if paths else None


def _not_found(name, data_dir, extra=""):
    looked = "\n  ".join(search_dirs(name, data_dir))
    return DatasetNotFound(
        f"{name}: the four IDX files ({', '.join(s + '[.gz]' for s in FILES.values())}) were not found.\n"
        f"Looked in:\n  {looked}\n{extra}"
        f"Provide them with --data-dir DIR (or data_dir=...), or set FASTBP_DATA=DIR."
        + ("\nOn Debian/Ubuntu: apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else ""))


def _load(paths, normalize=True):
    xtr, ytr = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    xte, yte = read_idx(paths["test_images"]), read_idx(paths["test_labels"])
    for (xs, ys, which) in ((xtr, ytr, "train"), (xte, yte, "test")):
        if xs.ndim != 3 or ys.ndim != 1 or xs.shape[0] != ys.shape[0]:
            raise ValueError(f"{which} files disagree: images {xs.shape}, labels {ys.shape}")

    def prep(x):
        x = x.reshape(x.shape[0], -1).astype(np.float32)
        return x / np.float32(255.0) if normalize else x
    return (prep(xtr), ytr.astype(np.int64)), (prep(xte), yte.astype(np.int64))


def load_fashion_mnist(data_dir=None, normalize=True):
    """((X_train, y_train), (X_test, y_test)); X float32 of shape (n, 784), in [0, 1] or, with
    ``normalize=False``, the raw 0-255 pixel values; y int64."""
    paths = _locate("fashion-mnist", data_dir)
    if paths is None:
        raise _not_found("fashion-mnist", data_dir)
    return _load(paths, normalize)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(dest=None, base_url=MNIST_MIRROR, timeout=30):
    """Download the four MNIST files into ``dest`` (default: the user cache), verifying SHA-256.

    Each file is written to a temporary name and renamed only after its hash matches.
    """
    dest = dest or cache_dir("mnist")
    os.makedirs(dest, exist_ok=True)
    for fname, digest in MNIST_SHA256.items():
        target = os.path.join(dest, fname)
        if os.path.exists(target) and _sha256(target) == digest:
            continue
        fd, tmp = tempfile.mkstemp(dir=dest, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + fname, timeout=timeout) as r:
                shutil.copyfileobj(r, out)
            got = _sha256(tmp)
            if got != digest:
                raise ValueError(f"{fname}: SHA-256 mismatch (got {got}, expected {digest}); not saved")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest


def load_mnist(data_dir=None, download=True, normalize=True):
    """Like load_fashion_mnist for MNIST; if no local copy (and no ``data_dir`` given), downloads
    into the cache (SHA-256 verified)."""
    paths = _locate("mnist", data_dir)
    if paths is None and download:
        try:
            download_mnist()
        except Exception as e:  # offline, blocked, bad hash: say so and where we looked
            raise _not_found("mnist", data_dir, f"Download from {MNIST_MIRROR} failed: {e}\n") from None
        paths = _locate("mnist", data_dir)
    if paths is None:
        raise _not_found("mnist", data_dir)
    return _load(paths, normalize)


ARTICLE_000_SPHERES = {"centers": ((1.0, 1.0, 1.0), (-1.0, 2.0, -7.0)), "radii": 1.0, "labels": (1, 0),
                       "n_per_class": 100}


def make_spheres(n_per_class=100, centers=((1.0, 1.0, 1.0), (-1.0, 2.0, -7.0)), radii=1.0, labels=(1, 0), seed=0,
                 dtype=np.float32):
    """Labelled point clouds sampled uniformly inside balls: ``n_per_class`` points (an int, or
    one per class) inside the ball of radius ``radii`` (one, or one per class) around each of
    ``centers``, labelled ``labels``; rows shuffled.  Returns (X (n, d), y (n,) int64).

    The defaults are article 000's data (the vanishing-gradient experiment): centres (1, 1, 1)
    and (-1, 2, -7), radius 1, 100 points each, labels 1 and 0.
    """
    C = np.asarray(centers, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] < 1 or C.shape[1] < 1 or not np.isfinite(C).all():
        raise ValueError(f"centers: expected a finite (classes, dims) list of centres, got {centers!r}")
    k, d = C.shape
    counts = np.broadcast_to(np.asarray(n_per_class), (k,)) if np.ndim(n_per_class) == 0 else np.asarray(n_per_class)
    if counts.shape != (k,) or counts.dtype.kind not in "iu" or (counts < 1).any():
        raise ValueError(f"n_per_class: expected a positive int or one per centre ({k}), got {n_per_class!r}")
    R = np.broadcast_to(np.asarray(radii, dtype=np.float64), (k,)) if np.ndim(radii) == 0 else \
        np.asarray(radii, dtype=np.float64)
    if R.shape != (k,) or not (R > 0).all() or not np.isfinite(R).all():
        raise ValueError(f"radii: expected a radius > 0 or one per centre ({k}), got {radii!r}")
    lab = np.asarray(labels)
    if lab.shape != (k,) or lab.dtype.kind not in "iu":
        raise ValueError(f"labels: expected one int label per centre ({k}), got {labels!r}")
    rng = np.random.default_rng(seed)
    Xs, ys = [], []
    for c, r, m, lb in zip(C, R, counts, lab):
        u = rng.standard_normal((int(m), d))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        Xs.append(c + u * (r * rng.random(int(m)) ** (1 / d))[:, None])    # uniform in the ball
        ys.append(np.full(int(m), lb, np.int64))
    X, y = np.concatenate(Xs), np.concatenate(ys)
    perm = rng.permutation(X.shape[0])
    return X[perm].astype(dtype), y[perm]


def diagonal_spheres(n, distance=3.0, seed=0, dtype=np.float32):
    """The earlier toy set: ``n`` points, two unit balls ``distance`` apart on the diagonal
    (label 0 at the origin, 1 at ``distance / sqrt(3) * (1, 1, 1)``)."""
    far = tuple([distance / np.sqrt(3)] * 3)
    return make_spheres((n - n // 2, n // 2), centers=((0.0, 0.0, 0.0), far), labels=(0, 1), seed=seed, dtype=dtype)


def load(name, data_dir=None, normalize=True):
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, normalize)
    if name == "mnist":
        return load_mnist(data_dir, normalize=normalize)
    if name == "sphere":
        Xtr, ytr = diagonal_spheres(2000, seed=0)
        Xte, yte = diagonal_spheres(1000, seed=1)
        return (Xtr, ytr), (Xte, yte)
    raise ValueError(f"dataset: expected mnist, fashion-mnist or sphere, got {name!r}")
