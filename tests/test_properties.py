"""The property suite (tests/property_cases.py) in child processes: a crash or a hang in a
kernel fails the group's test instead of killing the run.

The default run generates QUICK_EXAMPLES cases per kernel or entry point (19 of them); the
full-size run (``pytest -m heavy``, CI) FULL_EXAMPLES: 11,400 cases in all, about 1.5 minutes once
the kernels are cached.  FASTBP_PROPERTY_EXAMPLES overrides both; FASTBP_PROPERTY_SEED picks another sample.
"""
import json
import os
import subprocess
import sys

import pytest
from property_cases import GROUPS  # tests/ is on sys.path (pytest prepend import mode)

QUICK_EXAMPLES, FULL_EXAMPLES = 300, 600
OVERRIDE = os.environ.get("FASTBP_PROPERTY_EXAMPLES")
SEED = int(os.environ.get("FASTBP_PROPERTY_SEED", "20261202"))
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.jit
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_property_group(group):
    _run_group(group, int(OVERRIDE or QUICK_EXAMPLES))


@pytest.mark.jit
@pytest.mark.heavy
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_property_group_full_size(group):
    _run_group(group, int(OVERRIDE or FULL_EXAMPLES))


def _run_group(group, examples):
    kernels = GROUPS[group]
    try:
        r = subprocess.run([sys.executable, os.path.join(HERE, "property_cases.py"), group, str(examples), str(SEED)],
                           capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"property group {group!r} hung (no result within {e.timeout} s)")
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert r.returncode == 0 and lines, f"child crashed (rc {r.returncode}):\n{r.stderr[-3000:]}"
    res = json.loads(lines[-1])
    msgs = [f"{f['kernel']}: {f['error']}" for f in res["failures"]]
    assert not msgs, "\n\n".join(msgs)
    for k in kernels:
        c = res["counts"][k]
        assert c["accepted"] + c["rejected"] >= 0.9 * examples, (k, c)
        assert c["accepted"] >= 0.05 * examples, f"{k}: too few valid cases to test results ({c})"
        assert c["rejected"] >= 0.05 * examples, f"{k}: too few invalid cases to test the checks ({c})"
