"""Run under mpiexec by tests/test_distributed.py: a few data-parallel steps on Fashion-MNIST.

    mpiexec -n 2 python tests/mpi_worker.py OUT_DIR [crash|kill|raise|seed]

Each rank writes its parameters to OUT_DIR/rank<r>.npy.  With a mode, rank 1 fails during
training (exits with status 1, is killed, or raises in a callback); the job must then end with
an error within a bounded time instead of hanging.
"""
import os
import signal
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dist_case import train  # noqa: E402

from fastbp.distributed import MPIComm  # noqa: E402

if __name__ == "__main__":
    out, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
    comm = MPIComm(timeout=float(os.environ.get("FASTBP_TEST_TIMEOUT", "20")))
    fail = None
    if comm.rank == 1 and mode in ("crash", "kill", "raise"):
        def fail(model, step, logs):
            if step == 3:
                if mode == "crash":
                    os._exit(1)
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 raised")
    # "seed": rank 1 is given another fit seed, which every rank refuses, naming the field
    params = train(comm, on_batch=fail, seed=4 if comm.rank == 1 and mode == "seed" else 3)
    np.save(os.path.join(out, f"rank{comm.rank}.npy"), params)
