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
