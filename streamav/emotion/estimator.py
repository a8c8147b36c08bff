"""The emotion estimator: features minus the person's baseline, smoothed, a linear softmax head
with a temperature that depends on how much of the person the baseline has seen.

Per frame with a face (`EmotionStream.step`):

    x_t      = the frame's features (streamav.emotion.features: geometry, prosody[, w])
    d_t      = x_t - baseline_t               PersonBaseline (population prior, tau >= 20 s),
                                              or a calibration profile's fixed neutral baseline
    s_t      = EMA of d_t (time constant smoothing_s, 0.75 s: speech moves the mouth every frame)
    logits_t = W s_t + b  (+ the profile's own head, when it has one)
    probs_t  = softmax(logits_t / T(age)),    age = seconds of this person the baseline has seen

T(age) is fitted on validation speakers per age bucket (`AGE_EDGES_S`): in the first seconds
of a new person the baseline is mostly the population's, the features still carry the person's
face shape, and the head is often wrong, so the fitted temperature is high and the
probabilities flat. `uncertain` is set while the top probability is below `uncertain_below`.

Without a profile's own head, T is also multiplied by the frame's *unfamiliarity*
max(1, r_t) ** gamma, r_t = the distance of s_t from the training examples' mean in their
whitened principal components (those holding 99.9 % of the variance, as for the head), in
units of the training examples' median distance. A face unlike every training face (a real
person far from the synthetic ones the head was fitted on) gets flatter probabilities instead
of a confident guess. gamma is fitted
with T(age) on the validation speakers (NLL; 0 turns it off, as in format-1 files).

Everything is numpy: the estimator runs the same after any engine (it reads the step's w when
it uses w), and without PyTorch. Stored next to the model as `emotion.safetensors` (arrays) +
`emotion.json` (labels, settings, metrics).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamav.emotion.baseline import PersonBaseline
from streamav.emotion.features import GROUPS
from streamav.emotion.head import softmax
from streamav.errors import InputError

ESTIMATOR_ARRAYS = "emotion.safetensors"
ESTIMATOR_META = "emotion.json"
FORMAT_VERSION = 2  # 2: + the unfamiliarity (familiar_mean, familiar_basis, gamma)
READABLE_VERSIONS = (1, 2)
AGE_EDGES_S = (1.0, 3.0, 10.0, 30.0)  # baseline age buckets: <1, 1-3, 3-10, 10-30, >=30 s


@dataclass(frozen=True)
class EmotionSettings:
    groups: tuple[str, ...] = ("geometry", "prosody")
    baseline_tau_s: float = 30.0  # the person's running baseline (>= 20 s, docs/model.md)
    prior_s: float = 1.0  # weight of the population prior, in seconds of frames
    smoothing_s: float = 0.75  # EMA of the normalised features (docs/model.md)
    uncertain_below: float = 0.5  # top probability under this: `uncertain`, no emotion.change
    # Kept for the model folders that carry it; a live run's "new person" after a lost face
    # is the config's [run] face_lost_reset_s (LivePipeline.reset), not this.
    person_lost_s: float = 2.0

    def validate(self) -> None:
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups:
            raise InputError(f"emotion feature groups {list(self.groups)}: use some of {GROUPS}")
        if self.baseline_tau_s < 20.0:
            raise InputError("emotion baseline_tau_s must be >= 20 s (a short baseline absorbs "
                             "every expression)")
        if not (self.prior_s >= 0 and self.smoothing_s >= 0 and self.person_lost_s >= 0):
            raise InputError("emotion prior_s, smoothing_s and person_lost_s must be >= 0")
        if not 0.0 <= self.uncertain_below < 1.0:
            raise InputError("emotion uncertain_below must be in [0, 1)")


@dataclass(frozen=True)
class EmotionReading:
    probs: np.ndarray  # (n_classes,) float64
    top: str
    confidence: float
    uncertain: bool


@dataclass
class EmotionEstimator:
    labels: tuple[str, ...]
    settings: EmotionSettings
    prior_mean: np.ndarray  # (D,) the population's mean features (the baseline's prior)
    weights: np.ndarray  # (C, D) on normalised, smoothed features
    bias: np.ndarray  # (C,)
    temperatures: np.ndarray  # (len(AGE_EDGES_S) + 1,) per baseline age bucket
    class_offsets: np.ndarray  # (C, D) a class's mean features minus the person's average
    feature_scale: np.ndarray  # (D,) std of the training examples' smoothed features
    metrics: dict = field(default_factory=dict)
    # the unfamiliarity (module doc): r_t = |(s_t - familiar_mean) @ familiar_basis.T|
    familiar_mean: np.ndarray | None = None  # (D,)
    familiar_basis: np.ndarray | None = None  # (K, D) whitening / median training distance
    familiarity_gamma: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.prior_mean.shape[0])

    def logits(self, smoothed: np.ndarray) -> np.ndarray:
        return np.asarray(smoothed, np.float64) @ self.weights.T.astype(np.float64) + self.bias

    def temperature(self, age_s: float | np.ndarray, smoothed: np.ndarray | None = None
                    ) -> np.ndarray:
        """T(age), times the unfamiliarity of `smoothed` (frames, (..., D)) when given."""
        base = self.temperatures[np.searchsorted(AGE_EDGES_S, age_s, side="right")]
        return base if smoothed is None else base * self.unfamiliarity(smoothed)

    def unfamiliarity(self, smoothed: np.ndarray) -> np.ndarray:
        """max(1, r) ** gamma per frame (module doc); ones when gamma is 0."""
        smoothed = np.asarray(smoothed, np.float64)
        if self.familiarity_gamma == 0.0 or self.familiar_basis is None:
            return np.ones(smoothed.shape[:-1])
        return np.maximum(self.familiarity_distance(smoothed), 1.0) ** self.familiarity_gamma

    def familiarity_distance(self, smoothed: np.ndarray) -> np.ndarray:
        """r per frame: the distance from the training frames (module doc); needs the basis."""
        return np.linalg.norm((np.asarray(smoothed, np.float64) - self.familiar_mean)
                              @ self.familiar_basis.T, axis=-1)

    def stream(self, fps: float, profile: "Profile | None" = None) -> "EmotionStream":
        return EmotionStream(self, fps, profile)

    # -- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"prior_mean": self.prior_mean, "weights": self.weights, "bias": self.bias,
                  "temperatures": self.temperatures, "class_offsets": self.class_offsets,
                  "feature_scale": self.feature_scale}
        if self.familiar_basis is not None:
            arrays.update(familiar_mean=self.familiar_mean, familiar_basis=self.familiar_basis)
        (folder / ESTIMATOR_ARRAYS).write_bytes(
            save({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}))
        meta = {"format_version": FORMAT_VERSION, "labels": list(self.labels),
                "settings": asdict(self.settings), "age_edges_s": list(AGE_EDGES_S),
                "familiarity_gamma": float(self.familiarity_gamma), "metrics": self.metrics}
        (folder / ESTIMATOR_META).write_text(json.dumps(meta, indent=1) + "\n")

    @staticmethod
    def present(folder: Path) -> bool:
        return (Path(folder) / ESTIMATOR_META).is_file()

    @classmethod
    def load(cls, folder: Path) -> "EmotionEstimator":
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / ESTIMATOR_META).read_text())
            arrays = load_file(str(folder / ESTIMATOR_ARRAYS))
        except FileNotFoundError:
            raise InputError(f"{folder} has no emotion estimator ({ESTIMATOR_META} + "
                             f"{ESTIMATOR_ARRAYS}); fit one with `streamav train emotion`") from None
        except Exception as exc:  # noqa: BLE001 - any damage (safetensors' own error included)
            raise InputError(f"cannot read the emotion estimator in {folder}: {exc}") from None
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise InputError(f"{folder / ESTIMATOR_META}: format {meta.get('format_version')}, "
                             f"this streamav reads {' and '.join(map(str, READABLE_VERSIONS))}")
        settings = EmotionSettings(**{**meta["settings"],
                                      "groups": tuple(meta["settings"]["groups"])})
        return cls(tuple(meta["labels"]), settings,
                   *(arrays[k].astype(np.float64) for k in
                     ("prior_mean", "weights", "bias", "temperatures", "class_offsets",
                      "feature_scale")),
                   metrics=meta.get("metrics", {}),
                   familiar_mean=_float64(arrays.get("familiar_mean")),
                   familiar_basis=_float64(arrays.get("familiar_basis")),
                   familiarity_gamma=float(meta.get("familiarity_gamma", 0.0)))


def _float64(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else array.astype(np.float64)


@dataclass
class Profile:
    """A person's calibration: a neutral baseline and (with >= 2 labels) their own head, added to
    the population head's logits (streamav.emotion.profiles writes and reads them)."""

    name: str
    baseline: np.ndarray  # (D,) the fixed baseline (see streamav.emotion.fit.fit_profile)
    weights: np.ndarray | None = None  # (C, D) added to the population head's
    bias: np.ndarray | None = None  # (C,)
    labels_seen: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    population_accuracy: float | None = None  # the population head on the calibration frames
    head_l2: float | None = None  # the person head's L2 towards the population head (fit_profile)


class EmotionStream:
    """One stream's causal emotion state: the person's baseline and the smoothing."""

    def __init__(self, estimator: EmotionEstimator, fps: float,
                 profile: Profile | None = None) -> None:
        self.estimator = estimator
        self.fps = float(fps)
        self.profile = profile
        settings = estimator.settings
        fixed = None if profile is None else profile.baseline
        self.baseline = PersonBaseline(estimator.prior_mean, fps=fps,
                                       time_constant_s=settings.baseline_tau_s,
                                       prior_s=settings.prior_s, fixed=fixed)
        self._alpha = (1.0 if settings.smoothing_s <= 0
                       else 1.0 - float(np.exp(-1.0 / (settings.smoothing_s * fps))))
        self.reset()

    def reset(self) -> None:
        """A new person: the running baseline back to the prior (a profile's stays)."""
        self.baseline.reset()
        self.smoothed: np.ndarray | None = None
        self._weight = 0.0

    @property
    def knows_person(self) -> bool:
        """A profile with the person's own head: its frames are familiar, no unfamiliarity."""
        return self.profile is not None and self.profile.weights is not None

    def temperature(self, age_s: float | np.ndarray, smoothed: np.ndarray) -> np.ndarray:
        """The estimator's temperature for these frames (no unfamiliarity with a person head)."""
        return self.estimator.temperature(age_s, None if self.knows_person else smoothed)

    @property
    def baseline_age_s(self) -> float:
        if self.baseline.fixed is not None:
            return float("inf")
        return self.baseline.frames / self.fps

    def smooth(self, features: np.ndarray) -> np.ndarray:
        """Take one frame's features into the baseline and the smoothing; returns s_t."""
        normalised = self.baseline.update(features)
        self._weight = (1.0 - self._alpha) * self._weight + 1.0
        if self.smoothed is None:
            self.smoothed = normalised
        else:
            self.smoothed = self.smoothed + (normalised - self.smoothed) / self._weight
        return self.smoothed

    def logits(self, smoothed: np.ndarray) -> np.ndarray:
        logits = self.estimator.logits(smoothed)
        profile = self.profile
        if profile is not None and profile.weights is not None:
            logits = logits + smoothed @ profile.weights.T + profile.bias
        return logits

    def step(self, features: np.ndarray) -> EmotionReading:
        smoothed = self.smooth(features)
        logits = self.logits(smoothed) / self.temperature(self.baseline_age_s, smoothed)
        probs = softmax(logits)
        top = int(np.argmax(probs))
        confidence = float(probs[top])
        return EmotionReading(probs, self.estimator.labels[top], confidence,
                              confidence < self.estimator.settings.uncertain_below)
