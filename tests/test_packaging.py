import importlib.metadata as md

import fastbp
import fastbp.kernels


def test_kernels_is_a_subpackage_and_no_top_level_kernels_is_installed():
    assert fastbp.kernels.__name__ == "fastbp.kernels"
    dist = md.distribution("fastbp")
    top = (dist.read_text("top_level.txt") or "").split()
    assert "kernels" not in top
    # from a folder outside the repo, `kernels` must not be importable while fastbp.kernels is
    import subprocess
    import sys
    import tempfile
    code = ("import importlib.util as u, fastbp.kernels; "
            "print(u.find_spec('kernels') is None, fastbp.kernels.__name__)")
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-c", code], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "fastbp.kernels"]


def test_console_script_declared():
    eps = md.distribution("fastbp").entry_points
    assert any(ep.name == "fastbp" and ep.group == "console_scripts" for ep in eps)


def test_kernels_never_import_the_rest_of_fastbp():
    import pathlib
    import re
    root = pathlib.Path(fastbp.kernels.__file__).parent
    for py in root.glob("*.py"):
        src = py.read_text()
        assert not re.search(r"^\s*(from|import)\s+fastbp(\.|\s|$)(?!kernels)", src, re.M), py.name
        assert "from .." not in src, py.name


def test_fastbp_uses_only_documented_kernel_names():
    """fastbp/ reaches kernels only through public names: no `_`-prefixed kernel module or function."""
    import pathlib
    import re
    root = pathlib.Path(fastbp.__file__).parent
    for py in root.glob("*.py"):
        src = py.read_text()
        bad = re.findall(r"kernels(?:\.|\s+import\s+\(?\s*)_\w+|\bK[A-Z]?\._\w+", src)
        assert not bad, f"{py.name} uses private kernel names: {bad}"


@__import__("pytest").mark.slow
@__import__("pytest").mark.heavy
def test_read_only_install_without_home_trains(tmp_path):
    """The wheel installed into a prefix the user cannot write, HOME unset: numba cannot cache next
    to the package, so fastbp caches in a temporary folder, says so once, and trains."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig

    import pytest
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the check as an unprivileged user")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    import pathlib
    import tempfile
    base = pathlib.Path(tempfile.mkdtemp(prefix="fastbp-ro-", dir="/tmp"))   # reachable by the other user
    os.chmod(base, 0o755)
    wheels, prefix, tmp = base / "wheels", base / "prefix", base / "tmp"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(wheels), root], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wheel = next(wheels.glob("fastbp-*.whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(prefix), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tmp.mkdir()
    os.chmod(tmp, 0o777)
    for d, _, files in os.walk(prefix):
        os.chmod(d, 0o555)
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
    code = ("import numpy as np, fastbp; from fastbp import Dense, Model\n"
            "assert 'prefix' in fastbp.__file__, fastbp.__file__\n"
            "m = Model([Dense(4, 'tanh'), Dense(2)]); X = np.random.default_rng(0).random((16, 3))\n"
            "m.fit(X, (X[:, 0] > 0.5).astype(int), epochs=1); print('trained', m.step_count)\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join([str(prefix), sysconfig.get_paths()["purelib"]])}
    # -S: no site processing, so the editable install of this checkout is not found (PYTHONPATH only)
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-S",
                        "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp), timeout=600)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "trained 1" in r.stdout
        assert r.stderr.count("the install folder is read-only") == 1, r.stderr
        assert any(tmp.glob("fastbp-numba-cache-*/**/*.nbi")), "the compiled kernels went to the temporary folder"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_cache_fallback_respects_numba_cache_dir_and_writable_installs(monkeypatch):
    from fastbp.kernels import _jit
    monkeypatch.setattr(_jit, "JIT_DISABLED", False)   # the rule is the compiled mode's (pure mode caches nothing)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere")
    assert _jit.cache_dir_fallback() is None            # the user's setting wins
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert _jit.cache_dir_fallback() is None            # this checkout is writable: numba caches in place
    monkeypatch.setattr(_jit, "_writable", lambda d: "fastbp-numba-cache" in d)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert "fastbp-numba-cache" in _jit.cache_dir_fallback()


def test_default_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    import subprocess
    import sys
    code = ("import os, numpy as np, fastbp\n"
            "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "m = fastbp.Model([fastbp.Dense(2)], input_dim=3)\n"
            "print(fastbp.get_num_threads())\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    env["NUMBA_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "2", (r.stdout, r.stderr)   # the user's choice wins
