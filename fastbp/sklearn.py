"""scikit-learn estimators: ``FastBPClassifier`` and ``FastBPRegressor`` (needs ``fastbp[sklearn]``).

They build a ``fastbp.Model`` MLP, so they work in Pipelines, ``cross_val_score``,
``GridSearchCV``, with any label type (``classes_``), ``partial_fit`` and pickle, and pass
``sklearn.utils.estimator_checks.check_estimator``.  Input validation is scikit-learn's own
(``validate_data``): the messages are the ones its users know.

Training: ``epochs`` passes at most; it stops earlier when the training loss (or, with
``early_stopping``, the validation score on a held-out ``validation_fraction`` of the training
rows) has not improved by ``tol`` for ``n_iter_no_change`` epochs; with ``early_stopping`` the
best weights are restored, as scikit-learn's ``MLPClassifier`` does.
"""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import layers as L
from ._threads import pinned as _threads
from .callbacks import restore, snapshot
from .model import Model


class _FastBPEstimator(BaseEstimator):
    _loss = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", optimizer="adam", learning_rate=1e-3,
                 batch_size=128, epochs=200, batchnorm=False, dropout=0.0, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, random_state=None, n_threads=None,
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.batchnorm = batchnorm
        self.dropout = dropout
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.n_threads = n_threads
        self.dtype = dtype

    # -------------------------------------------------------------- building
    def _specs(self, n_out):
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
        specs = []
        for i, h in enumerate(sizes):
            if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
                raise ValueError(f"hidden_layer_sizes[{i}]: expected a positive int, got {h!r}")
            if self.batchnorm:
                specs += [L.Dense(int(h), bias=False), L.BatchNorm(self.activation)]
            else:
                specs.append(L.Dense(int(h), self.activation))
            if self.dropout:
                specs.append(L.Dropout(self.dropout))
        return specs + [L.Dense(int(n_out))]

    def _new_model(self, n_out, X):
        if self.dtype not in (None, "float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype: expected None (that of X), 'float32' or 'float64', got {self.dtype!r}")
        seed = int(check_random_state(self.random_state).randint(0, 2 ** 31 - 1))
        dtype = X.dtype if self.dtype is None else self.dtype     # None: like scikit-learn's MLP, X's
        self.model_ = Model(self._specs(n_out), loss=self._loss, input_dim=X.shape[1], dtype=dtype, seed=seed)
        self.n_iter_, self.loss_curve_, self.validation_scores_ = 0, [], []
        self._seed = seed
        return self.model_

    def _epoch(self, X, y):
        hist = self.model_.fit(X, y, epochs=1, batch_size=min(int(self.batch_size), X.shape[0]),
                               lr=self.learning_rate, optimizer=self.optimizer, seed=self._seed)
        self.n_iter_ += 1
        self.loss_curve_.append(hist["loss"][-1])
        return hist["loss"][-1]

    def _train(self, X, y, y_score):
        """Epoch loop with the stopping rule of the module docstring."""
        Xv = yv = None
        if self.early_stopping:
            strat = y if self._loss == "softmax_ce" else None
            X, Xv, y, yv = train_test_split(X, y, test_size=self.validation_fraction, random_state=self._seed,
                                            stratify=strat)
        best, best_state, stale = np.inf, None, 0
        for _ in range(int(self.epochs)):
            loss = self._epoch(X, y)
            if self.early_stopping:
                score = y_score(Xv, yv)
                self.validation_scores_.append(score)
                value = -score
            else:
                value = loss
            if value < best - self.tol:
                best, stale = value, 0
                if self.early_stopping:
                    best_state = snapshot(self.model_)
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
        if best_state is not None:
            restore(self.model_, best_state)
        return self

    def _check_X(self, X, reset):
        return validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])

    def _raw_outputs(self, X):
        check_is_fitted(self, "model_")
        X = self._check_X(X, reset=False)
        with _threads(self.n_threads):
            return self.model_.predict_proba(X).astype(np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


class FastBPClassifier(ClassifierMixin, _FastBPEstimator):
    """MLP classifier (softmax cross-entropy) trained by fastbp's kernels.

    Parameters: ``hidden_layer_sizes``, ``activation`` (relu, tanh, sigmoid, leaky_relu),
    ``optimizer`` (sgd, adam, adamw) and its ``learning_rate``, ``batch_size``, ``epochs``,
    ``batchnorm``, ``dropout``, ``early_stopping`` with ``validation_fraction``,
    ``n_iter_no_change`` and ``tol``, ``random_state``, ``n_threads`` (None: fastbp's current
    setting), ``dtype`` (None: float32 for float32 X, else float64, as scikit-learn's MLP).
    Fitted: ``classes_``, ``n_features_in_``, ``model_`` (the fastbp Model),
    ``n_iter_``, ``loss_curve_``.
    """
    _loss = "softmax_ce"

    def _encode(self, y):
        check_classification_targets(y)
        return np.searchsorted(self.classes_, y)

    def _set_classes(self, classes):
        self.classes_ = np.unique(classes)
        if self.classes_.shape[0] < 2:
            raise ValueError(f"y: {type(self).__name__} needs samples of at least 2 classes in the data, "
                             f"got {self.classes_.shape[0]} class")

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self._set_classes(y)
        self._new_model(self.classes_.shape[0], X)
        with _threads(self.n_threads):
            return self._train(X, self._encode(y), lambda Xv, yv: float(np.mean(
                self.model_.predict(Xv) == yv)))

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y).  The first call needs ``classes`` (all labels that will occur)."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes: must be given on the first call to partial_fit (all labels that occur)")
            self._set_classes(classes)
            self._new_model(self.classes_.shape[0], X)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes: {np.unique(classes)} differ from the first call's {self.classes_}")
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"y: labels {unknown[:5]} are not in classes_ {self.classes_}")
        with _threads(self.n_threads):
            self._epoch(X, self._encode(y))
        return self

    def predict_proba(self, X):
        p = self._raw_outputs(X)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        p = self.predict_proba(X)
        return self.classes_[np.argmax(p, axis=1)]


class FastBPRegressor(RegressorMixin, _FastBPEstimator):
    """MLP regressor (mean squared error) trained by fastbp's kernels; parameters as
    ``FastBPClassifier``.  One output per target column; 1-D ``y`` gives 1-D predictions."""
    _loss = "mse"

    def _targets(self, y):
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        return y.reshape(y.shape[0], -1)

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], y_numeric=True, multi_output=True)
        y2 = self._targets(y)
        self._new_model(y2.shape[1], X)
        with _threads(self.n_threads):
            return self._train(X, y2, lambda Xv, yv: float(self._r2(Xv, yv)))

    def _r2(self, X, y):
        p = self.model_.predict(X).astype(np.float64)
        ss = ((y - y.mean(axis=0)) ** 2).sum()
        return 1.0 - ((y - p) ** 2).sum() / ss if ss > 0 else 0.0

    def partial_fit(self, X, y):
        """One epoch over (X, y)."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], y_numeric=True, multi_output=True,
                             reset=first)
        one_d = np.ndim(y) == 1
        y2 = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if first:
            self._y_1d = one_d
            self._new_model(y2.shape[1], X)
        elif y2.shape[1] != self.model_.output_dim:
            raise ValueError(f"y: expected {self.model_.output_dim} target columns as in the first call, "
                             f"got {y2.shape[1]}")
        with _threads(self.n_threads):
            self._epoch(X, y2)
        return self

    def predict(self, X):
        p = self._raw_outputs(X)
        return p.ravel() if self._y_1d else p

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
