"""Peak GEMM rate of this machine: PyTorch (fp32, bf16) and numpy's BLAS at 1/8/16 threads.

Usage: python benches/gemm_peak.py OUT.json   (square products, n=4096; n=2048 on one thread)
"""
import json
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def rate(mm, n, reps=5):
    mm()
    mm()
    t = time.perf_counter()
    for _ in range(reps):
        mm()
    return round(2 * n ** 3 / ((time.perf_counter() - t) / reps) / 1e9, 1)


def main(out_path):
    out = {}
    try:
        import torch
        for T in (1, 8, 16):
            torch.set_num_threads(T)
            n = 4096 if T > 1 else 2048
            for dt in (torch.float32, torch.bfloat16):
                a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
                out[f"torch_{str(dt).split('.')[-1]}_T{T}"] = rate(lambda a=a, b=b: a @ b, n)
                print(out, flush=True)
    except ImportError as e:
        out["torch_error"] = repr(e)
    for T in (1, 16):
        with threadpool_limits(T):
            n = 4096 if T > 1 else 2048
            a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
            out[f"numpy_f32_T{T}"] = rate(lambda a=a, b=b: a @ b, n)
    out["numpy_blas"] = [i.get("internal_api") for i in threadpool_info()]
    print(json.dumps(out))
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
