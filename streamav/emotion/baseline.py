"""Online person normalisation: a causal running mean of one person's emotion features.

Differences between people (face shape, voice) are as large as the differences between
emotions, so the estimator reads each feature minus the person's own baseline, as OpenFace does
for action units. The baseline is a bias-corrected exponential moving average with a long time
constant and a population prior:

    weight_t = rho * weight_{t-1} + 1                       rho = exp(-1 / (tau * fps))
    mean_t   = mean_{t-1} + (x_t - mean_{t-1}) / weight_t

started at mean_0 = the population mean with weight_0 = prior_s * fps, so the first frames are
read against the population (sane from the first frame) and the person's own mean takes over
within a few seconds. tau is long (default 30 s, at least 20 s): a baseline of the last two
seconds would absorb every expression and make everything "neutral".

A calibration profile's neutral baseline replaces the running one (`fixed`): it is the mean of
the person's neutral frames and is not updated. `reset()` (a new person: the face lost for
longer than `EmotionSettings.person_lost_s`, `source_back`, the control socket's `reset`) goes
back to the prior.
"""

from __future__ import annotations

import numpy as np


class PersonBaseline:
    def __init__(self, prior_mean: np.ndarray, *, fps: float, time_constant_s: float = 30.0,
                 prior_s: float = 1.0, fixed: np.ndarray | None = None) -> None:
        if time_constant_s <= 0 or prior_s < 0 or fps <= 0:
            raise ValueError("time_constant_s and fps must be > 0, prior_s >= 0")
        self.prior_mean = np.asarray(prior_mean, np.float64)
        self.fixed = None if fixed is None else np.asarray(fixed, np.float64)
        self.decay = float(np.exp(-1.0 / (time_constant_s * fps)))
        self.prior_weight = float(prior_s * fps)
        self.reset()

    def reset(self) -> None:
        self.mean = self.prior_mean.copy()
        self.weight = self.prior_weight
        self.frames = 0

    @property
    def current(self) -> np.ndarray:
        return self.fixed if self.fixed is not None else self.mean

    def update(self, x: np.ndarray) -> np.ndarray:
        """Take one frame's features (D,) into the baseline; returns x minus the baseline."""
        x = np.asarray(x, np.float64)
        self.frames += 1
        if self.fixed is not None:
            return x - self.fixed
        self.weight = self.decay * self.weight + 1.0
        self.mean += (x - self.mean) / self.weight
        return x - self.mean

    def run(self, xs: np.ndarray) -> np.ndarray:
        """(T, D) frames in order → (T, D) each minus the baseline after it (state carried)."""
        return np.stack([self.update(x) for x in np.asarray(xs)]) if len(xs) else np.zeros_like(xs)
