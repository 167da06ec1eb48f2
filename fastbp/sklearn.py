"""scikit-learn estimators: ``FastBPClassifier`` and ``FastBPRegressor`` (needs ``fastbp[sklearn]``).

They build a ``fastbp.Model`` MLP, so they work in Pipelines, ``cross_val_score``,
``GridSearchCV``, with any label type (``classes_``), ``partial_fit`` and pickle, and pass
``sklearn.utils.estimator_checks.check_estimator``.  Input validation is scikit-learn's own
(``validate_data``): the messages are the ones its users know.

Training: ``max_iter`` epochs at most; it stops earlier when the training loss (or, with
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

#: scikit-learn's activation names -> fastbp's
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity",
                "sigmoid": "sigmoid", "leaky_relu": "leaky_relu"}


class _FastBPEstimator(BaseEstimator):
    """The parameters are ``MLPClassifier``'s / ``MLPRegressor``'s names and meanings (same defaults),
    plus fastbp's own (``batchnorm``, ``dropout``, ``n_threads``, ``dtype``); a value fastbp cannot
    honour (``solver='lbfgs'``, ``learning_rate='invscaling'``) raises ValueError naming it."""
    _loss = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, batchnorm=False, dropout=0.0, n_threads=None,
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.batchnorm = batchnorm
        self.dropout = dropout
        self.n_threads = n_threads
        self.dtype = dtype

    # -------------------------------------------------------------- building
    def _specs(self, n_out):
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        act = _ACTIVATIONS[self.activation]
        specs = []
        for i, h in enumerate(sizes):
            if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
                raise ValueError(f"hidden_layer_sizes[{i}]: expected a positive int, got {h!r}")
            if self.batchnorm:
                specs += [L.Dense(int(h), bias=False), L.BatchNorm(act)]
            else:
                specs.append(L.Dense(int(h), act))
            if self.dropout:
                specs.append(L.Dropout(self.dropout))
        return specs + [L.Dense(int(n_out))]

    def _batch(self, n):
        """scikit-learn's rule: 'auto' is min(200, n); a larger int is clipped to n."""
        if isinstance(self.batch_size, str) and self.batch_size == "auto":
            return min(200, n)
        return min(_positive_int("batch_size", self.batch_size), n)

    def _optimizer(self, batch):
        """The fastbp optimizer for ``solver``: scikit-learn's L2 term alpha/2 |W|^2 / batch rows is a
        weight decay of alpha / batch (fastbp decays biases too; scikit-learn does not)."""
        from . import optim as O
        if self.solver == "lbfgs":
            raise ValueError("solver: 'lbfgs' is not supported by fastbp (full-batch quasi-Newton); "
                             "use 'adam' or 'sgd'")
        if self.learning_rate != "constant":
            raise ValueError(f"learning_rate: only 'constant' is supported by fastbp, got {self.learning_rate!r} "
                             f"(the rate itself is learning_rate_init)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, np.floating)) or self.alpha < 0:
            raise ValueError(f"alpha: expected a non-negative number, got {self.alpha!r}")
        wd = float(self.alpha) / batch
        if self.solver == "sgd":
            return O.SGD(lr=self.learning_rate_init, momentum=self.momentum,
                         nesterov=bool(self.nesterovs_momentum and self.momentum > 0), weight_decay=wd)
        if self.solver in ("adam", "adamw"):
            cls = O.Adam if self.solver == "adam" else O.AdamW
            return cls(lr=self.learning_rate_init, beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon,
                       weight_decay=wd)
        raise ValueError(f"solver: expected 'adam', 'sgd' or 'adamw', got {self.solver!r}")

    def _new_model(self, n_out, X):
        if self.dtype not in (None, "float32", "float64", np.float32, np.float64):
            raise ValueError(f"dtype: expected None (that of X), 'float32' or 'float64', got {self.dtype!r}")
        if self.warm_start and hasattr(self, "model_") and self.model_.input_dim == X.shape[1] \
                and self.model_.output_dim == n_out:
            return self.model_     # scikit-learn's warm_start: continue from the previous solution
        seed = int(check_random_state(self.random_state).randint(0, 2 ** 31 - 1))
        dtype = X.dtype if self.dtype is None else self.dtype     # None: like scikit-learn's MLP, X's
        self.model_ = Model(self._specs(n_out), loss=self._loss, input_dim=X.shape[1], dtype=dtype, seed=seed)
        self.n_iter_, self.loss_curve_, self.validation_scores_ = 0, [], []
        self._seed = seed
        return self.model_

    def _epoch(self, X, y):
        B = self._batch(X.shape[0])
        # fit keeps the model's optimizer state (moments, velocity) when the optimizer's kind is unchanged
        hist = self.model_.fit(X, y, epochs=1, batch_size=B, optimizer=self._optimizer(B), shuffle=bool(self.shuffle),
                               seed=self._seed)
        self.n_iter_ += 1
        self.loss_curve_.append(hist["loss"][-1])
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {hist['loss'][-1]:.8f}")
        return hist["loss"][-1]

    def _train(self, X, y, y_score):
        """Epoch loop with the stopping rule of the module docstring."""
        Xv = yv = None
        if self.early_stopping:
            strat = y if self._loss == "softmax_ce" else None
            X, Xv, y, yv = train_test_split(X, y, test_size=self.validation_fraction, random_state=self._seed,
                                            stratify=strat)
        best, best_state, stale = np.inf, None, 0
        for _ in range(_positive_int('max_iter', self.max_iter)):
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


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return int(v)


class FastBPClassifier(ClassifierMixin, _FastBPEstimator):
    """MLP classifier (softmax cross-entropy) trained by fastbp's kernels: a drop-in for
    ``sklearn.neural_network.MLPClassifier``.

    Same parameter names, meanings and defaults: ``hidden_layer_sizes``, ``activation`` (relu,
    tanh, logistic, identity; also leaky_relu), ``solver`` (adam, sgd; also adamw; not lbfgs),
    ``alpha``, ``batch_size``, ``learning_rate`` ('constant' only), ``learning_rate_init``,
    ``max_iter`` (epochs), ``shuffle``, ``random_state``, ``tol``, ``verbose``, ``warm_start``,
    ``momentum``, ``nesterovs_momentum``, ``early_stopping``, ``validation_fraction``, ``beta_1``,
    ``beta_2``, ``epsilon``, ``n_iter_no_change`` (``power_t`` and ``max_fun`` belong to settings
    fastbp refuses and are accepted only for the signature).  fastbp's own: ``batchnorm``,
    ``dropout``, ``n_threads`` (None: fastbp's current setting), ``dtype`` (None: float32 for
    float32 X, else float64, as scikit-learn's MLP).  Fitted: ``classes_``, ``n_features_in_``,
    ``model_`` (the fastbp Model), ``n_iter_``, ``loss_curve_``, ``validation_scores_``.
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
    """MLP regressor (mean squared error) trained by fastbp's kernels: a drop-in for
    ``sklearn.neural_network.MLPRegressor``; parameters as ``FastBPClassifier`` (plus ``loss``:
    'squared_error' only).  One output per target column; 1-D ``y`` gives 1-D predictions."""
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
