"""The few-shot emotion head: multinomial logistic regression on w, fitted in seconds.

The paper's claim is that w supports emotion recognition with few labels. The head is a linear
layer (weights (n_classes, w_dim), bias (n_classes,)) on the posterior mean of w, fitted by
Newton-free full-batch gradient descent with L2 regularisation on standardised inputs, in numpy:
a few hundred examples fit in well under a second. The same fit is per-user calibration: a user
records a few seconds per emotion and the head is refit on their own w.

The fitted head is folded back into plain (weights, bias) on raw w, so the streaming model can
apply it as one linear layer inside the exported step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamav.errors import InputError


@dataclass(frozen=True)
class EmotionHead:
    labels: tuple[str, ...]
    weights: np.ndarray  # (n_classes, w_dim) float32, on raw w
    bias: np.ndarray  # (n_classes,) float32

    def logits(self, w: np.ndarray) -> np.ndarray:
        return np.asarray(w, np.float64) @ self.weights.T.astype(np.float64) + self.bias

    def probabilities(self, w: np.ndarray) -> np.ndarray:
        return softmax(self.logits(w))

    def predict(self, w: np.ndarray) -> list[str]:
        return [self.labels[i] for i in np.argmax(self.logits(w), axis=-1)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def fit_emotion_head(w: np.ndarray, labels: list[str] | np.ndarray, *,
                     classes: tuple[str, ...] | None = None, l2: float = 1e-2,
                     steps: int = 500, learning_rate: float = 0.5,
                     whiten_variance: float | None = None) -> EmotionHead:
    """Fit on `w` (N, w_dim) with one label per row. `classes` fixes the output order (default:
    the sorted labels present); a class without examples gets a large negative bias.

    `whiten_variance` (e.g. 0.999): fit on the whitened principal components of the
    standardised inputs that hold that share of their variance, instead of the inputs
    themselves. Strongly correlated inputs (468 mesh points that move together) make plain
    gradient descent crawl along all but the first few directions (the step is bounded by the
    largest eigenvalue), so it stops far from the optimum - an accidental, uncontrolled
    regulariser; whitened, it converges and `l2` is the regulariser."""
    w = np.asarray(w, np.float64)
    labels = np.asarray(labels)
    if w.ndim != 2 or w.shape[0] != labels.shape[0] or w.shape[0] == 0:
        raise InputError(f"need (N, w_dim) w and N labels, got {w.shape} and {labels.shape}")
    if not np.isfinite(w).all():
        raise InputError("w has non-finite values")
    classes = tuple(classes) if classes is not None else tuple(sorted(set(labels.tolist())))
    unknown = sorted(set(labels.tolist()) - set(classes))
    if unknown:
        raise InputError(f"labels {unknown} are not among the classes {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[name] for name in labels])
    onehot = np.eye(len(classes))[y]
    mean, std = w.mean(axis=0), w.std(axis=0) + 1e-6
    x = (w - mean) / std
    projection = None
    if whiten_variance is not None:
        projection = whitening(x, whiten_variance)
        x = x @ projection
    weights = np.zeros((len(classes), x.shape[1]))
    bias = np.zeros(len(classes))
    present = np.bincount(y, minlength=len(classes)) > 0
    # at most 1 / L, L the gradient's Lipschitz bound: correlated inputs (neighbouring mesh
    # points) make lambda_max(X^T X / N) large and a fixed step diverge
    learning_rate = min(learning_rate, 1.0 / (0.5 * np.linalg.norm(x, 2) ** 2 / len(x) + l2))
    for _ in range(steps):
        p = softmax(x @ weights.T + bias)
        grad = (p - onehot) / len(y)
        weights -= learning_rate * (grad.T @ x + l2 * weights)
        bias -= learning_rate * grad.sum(axis=0)
    bias[~present] = -30.0
    if projection is not None:  # back from the components to the standardised inputs
        weights = weights @ projection.T
    # Fold the standardisation in: logits = ((w - mean) / std) @ W.T + b = w @ (W / std).T + b'.
    raw_weights = weights / std
    raw_bias = bias - raw_weights @ mean
    return EmotionHead(classes, raw_weights.astype(np.float32), raw_bias.astype(np.float32))


def whitening(x: np.ndarray, variance: float) -> np.ndarray:
    """(D, r): projects centred rows of `x` (N, D) onto the principal components holding
    `variance` of the total, each scaled to unit variance."""
    if not 0.0 < variance <= 1.0:
        raise InputError(f"whiten_variance must be in (0, 1], got {variance}")
    _, singular, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    eigen = singular ** 2 / len(x)
    keep = int(np.searchsorted(np.cumsum(eigen) / eigen.sum(), variance)) + 1
    keep = min(keep, int(np.sum(eigen > eigen[0] * 1e-12)))
    return vt[:keep].T / np.sqrt(eigen[:keep])
