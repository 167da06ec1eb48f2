"""The training case shared by the MPI worker and the in-process tests (same data, model, steps)."""

import fastbp
from fastbp import BatchNorm, Dense, Dropout, Model, data


def case_data(n=1040):
    (X, y), _ = data.load_fashion_mnist()
    return X[:n], y[:n]


def train(comm=None, optimizer=None, on_batch=None, seed=3):
    X, y = case_data()
    m = Model([Dense(64, bias=False), BatchNorm("relu"), Dropout(0.2), Dense(32, "tanh"), Dense(10)], seed=7)
    fastbp.set_num_threads(1) if comm is None else None
    from fastbp.callbacks import LambdaCallback
    cbs = [LambdaCallback(on_batch_end=on_batch)] if on_batch else []
    m.fit(X, y, epochs=1, batch_size=128, optimizer=optimizer or fastbp.SGD(lr=0.05, momentum=0.9), seed=seed,
          distributed=comm, callbacks=cbs)
    return m.params.copy()
