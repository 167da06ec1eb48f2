"""scikit-learn estimators: the official estimator checks, model selection on real data, labels, pickle."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is an optional extra: pip install 'fastbp[sklearn]'")
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

from fastbp import data  # noqa: E402
from fastbp.sklearn import FastBPClassifier, FastBPRegressor  # noqa: E402

# Checks that are skipped, and why: check_array_api_input (we do not declare array-API support; it
# is skipped by scikit-learn itself unless SCIPY_ARRAY_API is set).  No other check is skipped.


@pytest.mark.jit
@pytest.mark.parametrize("est", [FastBPClassifier(random_state=0), FastBPRegressor(random_state=0)],
                         ids=["classifier", "regressor"])
def test_check_estimator_passes(est):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # SkipTestWarning for the array-API check
        results = check_estimator(est, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:300]) for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed
    assert skipped <= {"check_array_api_input"}, skipped
    assert len(results) > 40


@pytest.fixture(scope="module")
def fm_small():
    try:
        (X, y), _ = data.load_fashion_mnist()
    except FileNotFoundError as e:
        pytest.fail(f"Fashion-MNIST missing (CI installs dataset-fashion-mnist): {e}")
    rng = np.random.default_rng(0)
    idx = rng.choice(X.shape[0], 1500, replace=False)
    return X[idx], y[idx]


@pytest.mark.slow
def test_cross_val_score_and_grid_search_on_fashion_mnist(fm_small):
    X, y = fm_small
    clf = FastBPClassifier(hidden_layer_sizes=(64,), max_iter=15, random_state=0, learning_rate_init=2e-3)
    scores = cross_val_score(make_pipeline(StandardScaler(), clf), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.7, scores
    grid = GridSearchCV(clf, {"hidden_layer_sizes": [(16,), (64,)], "activation": ["relu", "tanh"]}, cv=2)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"hidden_layer_sizes", "activation"}
    assert grid.best_score_ > 0.7


@pytest.mark.slow
def test_string_labels_pickle_and_partial_fit(fm_small):
    X, y = fm_small
    names = np.array(["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "boot"])
    ys = names[y]
    clf = FastBPClassifier(hidden_layer_sizes=(32,), max_iter=10, random_state=1).fit(X, ys)
    assert list(clf.classes_) == sorted(names) and clf.n_features_in_ == 784
    pred = clf.predict(X[:50])
    assert pred.dtype == ys.dtype and set(pred) <= set(names)
    assert clf.score(X, ys) > 0.75
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X[:200]), clf.predict_proba(X[:200]))
    inc = FastBPClassifier(hidden_layer_sizes=(32,), random_state=1)
    with pytest.raises(ValueError, match="classes"):
        inc.partial_fit(X[:100], ys[:100])
    for s in range(0, 1500, 300):
        inc.partial_fit(X[s:s + 300], ys[s:s + 300], classes=names)
    assert inc.n_iter_ == 5 and inc.score(X, ys) > 0.5
    with pytest.raises(ValueError, match="not in classes_"):
        inc.partial_fit(X[:10], np.array(["hat"] * 10))


@pytest.mark.slow
def test_early_stopping_restores_best_and_stops(fm_small):
    X, y = fm_small
    clf = FastBPClassifier(hidden_layer_sizes=(32,), max_iter=300, early_stopping=True, n_iter_no_change=3,
                           validation_fraction=0.2, random_state=0, learning_rate_init=1e-2).fit(X, y)
    assert clf.n_iter_ < 300
    assert len(clf.validation_scores_) == clf.n_iter_


def test_regressor_multi_output_and_one_d():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    Y = np.c_[X @ rng.normal(size=5), np.sin(X[:, 0])]
    r = FastBPRegressor(hidden_layer_sizes=(32,), random_state=0).fit(X, Y)
    assert r.predict(X).shape == (400, 2) and r.score(X, Y) > 0.8
    r1 = FastBPRegressor(hidden_layer_sizes=(32,), random_state=0, max_iter=50).fit(X, Y[:, 0])
    assert r1.predict(X).shape == (400,)


def test_bad_hyperparameters_are_named():
    X, y = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match=r"hidden_layer_sizes\[0\]"):
        FastBPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="activation"):
        FastBPClassifier(activation="swish").fit(X, y)
    with pytest.raises(ValueError, match="lr"):
        FastBPClassifier(learning_rate_init=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="solver: 'lbfgs'"):
        FastBPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="learning_rate: only 'constant'"):
        FastBPClassifier(learning_rate="invscaling").fit(X, y)
    with pytest.raises(ValueError, match="batch_size"):
        FastBPClassifier(batch_size=0).fit(X, y)
    with pytest.raises(ValueError, match="alpha"):
        FastBPClassifier(alpha=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="max_iter"):
        FastBPClassifier(max_iter=0).fit(X, y)
    with pytest.raises(ValueError, match="class"):
        FastBPClassifier().fit(X, np.zeros(10))


def test_dtype_follows_x_unless_given(rng):
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int)
    assert FastBPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X, y).model_.dtype == np.float64
    assert FastBPClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X.astype(np.float32), y).model_.dtype == np.float32
    assert FastBPClassifier(hidden_layer_sizes=(4,), max_iter=1, dtype="float32").fit(X, y).model_.dtype == np.float32
    with pytest.raises(ValueError, match="dtype: expected None"):
        FastBPClassifier(dtype="float16").fit(X, y)


@pytest.mark.slow
def test_mlpclassifier_code_runs_unchanged_with_fastbp():
    """The same GridSearchCV code, with MLPClassifier's parameter names, for scikit-learn's MLP and
    fastbp's: only the class differs, and both find a good model on scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)

    def search(Estimator):
        pipe = Pipeline([("scale", StandardScaler()),
                         ("mlp", Estimator(max_iter=30, random_state=0, batch_size=64, early_stopping=True,
                                           validation_fraction=0.1, n_iter_no_change=5, solver="adam"))])
        grid = GridSearchCV(pipe, {"mlp__hidden_layer_sizes": [(32,), (64, 32)], "mlp__alpha": [1e-4, 1e-2],
                                   "mlp__learning_rate_init": [1e-3, 3e-3], "mlp__activation": ["relu", "tanh"]},
                            cv=2)
        grid.fit(Xtr, ytr)
        return grid.best_params_, grid.score(Xte, yte)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # scikit-learn's own MLP at max_iter=30
        sk_params, sk_score = search(MLPClassifier)
    fb_params, fb_score = search(FastBPClassifier)
    assert set(fb_params) == set(sk_params)
    assert fb_score > 0.9 and fb_score > sk_score - 0.05, (fb_score, sk_score)
    missing = set(MLPClassifier().get_params()) - set(FastBPClassifier().get_params())
    assert missing <= {"loss"}, missing   # MLPRegressor-only / newer names


def test_sgd_solver_and_warm_start():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = FastBPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.05, max_iter=5,
                           random_state=0, warm_start=True).fit(X, y)
    from fastbp.optim import SGD
    opt = clf.model_.optimizer
    assert isinstance(opt, SGD) and opt.momentum == 0.9 and opt.nesterov and opt.weight_decay == 1e-4 / 200
    first = clf.model_
    clf.set_params(max_iter=3).fit(X, y)
    assert clf.model_ is first and clf.n_iter_ == 8
    assert FastBPClassifier(hidden_layer_sizes=(16,), max_iter=1, random_state=0).fit(X, y).model_ is not first
