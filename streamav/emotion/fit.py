"""Fitting the emotion estimator and per-user profiles (numpy, seconds to a minute on a CPU).

Training data are *sessions*: each speaker's clips played back to back in a seeded random order
through one `EmotionStream`, so the person's baseline is carried from clip to clip exactly as in
a live run (it starts at the population prior and learns the person over the session). The head
is fitted on the training speakers' smoothed, normalised features (frames from
`SKIP_CLIP_START_S` into each clip, where the previous clip's expression has faded from the
smoothing); the temperature per baseline-age bucket and the unfamiliarity's exponent
(`EmotionEstimator.unfamiliarity`) are fitted on the validation speakers by minimising the
negative log-likelihood, over their sessions and over each of their clips played alone (a new
person seen for a few seconds, as a short live run or a GRID clip is: without them the young
buckets hold only the first clip of each session).

A profile (`fit_profile`) is fitted on one person's labelled calibration clips: its fixed
baseline estimates the person's average expression (what the head reads features against):
the mean of their per-class means minus the population's mean class offsets of those classes
(`class_offsets`; with all classes shown that is just their average, with a neutral clip alone
it is the neutral face moved by the population's average-minus-neutral offset). With two labels
or more a person head is fitted on top of the population head (its logits are the offset) with
L2 towards zero, whose strength depends on how well the population head already reads the
person's calibration frames:

- it reads most of them (>= `LIGHT_HEAD_FROM_ACCURACY`): a light correction, L2 10
  (`LIGHT_HEAD_L2`). Chosen by 5-fold speaker cross-validation on synth20 (per-user k = 2,
  320 test clips: no head above 90 % and L2 0.1 below, the v2.4 rule, 0.919; L2 0.3 / 1 / 3 /
  10 / 30 / 100 always: 0.916 / 0.928 / 0.925 / **0.934** / 0.928 / 0.922; k = 1: 0.898 against
  0.920 for L2 10). The held-out synthetic speakers' population accuracy is 0.72-1.0.
- it misreads them (the real CREMA-D actor: 47 %): the person's own head, L2 0.1
  (`PERSON_HEAD_L2`). On that actor, first halves -> second halves, 0.1 gets 5 of 6 and 10
  gets 3 of 6: real faces need more of the person's own head, the population head being fitted
  on synthetic expressions. That choice, and the 0.6 between the two, were made knowing the real
  actor's numbers (docs/model.md).

With three clips a label or more, leave-one-clip-per-label-out on the calibration clips chooses
between the two strengths instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from streamav.emotion.estimator import (AGE_EDGES_S, EmotionEstimator, EmotionSettings,
                                        EmotionStream, Profile, softmax)
from streamav.emotion.features import frame_features
from streamav.emotion.head import fit_emotion_head
from streamav.errors import InputError

SKIP_CLIP_START_S = 0.5
FRAME_STRIDE = 3  # every third frame of a clip is a training example (neighbours are alike)
TEMPERATURE_GRID = np.geomspace(0.25, 40.0, 81)
MIN_BUCKET_FRAMES = 50
GAMMA_GRID = np.arange(0.0, 3.01, 0.25)  # the unfamiliarity's exponent (0: off)
# The population head: logistic regression on the whitened principal components holding 99.9 %
# of the training features' variance (~33 of 949 on synthetic faces), L2 3e-3, 1,500 steps;
# chosen by 5-fold speaker cross-validation on synth20 (docs/model.md "Emotion: the estimator").
HEAD_L2 = 3e-3
HEAD_STEPS = 1500
HEAD_WHITEN_VARIANCE = 0.999
# A profile's person head: L2 towards the population head, light where the population head
# already reads the person's calibration frames, strong (the person's own head) where it
# misreads them (module doc; docs/model.md).
LIGHT_HEAD_FROM_ACCURACY = 0.6
LIGHT_HEAD_L2 = 10.0
PERSON_HEAD_L2 = 0.1
# ... unless every label shown has this many clips or more: then leave-one-clip-per-label-out
# on the calibration clips chooses between the two (with two per label each fold would fit on
# one clip and the choice is noise).
CROSS_VALIDATE_FROM_CLIPS = 3


@dataclass(frozen=True)
class ClipFrames:
    """One clip's per-frame features (frames without a face are skipped by the stream)."""

    clip_id: str
    speaker: str
    label: str  # "" when unlabelled
    fps: float
    features: np.ndarray  # (T, D) float64
    face_found: np.ndarray  # (T,) bool


@dataclass(frozen=True)
class ClipRun:
    """A clip as a stream saw it: smoothed features and baseline age per frame (NaN where the
    stream had seen no face of this clip yet)."""

    clip: ClipFrames
    smoothed: np.ndarray  # (T, D)
    age_s: np.ndarray  # (T,)


def clip_frames(clip, groups: Sequence[str], w: np.ndarray | None = None) -> ClipFrames:
    """A `ClipSequence` (with mesh_crop_xy) → its ClipFrames for the feature `groups`."""
    from streamav.corpus.labels import emotion_name

    if "geometry" in groups and clip.mesh_crop_xy is None:
        raise InputError(f"clip {clip.clip_id}: the cache has no face mesh (made before "
                         "streamav stored it); rebuild it with `streamav corpus cache`")
    if "w" in groups and w is None:
        raise InputError("the feature group 'w' needs the model's w for every clip")
    mesh = None if clip.mesh_crop_xy is None else np.nan_to_num(clip.mesh_crop_xy)
    features = frame_features(tuple(groups), mesh_crop_xy=mesh, spectrum=clip.spectrum, w=w)
    return ClipFrames(clip.clip_id, clip.speaker, emotion_name(clip.emotion_index), clip.fps,
                      features.astype(np.float64), np.asarray(clip.face_found, bool))


def run_clip(stream: EmotionStream, clip: ClipFrames) -> ClipRun:
    """Feed one clip through a stream (its state carried in and out)."""
    smoothed = np.full(clip.features.shape, np.nan)
    age = np.full(len(clip.features), np.nan)
    for t in range(len(clip.features)):
        if clip.face_found[t]:
            stream.smooth(clip.features[t])
        if stream.smoothed is not None and (t > 0 or clip.face_found[0]):
            smoothed[t] = stream.smoothed
            age[t] = stream.baseline_age_s
    return ClipRun(clip, smoothed, age)


def session_order(clips: Sequence[ClipFrames], seed: int) -> list[list[ClipFrames]]:
    """Per speaker (sorted), their clips in a seeded random order."""
    sessions = []
    for speaker in sorted({c.speaker for c in clips}):
        mine = [c for c in clips if c.speaker == speaker]
        rng = np.random.default_rng([seed, 31, *speaker.encode()])
        sessions.append([mine[i] for i in rng.permutation(len(mine))])
    return sessions


def run_sessions(estimator: EmotionEstimator, clips: Sequence[ClipFrames], seed: int
                 ) -> list[ClipRun]:
    """Every speaker's session through a fresh stream each (`session_order`)."""
    runs = []
    for session in session_order(clips, seed):
        stream = estimator.stream(session[0].fps)
        runs += [run_clip(stream, clip) for clip in session]
    return runs


def examples(runs: Sequence[ClipRun], labels: Sequence[str]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D) smoothed features, (N,) label index, (N,) baseline age of the training frames."""
    index = {name: i for i, name in enumerate(labels)}
    xs, ys, ages = [], [], []
    for run in runs:
        if run.clip.label not in index:
            continue
        start = int(round(SKIP_CLIP_START_S * run.clip.fps))
        frames = np.arange(start, len(run.smoothed), FRAME_STRIDE)
        frames = frames[run.clip.face_found[frames] & ~np.isnan(run.age_s[frames])]
        xs.append(run.smoothed[frames])
        ys.append(np.full(len(frames), index[run.clip.label]))
        ages.append(run.age_s[frames])
    if not xs:
        raise InputError("no labelled frames to fit the emotion estimator on")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ages)


def population_prior(clips: Sequence[ClipFrames]) -> np.ndarray:
    """The mean of the speakers' mean features (each speaker weighs the same)."""
    per_speaker = []
    for speaker in sorted({c.speaker for c in clips}):
        rows = np.concatenate([c.features[c.face_found] for c in clips if c.speaker == speaker])
        per_speaker.append(rows.mean(axis=0))
    return np.mean(per_speaker, axis=0)


def class_offsets(clips: Sequence[ClipFrames], labels: Sequence[str]) -> np.ndarray:
    """(C, D): over speakers, the mean of (a class's mean features - the speaker's average over
    their classes); zeros for a class no speaker has."""
    offsets = np.zeros((len(labels), clips[0].features.shape[1]))
    counts = np.zeros(len(labels))
    for speaker in sorted({c.speaker for c in clips}):
        means = {label: np.concatenate([c.features[c.face_found] for c in clips
                                        if c.speaker == speaker and c.label == label]).mean(0)
                 for label in labels
                 if any(c.speaker == speaker and c.label == label for c in clips)}
        if len(means) < len(labels):
            continue
        average = np.mean(list(means.values()), axis=0)
        for i, label in enumerate(labels):
            offsets[i] += means[label] - average
            counts[i] += 1
    return offsets / np.maximum(counts, 1)[:, None]


def fit_temperatures(logits: np.ndarray, truth: np.ndarray, ages: np.ndarray) -> np.ndarray:
    """Per baseline-age bucket, the temperature minimising the NLL (buckets with too few frames
    take the next older bucket's)."""
    buckets = np.searchsorted(AGE_EDGES_S, ages, side="right")
    temperatures = np.full(len(AGE_EDGES_S) + 1, np.nan)
    for b in range(len(temperatures)):
        rows = buckets == b
        if rows.sum() < MIN_BUCKET_FRAMES:
            continue
        nll = [-np.mean(np.log(softmax(logits[rows] / t)[np.arange(rows.sum()), truth[rows]]
                               + 1e-12)) for t in TEMPERATURE_GRID]
        temperatures[b] = TEMPERATURE_GRID[int(np.argmin(nll))]
    for b in range(len(temperatures) - 1, -1, -1):
        if np.isnan(temperatures[b]):
            temperatures[b] = temperatures[b + 1] if b + 1 < len(temperatures) else 1.0
    return temperatures


def familiarity_basis(x: np.ndarray, variance: float = HEAD_WHITEN_VARIANCE
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), basis (K, D)) of the training examples `x`: the whitening projection onto the
    principal components holding `variance`, divided by sqrt(K) and by the training examples'
    median distance, so that r = |(s - mean) @ basis.T| is 1 for a typical training frame."""
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd((x - mean) / np.sqrt(len(x)), full_matrices=False)
    share = np.cumsum(singular ** 2) / np.sum(singular ** 2)
    k = max(1, int(np.searchsorted(share, variance) + 1))
    basis = vt[:k] / np.maximum(singular[:k], 1e-12)[:, None] / np.sqrt(k)
    median = float(np.median(np.linalg.norm((x - mean) @ basis.T, axis=1)))
    return mean, basis / max(median, 1e-12)


def fit_confidence(estimator: EmotionEstimator, x: np.ndarray, truth: np.ndarray,
                   ages: np.ndarray) -> tuple[float, np.ndarray]:
    """(gamma, temperatures) minimising the NLL of validation frames `x` (smoothed features):
    for each gamma of `GAMMA_GRID`, the per-bucket temperatures of the logits divided by the
    unfamiliarity; the gamma whose NLL is lowest."""
    logits = estimator.logits(x)
    distance = np.maximum(estimator.familiarity_distance(x), 1.0)
    best = (np.inf, 0.0, np.ones(len(AGE_EDGES_S) + 1))
    for gamma in GAMMA_GRID:
        scaled = logits / (distance ** gamma)[:, None]
        temperatures = fit_temperatures(scaled, truth, ages)
        p = softmax(scaled / temperatures[np.searchsorted(AGE_EDGES_S, ages, side="right")]
                    [:, None])
        nll = -float(np.mean(np.log(p[np.arange(len(truth)), truth] + 1e-12)))
        if nll < best[0] - 1e-9:
            best = (nll, float(gamma), temperatures)
    return best[1], best[2]


def fit_estimator(train: Sequence[ClipFrames], val: Sequence[ClipFrames],
                  labels: Sequence[str], settings: EmotionSettings = EmotionSettings(), *,
                  l2: float = HEAD_L2, seed: int = 0) -> EmotionEstimator:
    """Fit the head on the training speakers' sessions, the temperatures on the validation
    speakers' (see the module doc)."""
    settings.validate()
    labels = tuple(labels)
    dim = train[0].features.shape[1]
    estimator = EmotionEstimator(labels, settings, population_prior(train),
                                 np.zeros((len(labels), dim)), np.zeros(len(labels)),
                                 np.ones(len(AGE_EDGES_S) + 1), class_offsets(train, labels),
                                 np.ones(dim))
    x, y, _ = examples(run_sessions(estimator, train, seed), labels)
    head = fit_emotion_head(x, np.array(labels)[y], classes=labels, l2=l2, steps=HEAD_STEPS,
                            whiten_variance=HEAD_WHITEN_VARIANCE)
    estimator.weights = head.weights.astype(np.float64)
    estimator.bias = head.bias.astype(np.float64)
    estimator.feature_scale = x.std(axis=0) + 1e-6
    estimator.familiar_mean, estimator.familiar_basis = familiarity_basis(x)
    if val:
        alone = [run_clip(estimator.stream(clip.fps), clip) for clip in val]
        xv, yv, age_v = examples(run_sessions(estimator, val, seed) + alone, labels)
        estimator.familiarity_gamma, estimator.temperatures = fit_confidence(estimator, xv, yv,
                                                                             age_v)
    estimator.metrics = {"train_frames": int(len(y)),
                         "train_speakers": len({c.speaker for c in train}),
                         "val_speakers": len({c.speaker for c in val}),
                         "train_accuracy": float(np.mean(estimator.logits(x).argmax(1) == y)),
                         "temperatures": estimator.temperatures.round(3).tolist(),
                         "familiarity_gamma": estimator.familiarity_gamma,
                         "familiarity_dims": int(estimator.familiar_basis.shape[0])}
    return estimator


def safe_step(z: np.ndarray, l2: float, learning_rate: float) -> float:
    """A gradient step that cannot diverge on softmax cross-entropy + L2: at most 1 / L, with
    L = lambda_max(Z^T Z / N) / 2 + l2 the gradient's Lipschitz bound (correlated features, as
    neighbouring mesh points are, make lambda_max large)."""
    lipschitz = 0.5 * np.linalg.norm(z, 2) ** 2 / len(z) + l2
    return min(learning_rate, 1.0 / lipschitz)


def fit_profile(estimator: EmotionEstimator, name: str, clips: Sequence[ClipFrames], *,
                l2: float = PERSON_HEAD_L2, light_l2: float = LIGHT_HEAD_L2, steps: int = 300,
                learning_rate: float = 0.5, cross_validate: bool = True) -> Profile:
    """A person's profile from their labelled calibration clips (see the module doc).

    The person head's L2 (`profile.head_l2`): with `cross_validate` and
    `CROSS_VALIDATE_FROM_CLIPS` clips or more of every label shown, leave-one-clip-per-label-out
    on the calibration clips chooses `l2` (the person's own head) when it reads the held-out
    clips better than `light_l2` on most folds; otherwise `light_l2` when the population head
    reads at least `LIGHT_HEAD_FROM_ACCURACY` of the calibration frames right, else `l2`."""
    labels = estimator.labels
    unknown = sorted({c.label for c in clips} - set(labels))
    if unknown:
        raise InputError(f"unknown label(s) {unknown}: use one of {', '.join(labels)}")
    clips = [c for c in clips if c.face_found.any()]
    if not clips:
        raise InputError("no face in the calibration clips")
    profile = _baseline_profile(estimator, name, clips)
    if len(profile.labels_seen) < 2:
        return profile
    x, y = _calibration_examples(estimator, profile, clips)
    population_logits = estimator.logits(x)
    profile.population_accuracy = float(np.mean(population_logits.argmax(axis=1) == y))
    folds = _folds(clips) if cross_validate else []
    if folds:
        strong_wins = [_strong_head_wins(estimator, name, rest, held_out, (l2, light_l2), steps,
                                         learning_rate) for rest, held_out in folds]
        chosen = l2 if sum(strong_wins) * 2 > len(strong_wins) else light_l2
    else:
        chosen = light_l2 if profile.population_accuracy >= LIGHT_HEAD_FROM_ACCURACY else l2
    profile.weights, profile.bias = _person_head(estimator, x, y, population_logits, chosen,
                                                 steps, learning_rate)
    profile.head_l2 = float(chosen)
    return profile


def _baseline_profile(estimator: EmotionEstimator, name: str, clips: Sequence[ClipFrames]
                      ) -> Profile:
    """The profile's fixed baseline: the person's average expression, estimated from the
    classes they showed (module doc)."""
    labels = estimator.labels
    seen = sorted({c.label for c in clips}, key=labels.index)
    class_means = [np.concatenate([c.features[c.face_found] for c in clips if c.label == label])
                   .mean(axis=0) for label in seen]
    offsets = estimator.class_offsets[[labels.index(label) for label in seen]]
    baseline = np.mean(class_means, axis=0) - offsets.mean(axis=0)
    return Profile(name, baseline, labels_seen=tuple(seen), groups=estimator.settings.groups)


def _calibration_examples(estimator: EmotionEstimator, profile: Profile,
                          clips: Sequence[ClipFrames]) -> tuple[np.ndarray, np.ndarray]:
    runs = [run_clip(EmotionStream(estimator, c.fps, profile), c) for c in clips]
    x, y, _ = examples(runs, estimator.labels)
    return x, y


def _person_head(estimator: EmotionEstimator, x: np.ndarray, y: np.ndarray,
                 population_logits: np.ndarray, l2: float, steps: int, learning_rate: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The person's head on top of the population head's logits, in the stream's units."""
    t = estimator.temperatures[-1]
    offset = population_logits / t
    z = x / estimator.feature_scale  # the population's scale: a person's few clips have little
    onehot = np.eye(len(estimator.labels))[y]
    weights, bias = np.zeros((len(estimator.labels), x.shape[1])), np.zeros(len(estimator.labels))
    rate = safe_step(z, l2, learning_rate)
    for _ in range(steps):
        grad = (softmax(offset + z @ weights.T + bias) - onehot) / len(y)
        weights -= rate * (grad.T @ z + l2 * weights)
        bias -= rate * (grad.sum(axis=0) + l2 * bias)
    # the stream divides the summed logits by the mature temperature: scale the person's part
    # so that it survives that division
    return weights / estimator.feature_scale * t, bias * t


def _folds(clips: Sequence[ClipFrames]) -> list[tuple[list[ClipFrames], list[ClipFrames]]]:
    """Leave one clip of every label out, as many times as the rarest label has clips (none
    when some label has fewer than `CROSS_VALIDATE_FROM_CLIPS`)."""
    by_label: dict[str, list[ClipFrames]] = {}
    for clip in clips:
        by_label.setdefault(clip.label, []).append(clip)
    n = min(len(group) for group in by_label.values())
    if n < CROSS_VALIDATE_FROM_CLIPS:
        return []
    folds = []
    for i in range(n):
        held_out = [group[i] for group in by_label.values()]
        out = {id(c) for c in held_out}
        folds.append(([c for c in clips if id(c) not in out], held_out))
    return folds


def _strong_head_wins(estimator: EmotionEstimator, name: str, rest: Sequence[ClipFrames],
                      held_out: Sequence[ClipFrames], l2s: tuple[float, float], steps: int,
                      learning_rate: float) -> bool:
    """Does the person head of L2 `l2s[0]` fitted on `rest` read `held_out` better than the one
    of L2 `l2s[1]` (both against the baseline from `rest`)?"""
    profile = _baseline_profile(estimator, name, rest)
    x, y = _calibration_examples(estimator, profile, rest)
    x_out, y_out = _calibration_examples(estimator, profile, held_out)
    fitted_on, population = estimator.logits(x), estimator.logits(x_out)
    right = []
    for l2 in l2s:
        weights, bias = _person_head(estimator, x, y, fitted_on, l2, steps, learning_rate)
        person = population + x_out @ weights.T + bias  # the stream adds the person's logits
        right.append(np.mean(person.argmax(1) == y_out))
    return bool(right[0] > right[1])
