"""Callbacks, early stopping, checkpoints of the best epoch, validation_split, per-step schedules, verbose."""
import math

import numpy as np
import pytest

from fastbp import Dense, Model
from fastbp import callbacks as C
from fastbp import schedules as S


@pytest.fixture
def blobs(rng):
    X = rng.standard_normal((300, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


def net(seed=0):
    return Model([Dense(16, "tanh"), Dense(2)], seed=seed)


def test_callback_hooks_order_and_stop_from_a_batch(blobs):
    X, y = blobs
    seen = []

    class Rec(C.Callback):
        def on_train_begin(self, model, logs):
            seen.append("begin")

        def on_batch_end(self, model, step, logs):
            seen.append(("batch", step))
            if step == 5:
                model.stop_training = True

        def on_epoch_end(self, model, epoch, logs):
            seen.append(("epoch", logs["epoch"]))

        def on_train_end(self, model, logs):
            seen.append("end")
    m = net()
    m.fit(X, y, epochs=10, batch_size=32, callbacks=[Rec()])
    assert seen == ["begin"] + [("batch", t) for t in range(1, 6)] + [("epoch", 1), "end"]
    assert m.step_count == 5 and m.epochs_done == 1
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        m.fit(X, y, callbacks=[print])


def test_early_stopping_stops_and_restores_the_best_epoch(blobs):
    X, y = blobs
    vals = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9] + [1.0] * 20)
    params_at = {}

    class FakeVal(C.Callback):   # a scripted val_loss: best at epoch 2, then worse
        def on_epoch_end(self, model, epoch, logs):
            logs["val_loss"] = next(vals)
            params_at[logs["epoch"]] = model.params.copy()
    es = C.EarlyStopping("val_loss", patience=2)
    m = net()
    m.fit(X, y, epochs=20, callbacks=[FakeVal(), es])
    assert es.best_epoch == 2 and es.stopped_epoch == 5 and m.epochs_done == 5
    np.testing.assert_array_equal(m.params, params_at[2])


def test_early_stopping_on_real_validation_split(blobs):
    X, y = blobs
    m = net()
    es = C.EarlyStopping("val_accuracy", patience=3, min_delta=1e-9, restore_best=True)
    h = m.fit(X, y, epochs=200, batch_size=16, lr=0.3, validation_split=0.25, callbacks=[es])
    assert es.stopped_epoch and m.epochs_done < 200
    assert len(h["val_accuracy"]) == m.epochs_done and max(h["val_accuracy"]) > 0.9
    with pytest.raises(ValueError, match="EarlyStopping.monitor: 'val_loss' is not in the epoch logs"):
        net().fit(X, y, epochs=2, callbacks=[C.EarlyStopping()])


def test_model_checkpoint_best_only(blobs, tmp_path):
    X, y = blobs
    vals = iter([0.9, 0.8, 0.85, 0.7, 0.75])

    class FakeVal(C.Callback):
        def on_epoch_end(self, model, epoch, logs):
            logs["val_loss"] = next(vals)
    ck = C.ModelCheckpoint(tmp_path / "best.npz")
    m = net()
    m.fit(X, y, epochs=5, callbacks=[FakeVal(), ck])
    assert ck.saved == [1, 2, 4]
    assert Model.load(tmp_path / "best.npz").epochs_done == 4


def test_validation_split_is_seeded_and_held_out(blobs):
    X, y = blobs
    a, b = net(), net()
    ha = a.fit(X, y, epochs=2, validation_split=0.2, seed=3)
    hb = b.fit(X, y, epochs=2, validation_split=0.2, seed=3)
    assert ha["val_loss"] == hb["val_loss"] and len(ha["val_loss"]) == 2
    np.testing.assert_array_equal(a.params, b.params)
    for bad in (0.0, 1.0, -0.1, "0.2", float("nan")):
        with pytest.raises((TypeError, ValueError), match="validation_split"):
            net().fit(X, y, validation_split=bad)
    with pytest.raises(ValueError, match="not both"):
        net().fit(X, y, validation_split=0.2, validation_data=(X, y))


def test_per_step_schedules():
    w = S.WarmUp(4, then=S.Cosine(10))
    assert [w.multiplier(t, 0) for t in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert w.multiplier(5, 0) == 1.0 and w.multiplier(15, 0) == pytest.approx(0.0, abs=1e-12)
    assert w.multiplier(9, 0) == pytest.approx((1 + math.cos(math.pi * 4 / 10)) / 2)
    sd = S.StepDecay(3, 0.5)
    assert [sd.multiplier(t, 0) for t in range(1, 8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert S.StepDecay(2, 0.1, unit="epoch").multiplier(99, 4) == pytest.approx(0.01)
    r = S.ReduceOnPlateau("val_loss", factor=0.5, patience=1)
    for v in (1.0, 0.9, 0.95, 0.96, 0.97, 0.98):
        r.observe({"val_loss": v})
    assert r.multiplier(1, 0) == 0.25
    for bad in (lambda: S.WarmUp(0), lambda: S.Cosine(5, min_ratio=2), lambda: S.StepDecay(1, unit="x"),
                lambda: S.ReduceOnPlateau(factor=1.0)):
        with pytest.raises(ValueError):
            bad()


def test_fit_applies_the_schedule_every_step(blobs):
    X, y = blobs
    rates = []
    m = net()
    m.fit(X, y, epochs=2, batch_size=100, lr=0.2, schedule=S.WarmUp(4),
          callbacks=[C.LambdaCallback(on_batch_end=lambda model, t, logs: rates.append(logs["lr"]))])
    assert rates == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert m.history["lr"] == pytest.approx([0.15, 0.2])
    for bad in (lambda e: float("nan"), lambda e: -1.0):
        with pytest.raises(ValueError, match="schedule value"):
            net().fit(X, y, schedule=bad)


def test_verbose_prints_one_plain_line_per_epoch_off_a_terminal(blobs, capsys):
    X, y = blobs
    net().fit(X, y, epochs=3, verbose=True, validation_split=0.1)
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.startswith("epoch ")]
    assert len(lines) == 3 and "val_accuracy" in lines[0]
    assert "\r" not in out + err


def test_validation_inside_fit_keeps_the_fits_chunk_count_when_threads_change(rng):
    # the governor may run fewer threads mid-fit; validation (60 rows: the D-cut forward, whose
    # partial sums depend on the chunk count) must still cut as the fit does, so a fit whose
    # thread count drops after every batch reports the same val_loss, bit for bit
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a pool of 2 threads")
    X = rng.standard_normal((300, 160)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    before = numba.get_num_threads()

    def wide():     # 64 outputs from 160 inputs: wide and deep enough for the D cut below 128 rows
        return Model([Dense(64, "tanh"), Dense(2)], seed=0)

    def drop(model, t, logs):
        numba.set_num_threads(1)

    try:
        numba.set_num_threads(2)
        plain = wide().fit(X, y, epochs=2, validation_split=0.2, seed=3)
        numba.set_num_threads(2)
        dropped = wide().fit(X, y, epochs=2, validation_split=0.2, seed=3,
                            callbacks=[C.LambdaCallback(on_batch_end=drop)])
    finally:
        numba.set_num_threads(before)
    assert dropped["val_loss"] == plain["val_loss"]
