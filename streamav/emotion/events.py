"""`emotion.change` events: the per-frame probabilities, smoothed, with hysteresis.

Per-frame probabilities flicker. The detector keeps an exponential moving average of them (time
constant `smoothing_s`) and reports a change only when another class's smoothed probability has
led the current label's by at least `margin` for `hold_s` seconds. The first label of a run is
reported once it has been held for `hold_s` too, with `from` = None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmotionChange:
    previous: str | None
    label: str
    confidence: float  # smoothed probability of the new label


class EmotionChangeDetector:
    def __init__(self, labels: tuple[str, ...], fps: float = 30.0, smoothing_s: float = 0.5,
                 margin: float = 0.1, hold_s: float = 0.3) -> None:
        self.labels = labels
        self._alpha = 1.0 - np.exp(-1.0 / (fps * smoothing_s))
        self._margin = margin
        self._hold_frames = max(1, int(round(hold_s * fps)))
        self.reset()

    def reset(self) -> None:
        self.smoothed: np.ndarray | None = None
        self.current: int | None = None
        self._candidate: int | None = None
        self._candidate_frames = 0

    def step(self, probs: np.ndarray) -> EmotionChange | None:
        probs = np.asarray(probs, np.float64)
        self.smoothed = probs.copy() if self.smoothed is None else (
            self.smoothed + self._alpha * (probs - self.smoothed))
        leader = int(np.argmax(self.smoothed))
        current_p = -np.inf if self.current is None else self.smoothed[self.current]
        if leader == self.current or self.smoothed[leader] < current_p + self._margin:
            self._candidate, self._candidate_frames = None, 0
            return None
        if leader != self._candidate:
            self._candidate, self._candidate_frames = leader, 0
        self._candidate_frames += 1
        if self._candidate_frames < self._hold_frames:
            return None
        previous = None if self.current is None else self.labels[self.current]
        self.current, self._candidate, self._candidate_frames = leader, None, 0
        return EmotionChange(previous, self.labels[leader], float(self.smoothed[leader]))
