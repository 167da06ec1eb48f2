"""Plain numpy implementation of every fastbp operation: the test oracle and benchmark baseline.

Written for clarity, not speed: each layer is a class with ``forward`` and
``backward``; ``backward`` never mutates the incoming gradient.  Shapes follow
the kernels: N=batch, D=in, F=out; W is (D, F).

Activation derivative conventions match the kernels: relu'(0) = 0,
leaky_relu'(0) = alpha.
"""
import numpy as np


def activate(z, act, alpha=0.01):
    if act in (None, "identity", "linear", "none"):
        return z.copy()
    if act == "relu":
        return np.where(z > 0, z, 0).astype(z.dtype)
    if act == "leaky_relu":
        return np.where(z > 0, z, alpha * z).astype(z.dtype)
    if act == "sigmoid":
        return (1 / (1 + np.exp(-z))).astype(z.dtype)
    if act == "tanh":
        return np.tanh(z)
    raise ValueError(f"unknown activation {act!r}")


def activation_grad(z, act, alpha=0.01):
    """d act(z) / dz, elementwise."""
    if act in (None, "identity", "linear", "none"):
        return np.ones_like(z)
    if act == "relu":
        return (z > 0).astype(z.dtype)
    if act == "leaky_relu":
        return np.where(z > 0, 1, alpha).astype(z.dtype)
    y = activate(z, act)
    if act == "sigmoid":
        return y * (1 - y)
    return 1 - y * y  # tanh


class Activation:
    def __init__(self, act, alpha=0.01):
        self.act, self.alpha = act, alpha

    def forward(self, z):
        self.z = z
        return activate(z, self.act, self.alpha)

    def backward(self, dy):
        return dy * activation_grad(self.z, self.act, self.alpha)


class Dense:
    """y = act(x @ W + b)."""

    def __init__(self, W, b, act=None, alpha=0.01):
        self.W, self.b, self.act = W, b, Activation(act, alpha)

    def forward(self, x):
        self.x = x
        return self.act.forward(x @ self.W + self.b)

    def backward(self, dy):
        dz = self.act.backward(dy)
        self.dW = self.x.T @ dz
        self.db = dz.sum(axis=0)
        return dz @ self.W.T

    def params(self):
        return [self.W, self.b]

    def grads(self):
        return [self.dW, self.db]


class BatchNorm:
    """Batch normalization over the batch axis, then an activation.

    Training: normalize with batch mean and (biased) variance, update running
    stats as ``running = (1 - momentum) running + momentum batch`` (running_var
    uses the unbiased batch variance, like PyTorch).  Eval: running stats.
    """

    def __init__(self, gamma, beta, act=None, alpha=0.01, momentum=0.1, eps=1e-5):
        self.gamma, self.beta, self.momentum, self.eps = gamma, beta, momentum, eps
        self.running_mean = np.zeros_like(gamma)
        self.running_var = np.ones_like(gamma)
        self.act = Activation(act, alpha)
        self.training = True

    def forward(self, x):
        if self.training:
            n = x.shape[0]
            mean = x.mean(axis=0)
            var = x.var(axis=0)
            unbiased = var * n / (n - 1) if n > 1 else var
            self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mean
            self.running_var = (1 - self.momentum) * self.running_var + self.momentum * unbiased
        else:
            mean, var = self.running_mean, self.running_var
        self.inv_std = 1 / np.sqrt(var + self.eps)
        self.xhat = (x - mean) * self.inv_std
        return self.act.forward(self.gamma * self.xhat + self.beta)

    def backward(self, dy):
        dz = self.act.backward(dy)
        self.dgamma = (dz * self.xhat).sum(axis=0)
        self.dbeta = dz.sum(axis=0)
        dxhat = dz * self.gamma
        if not self.training:
            return dxhat * self.inv_std
        n = dz.shape[0]
        return (self.inv_std / n) * (n * dxhat - dxhat.sum(axis=0) - self.xhat * (dxhat * self.xhat).sum(axis=0))

    def params(self):
        return [self.gamma, self.beta]

    def grads(self):
        return [self.dgamma, self.dbeta]


class Dropout:
    """Inverted dropout with an explicit keep-mask (1 = keep): y = x * mask / (1 - p)."""

    def __init__(self, p, mask=None):
        self.p, self.mask, self.training = p, mask, True

    def forward(self, x):
        if not self.training or self.p == 0:
            return x.copy()
        return x * self.mask / (1 - self.p)

    def backward(self, dy):
        if not self.training or self.p == 0:
            return dy.copy()
        return dy * self.mask / (1 - self.p)


class SoftmaxCrossEntropy:
    """Mean over rows of -log softmax(logits)[label]; labels int (N,) or soft (N, C)."""

    def forward(self, logits, labels):
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        n = logits.shape[0]
        if labels.ndim == 1:
            t = np.zeros_like(logits)
            t[np.arange(n), labels] = 1
        else:
            t = labels
        self.p, self.t, self.n = np.exp(logp), t, n
        return float(-(t * logp).sum() / n)

    def backward(self):
        return (self.p * self.t.sum(axis=1, keepdims=True) - self.t) / self.n


class MSE:
    """Mean over all elements of (pred - target)^2."""

    def forward(self, pred, target):
        self.e = pred - target
        return float((self.e ** 2).mean())

    def backward(self):
        return 2 * self.e / self.e.size


class SigmoidBCE:
    """Mean over all elements of the binary cross-entropy of sigmoid(logits)."""

    def forward(self, logits, target):
        self.z, self.t = logits, target
        loss = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
        return float(loss.mean())

    def backward(self):
        return (1 / (1 + np.exp(-self.z)) - self.t) / self.z.size


def sgd_step(p, g, lr, momentum=0.0, velocity=None, nesterov=False, weight_decay=0.0):
    """Returns the new (p, velocity), PyTorch's SGD rule."""
    g = g + weight_decay * p
    if momentum:
        velocity = momentum * velocity + g
        g = g + momentum * velocity if nesterov else velocity
    return p - lr * g, velocity


def adam_step(p, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """Returns the new (p, m, v) after Adam (or AdamW with ``decoupled``) step t (1-based)."""
    if decoupled:
        p = p - lr * weight_decay * p
    else:
        g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** t)
    vhat = v / (1 - beta2 ** t)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


class MLP:
    """A stack of reference Dense layers with softmax cross-entropy and plain SGD.

    The numpy baseline in the benchmarks: ``train_step`` is forward, backward and
    update, the way one writes it in plain numpy.
    """

    def __init__(self, sizes, act="tanh", dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        self.layers = []
        for i, (d, f) in enumerate(zip(sizes[:-1], sizes[1:])):
            lim = np.sqrt(6.0 / (d + f))
            W = rng.uniform(-lim, lim, (d, f)).astype(dtype)
            last = i == len(sizes) - 2
            self.layers.append(Dense(W, np.zeros(f, dtype), None if last else act))
        self.loss = SoftmaxCrossEntropy()

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def train_step(self, x, labels, lr):
        loss = self.loss.forward(self.forward(x), labels)
        d = self.loss.backward().astype(x.dtype)
        for layer in reversed(self.layers):
            d = layer.backward(d)
        for layer in self.layers:
            layer.W -= lr * layer.dW
            layer.b -= lr * layer.db
        return loss
