"""The few-shot emotion head and the change detector."""

from __future__ import annotations

import numpy as np
import pytest

from streamav.emotion.events import EmotionChangeDetector
from streamav.emotion.head import fit_emotion_head
from streamav.errors import InputError

LABELS = ("angry", "happy", "sad")


def _clusters(rng, n_per_class, dim=84, spread=1.0):
    centres = rng.normal(0, 3, (len(LABELS), dim))
    w = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centres])
    y = np.repeat(LABELS, n_per_class)
    return w, y, centres


def test_few_shot_head_separates_held_out_examples():
    rng = np.random.default_rng(0)
    w_train, y_train, centres = _clusters(rng, n_per_class=5)
    head = fit_emotion_head(w_train, y_train, classes=LABELS)
    w_test = np.concatenate([c + rng.normal(0, 1.0, (50, 84)) for c in centres])
    y_test = np.repeat(LABELS, 50)
    accuracy = np.mean(np.array(head.predict(w_test)) == y_test)
    assert accuracy > 0.95
    probs = head.probabilities(w_test)
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= 0).all()
    assert head.weights.shape == (3, 84) and head.weights.dtype == np.float32


def test_head_on_raw_w_equals_the_standardised_fit():
    """Folding the standardisation into the weights must not change the predictions."""
    rng = np.random.default_rng(1)
    w, y, _ = _clusters(rng, n_per_class=10, spread=2.0)
    w = w * rng.uniform(0.01, 100, 84) + rng.normal(0, 50, 84)  # badly scaled dimensions
    head = fit_emotion_head(w, y, classes=LABELS)
    assert np.mean(np.array(head.predict(w)) == y) > 0.9


def test_missing_class_gets_no_probability_and_bad_input_is_clear():
    rng = np.random.default_rng(2)
    w, y, _ = _clusters(rng, 3)
    keep = y != "sad"
    head = fit_emotion_head(w[keep], y[keep], classes=LABELS)
    assert head.probabilities(w)[:, 2].max() < 1e-6
    with pytest.raises(InputError):
        fit_emotion_head(w, y[:-1])
    with pytest.raises(InputError):
        fit_emotion_head(w, np.repeat(["joy"], len(w)), classes=LABELS)


def test_change_detector_hysteresis():
    detector = EmotionChangeDetector(LABELS, fps=30, smoothing_s=0.2, margin=0.1, hold_s=0.2)
    happy, sad = np.array([0.1, 0.8, 0.1]), np.array([0.1, 0.1, 0.8])
    events = [detector.step(happy) for _ in range(30)]
    first = [e for e in events if e is not None]
    assert len(first) == 1 and first[0].previous is None and first[0].label == "happy"
    # A flicker of a few frames does not change the label.
    flicker = [detector.step(sad) for _ in range(3)] + [detector.step(happy) for _ in range(30)]
    assert all(e is None for e in flicker)
    changes = [e for e in (detector.step(sad) for _ in range(60)) if e is not None]
    assert len(changes) == 1 and (changes[0].previous, changes[0].label) == ("happy", "sad")
    assert changes[0].confidence > 0.5
