"""Few-shot heads on w: emotion (speaker-disjoint and within-actor protocols) and identity.

A *sequence* is what a head is trained and tested on: a clip, a fixed-length segment of a clip,
or half a clip, always run through the causal model from a fresh state, so its w at frame t has
seen exactly frames 0..t of that sequence.

- Training examples: every frame of a training sequence from `min_context_s` on where a face
  was found (at most `max_frames_per_sequence`, evenly spaced), labelled with the sequence's
  class, the same rule as the `emotion` training stage; a sequence shorter than that gives its
  last frame.
- Read-outs: online w after X s = w at frame round(X * fps) (the filter has seen X s of the
  sequence); a sequence with fewer frames gives its last frame and is counted as short.
  Offline w = w at the last frame (the causal filter has then seen the whole sequence), one
  label for the whole sequence.
- The head is the product's few-shot head (`fit_emotion_head`: logistic regression on
  standardised w), for speakers as for emotions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from streamav.emotion.head import fit_emotion_head
from streamav.evaluate.metrics import mean_std


@dataclass(frozen=True)
class WSequence:
    """The causal w of one sequence and its labels."""

    key: str  # clip id, or clip id with a segment or half suffix
    clip_id: str
    speaker: str
    emotion: str
    fps: float
    w: np.ndarray  # (T, W) float32, posterior mean of w at every frame
    face_found: np.ndarray  # (T,) bool


def readout_points(online_s: Sequence[float]) -> list[tuple[str, float | None]]:
    """[("online_0.5s", 0.5), ..., ("offline", None)]: the names used in the report."""
    return [(f"online_{s:g}s", float(s)) for s in online_s] + [("offline", None)]


def readout(seq: WSequence, at_s: float | None) -> tuple[np.ndarray, bool]:
    """(w, short): w after `at_s` seconds (None: offline, the last frame)."""
    last = len(seq.w) - 1
    if at_s is None:
        return seq.w[last], False
    index = int(round(at_s * seq.fps))
    return seq.w[min(index, last)], index > last


def training_examples(seqs: Sequence[WSequence], label: Callable[[WSequence], str],
                      min_context_s: float, max_frames_per_sequence: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(N, W) w and (N,) labels of the frames a head is trained on (see the module doc)."""
    ws, labels = [], []
    for seq in seqs:
        frames = np.flatnonzero((np.arange(len(seq.w)) >= int(round(min_context_s * seq.fps)))
                                & seq.face_found)
        if frames.size == 0:
            frames = np.array([len(seq.w) - 1])
        if frames.size > max_frames_per_sequence:
            frames = frames[np.linspace(0, frames.size - 1, max_frames_per_sequence).round()
                            .astype(int)]
        ws.append(seq.w[frames])
        labels += [label(seq)] * len(frames)
    return np.concatenate(ws).astype(np.float64), np.array(labels)


@dataclass
class _Tally:
    """Correct counts and a confusion matrix per read-out point over one protocol's draws."""

    classes: tuple[str, ...]
    points: list[tuple[str, float | None]]

    def __post_init__(self) -> None:
        self.per_draw: dict[str, list[float]] = {name: [] for name, _ in self.points}
        self.short: dict[str, int] = {name: 0 for name, _ in self.points}
        n = len(self.classes)
        self.confusion = {name: np.zeros((n, n), np.int64) for name, _ in self.points}
        self.tested = 0

    def score(self, head, tests: Sequence[WSequence], label: Callable[[WSequence], str]) -> None:
        index = {c: i for i, c in enumerate(self.classes)}
        truth = np.array([index[label(s)] for s in tests])
        self.tested += len(tests)
        for name, at_s in self.points:
            read = [readout(s, at_s) for s in tests]
            self.short[name] += sum(short for _, short in read)
            predicted = np.argmax(head.logits(np.stack([w for w, _ in read])), axis=1)
            self.per_draw[name].append(float(np.mean(predicted == truth)))
            np.add.at(self.confusion[name], (truth, predicted), 1)

    def accuracy(self) -> dict[str, dict]:
        return {name: mean_std(values) for name, values in self.per_draw.items()}


def _gap(accuracy: dict[str, dict], online_name: str) -> float | None:
    online, offline = accuracy.get(online_name, {}), accuracy.get("offline", {})
    if online.get("mean") is None or offline.get("mean") is None:
        return None
    return float(offline["mean"] - online["mean"])


def _confusion_json(tally: _Tally, at: str) -> dict:
    return {"at": at, "labels": list(tally.classes),
            "counts": tally.confusion[at].tolist()}


def _emotion(seq: WSequence) -> str:
    return seq.emotion


def _speaker(seq: WSequence) -> str:
    return seq.speaker


def unavailable(reason: str, **fields) -> dict:
    return {"available": False, "reason": reason, **fields}


def fewshot_speaker_disjoint(seqs: Sequence[WSequence], classes: Sequence[str], *,
                             ks: Sequence[int], draws: int, online_s: Sequence[float],
                             seed: int, min_context_s: float, max_frames_per_sequence: int,
                             confusion_k: int, confusion_at: str) -> dict:
    """Emotion accuracy of heads fitted on k sequences per class of some speakers and tested on
    every sequence of the others, over `draws` seeded draws (speaker halves and the k shots)."""
    speakers = sorted({s.speaker for s in seqs})
    empty = {"by_k": None, "confusion": None, "draws": draws}
    if len(speakers) < 2:
        return unavailable(f"the split has {len(speakers)} speaker(s); a speaker-disjoint "
                           "few-shot test needs at least 2 (see within_actor)", **empty)
    n_head = math.ceil(len(speakers) / 2)
    points = readout_points(online_s)
    by_k: dict[str, dict] = {}
    confusion = None
    for k in ks:
        tally = _Tally(tuple(classes), points)
        train_counts, short_classes, excluded = [], 0, 0
        for draw in range(draws):
            rng = np.random.default_rng([seed, 7, k, draw])
            order = [speakers[i] for i in rng.permutation(len(speakers))]
            head_speakers = set(order[:n_head])
            shots: list[WSequence] = []
            for emotion in classes:
                pool = [s for s in seqs if s.speaker in head_speakers and s.emotion == emotion]
                if len(pool) < k:
                    short_classes += 1
                take = rng.permutation(len(pool))[:k]
                shots += [pool[i] for i in sorted(take)]
            trained = {s.emotion for s in shots}
            tests = [s for s in seqs if s.speaker not in head_speakers and s.emotion in trained]
            excluded += sum(1 for s in seqs if s.speaker not in head_speakers
                            and s.emotion not in trained)
            if not shots or not tests:
                continue
            w, labels = training_examples(shots, _emotion, min_context_s, max_frames_per_sequence)
            head = fit_emotion_head(w, labels, classes=tuple(classes))
            tally.score(head, tests, _emotion)
            train_counts.append(len(shots))
        accuracy = tally.accuracy()
        by_k[str(k)] = {
            "k": int(k),
            "draws_scored": len(train_counts),
            "train_sequences_mean": float(np.mean(train_counts)) if train_counts else 0.0,
            "test_sequences_total": tally.tested,
            "classes_short_of_k": short_classes,
            "test_sequences_excluded": excluded,
            "short_test_sequences": tally.short,
            "accuracy": accuracy,
            "gap_offline_minus_online_2s": _gap(accuracy, "online_2s"),
        }
        if k == confusion_k and tally.tested:
            confusion = {**_confusion_json(tally, confusion_at), "k": int(k)}
    return {"available": True, "reason": None, "draws": draws,
            "head_speakers_per_draw": n_head, "test_speakers_per_draw": len(speakers) - n_head,
            "by_k": by_k, "confusion": confusion}


def fewshot_within_actor(halves: Sequence[tuple[WSequence, WSequence]], classes: Sequence[str],
                         *, online_s: Sequence[float], min_context_s: float,
                         max_frames_per_sequence: int, confusion_at: str) -> dict:
    """Per speaker: a head fitted on the first half of each of their clips, tested on the second
    halves (each half run from a fresh state). One deterministic draw; pooled over speakers."""
    points = readout_points(online_s)
    tally = _Tally(tuple(classes), points)
    per_class: list[int] = []
    speakers = sorted({first.speaker for first, _ in halves})
    for speaker in speakers:
        mine = [(a, b) for a, b in halves if a.speaker == speaker]
        firsts = [a for a, _ in mine]
        present = sorted({a.emotion for a in firsts})
        if len(present) < 2:
            continue
        per_class += [sum(1 for a in firsts if a.emotion == e) for e in present]
        w, labels = training_examples(firsts, _emotion, min_context_s, max_frames_per_sequence)
        head = fit_emotion_head(w, labels, classes=tuple(classes))
        tally.score(head, [b for _, b in mine], _emotion)
    if not tally.tested:
        return unavailable("no speaker of the split has clips of at least 2 emotions",
                           accuracy=None, confusion=None)
    accuracy = tally.accuracy()
    return {"available": True, "reason": None, "speakers": len(speakers),
            "test_sequences": tally.tested,
            "train_sequences_per_class": {"min": int(min(per_class)), "max": int(max(per_class))},
            "classes": [c for c in classes if c in {a.emotion for a, _ in halves}],
            "half_length_s": mean_std(len(b.w) / b.fps for _, b in halves),
            "short_test_sequences": tally.short, "accuracy": accuracy,
            "gap_offline_minus_online_2s": _gap(accuracy, "online_2s"),
            "confusion": _confusion_json(tally, confusion_at)}


def identity_accuracy(seqs: Sequence[WSequence], *, draws: int, online_s: Sequence[float],
                      seed: int, min_context_s: float, max_frames_per_sequence: int) -> dict:
    """Speaker accuracy of a logistic head on w, fitted on half the sequences of each speaker
    (seeded, at least one) and tested on the others, over `draws` draws."""
    speakers = sorted({s.speaker for s in seqs})
    usable = [sp for sp in speakers if sum(1 for s in seqs if s.speaker == sp) >= 2]
    if len(usable) < 2:
        return unavailable(f"the split has {len(usable)} speaker(s) with at least 2 clips; "
                           "identity needs at least 2", accuracy=None, speakers=len(speakers),
                           chance=None)
    tally = _Tally(tuple(usable), readout_points(online_s))
    for draw in range(draws):
        rng = np.random.default_rng([seed, 11, draw])
        train, test = [], []
        for speaker in usable:
            mine = [s for s in seqs if s.speaker == speaker]
            order = rng.permutation(len(mine))
            cut = max(1, len(mine) // 2)
            train += [mine[i] for i in order[:cut]]
            test += [mine[i] for i in order[cut:]]
        w, labels = training_examples(train, _speaker, min_context_s, max_frames_per_sequence)
        head = fit_emotion_head(w, labels, classes=tuple(usable))
        tally.score(head, test, _speaker)
    return {"available": True, "reason": None, "speakers": len(usable),
            "chance": 1.0 / len(usable), "draws": draws, "test_sequences_total": tally.tested,
            "accuracy": tally.accuracy(), "short_test_sequences": tally.short}
