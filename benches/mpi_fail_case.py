"""One failure case under ``mpiexec -n 2`` on synthetic data: rank 1 misbehaves as MODE says.

raise: raises in a callback at step 3; seed: another fit seed; nan: a NaN in its data;
arch: another architecture; kill: SIGKILLs itself at step 3.  Run by benches/mpi_failmatrix.sh.
"""
import os
import signal
import sys

import numpy as np

from fastbp import Dense, Model
from fastbp.callbacks import LambdaCallback
from fastbp.distributed import MPIComm


def main(mode):
    comm = MPIComm(timeout=20)
    bad = comm.rank == 1
    rng = np.random.default_rng(0)
    X = rng.random((2048, 64), dtype=np.float32)
    y = rng.integers(0, 10, 2048)
    if bad and mode == "nan":
        X[5, 3] = np.nan
    m = Model([Dense(48 if bad and mode == "arch" else 32, "tanh"), Dense(10)], seed=0)

    def on_batch(model, step, logs):
        if bad and step == 3:
            if mode == "raise":
                raise RuntimeError("rank 1 raised on purpose")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
    m.fit(X, y, epochs=2, batch_size=128, lr=0.1, seed=5 if bad and mode == "seed" else 4,
          distributed=comm, callbacks=[LambdaCallback(on_batch_end=on_batch)])
    print("finished", comm.rank)


if __name__ == "__main__":
    main(sys.argv[1])
