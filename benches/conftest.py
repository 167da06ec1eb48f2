import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """With --benchmark-group-by=param, put fastbp and the reference of the same kernel and
    parameters in one table (group by function and every parameter except ``impl``)."""
    if group_by != "param":
        return None
    from collections import defaultdict
    groups = defaultdict(list)
    for b in benchmarks:
        get = b.get if isinstance(b, dict) else (lambda k, d=None: getattr(b, k, d))
        params = get("params") or {}
        name = get("name").split("[")[0]
        key = name + "[" + ",".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "impl") + "]"
        groups[key].append(b)
    return sorted(groups.items())
