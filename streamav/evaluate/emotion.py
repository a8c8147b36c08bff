"""Emotion measures of the estimator (streamav.emotion): new person online, per-user
calibration, expected calibration error, and feature ablations.

- **New person, no labels, online**: each test speaker's clips are played back to back in a
  seeded random order through one stream (the person's baseline carried from clip to clip, as
  in a live session that starts when the person sits down); each clip is read X s after its
  start (0.5 / 1 / 2 s). Early clips are read against a baseline that has seen little of the
  person; that is part of the measure.
- **Per-user calibration, k clips per class**: per speaker, k seeded clips of every class make a
  profile (`fit_profile`); the speaker's other clips are read at 2 s through a stream with it.
- **ECE**: 10 equal-width confidence bins over every frame read from 0.5 s into a clip,
  |accuracy - confidence| weighted by the bin's share; the `uncertain` fraction and the
  accuracy of the frames that are not uncertain are reported next to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from streamav.emotion.estimator import EmotionEstimator, EmotionStream, softmax
from streamav.emotion.fit import (SKIP_CLIP_START_S, ClipFrames, ClipRun, fit_profile, run_clip,
                                  run_sessions)

ONLINE_S = (0.5, 1.0, 2.0)


def probabilities(estimator: EmotionEstimator, run: ClipRun,
                  profile_stream: EmotionStream | None = None) -> np.ndarray:
    """(T, C) the stream's probabilities at every frame of a run (NaN before the first face)."""
    stream = profile_stream
    logits = np.full((len(run.smoothed), len(estimator.labels)), np.nan)
    seen = ~np.isnan(run.age_s)
    if seen.any():
        smoothed, age = run.smoothed[seen], run.age_s[seen]
        if stream is not None:
            raw, temperature = stream.logits(smoothed), stream.temperature(age, smoothed)
        else:
            raw, temperature = estimator.logits(smoothed), estimator.temperature(age, smoothed)
        logits[seen] = raw / temperature[:, None]
    return softmax(logits)


def read_at(probs: np.ndarray, fps: float, at_s: float) -> np.ndarray:
    index = min(int(round(at_s * fps)), len(probs) - 1)
    finite = np.flatnonzero(np.isfinite(probs[: index + 1, 0]))
    return probs[finite[-1]] if finite.size else np.full(probs.shape[1], np.nan)


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total)


def _labelled(clips: Sequence[ClipFrames], labels: Sequence[str]) -> list[ClipFrames]:
    return [c for c in clips if c.label in labels]


def frame_calibration(estimator: EmotionEstimator, runs: Sequence[ClipRun],
                      probs: Sequence[np.ndarray]) -> dict:
    """ECE, uncertain share and accuracy when not uncertain over frames from 0.5 s on."""
    index = {name: i for i, name in enumerate(estimator.labels)}
    rows, truth = [], []
    for run, p in zip(runs, probs):
        start = int(round(SKIP_CLIP_START_S * run.clip.fps))
        keep = np.flatnonzero(np.isfinite(p[:, 0]))
        keep = keep[keep >= start]
        rows.append(p[keep])
        truth.append(np.full(len(keep), index[run.clip.label]))
    p, y = np.concatenate(rows), np.concatenate(truth)
    certain = p.max(axis=1) >= estimator.settings.uncertain_below
    return {"frames": int(len(y)), "ece": expected_calibration_error(p, y),
            "accuracy": float(np.mean(p.argmax(1) == y)),
            "uncertain_fraction": float(1.0 - certain.mean()),
            "accuracy_when_certain": (float(np.mean(p[certain].argmax(1) == y[certain]))
                                      if certain.any() else None)}


def new_person_online(estimator: EmotionEstimator, clips: Sequence[ClipFrames], *,
                      seed: int = 0, online_s: Sequence[float] = ONLINE_S) -> dict:
    """Accuracy at each read-out point over the test speakers' sessions (module doc)."""
    clips = _labelled(clips, estimator.labels)
    if len({c.label for c in clips}) < 2:
        return {"available": False, "reason": "fewer than 2 labelled classes"}
    runs = run_sessions(estimator, clips, seed)
    probs = [probabilities(estimator, run) for run in runs]
    index = {name: i for i, name in enumerate(estimator.labels)}
    truth = np.array([index[run.clip.label] for run in runs])
    accuracy = {}
    for at in online_s:
        read = np.stack([read_at(p, run.clip.fps, at) for p, run in zip(probs, runs)])
        accuracy[f"online_{at:g}s"] = float(np.mean(read.argmax(1) == truth))
    clip_mean = np.stack([np.nanmean(p, axis=0) for p in probs])
    return {"available": True, "speakers": len({c.speaker for c in clips}),
            "clips": len(clips), "accuracy": accuracy,
            "clip_mean_accuracy": float(np.mean(clip_mean.argmax(1) == truth)),
            "calibration": frame_calibration(estimator, runs, probs)}


def per_user(estimator: EmotionEstimator, clips: Sequence[ClipFrames], *, ks=(1, 2, 5),
             draws: int = 3, seed: int = 0, at_s: float = 2.0,
             l2: float | None = None, fit: Callable = fit_profile) -> dict:
    """Per-user calibration with k clips per class (module doc); `fit(estimator, name, clips,
    **kwargs)` makes each profile (scripts/cv_profile_head.py compares other rules)."""
    clips = _labelled(clips, estimator.labels)
    index = {name: i for i, name in enumerate(estimator.labels)}
    by_k = {}
    for k in ks:
        correct, total = 0, 0
        for draw in range(draws):
            for speaker in sorted({c.speaker for c in clips}):
                mine = [c for c in clips if c.speaker == speaker]
                rng = np.random.default_rng([seed, 53, k, draw, *speaker.encode()])
                calibration, tests = [], []
                for label in sorted({c.label for c in mine}):
                    pool = [c for c in mine if c.label == label]
                    order = rng.permutation(len(pool))
                    if len(pool) <= k:  # keep one clip of the class to test on
                        order = order[: max(0, len(pool) - 1)]
                        calibration += [pool[i] for i in order]
                        tests += [c for c in pool if c not in calibration]
                        continue
                    calibration += [pool[i] for i in order[:k]]
                    tests += [pool[i] for i in order[k:]]
                if not calibration or not tests:
                    continue
                profile = fit(estimator, speaker, calibration,
                              **({} if l2 is None else {"l2": l2}))
                for clip in tests:
                    stream = EmotionStream(estimator, clip.fps, profile)
                    run = run_clip(stream, clip)
                    p = read_at(probabilities(estimator, run, stream), clip.fps, at_s)
                    correct += int(np.argmax(p) == index[clip.label])
                    total += 1
        by_k[str(k)] = {"k": int(k), "tested": total,
                        "accuracy": (correct / total) if total else None}
    return {"available": bool(clips), "at_s": at_s, "draws": draws, "by_k": by_k}


def clip_outcomes(estimator: EmotionEstimator, clips: Sequence[ClipFrames], fps: float = 30.0
                  ) -> list[dict]:
    """Each clip as a new person with no profile: the clip-level answer (mean probability over
    its frames), whether that is `uncertain`, and how many `emotion.change` events it fires."""
    from streamav.emotion.events import EmotionChangeDetector

    out = []
    for clip in clips:
        stream = EmotionStream(estimator, clip.fps)
        run = run_clip(stream, clip)
        probs = probabilities(estimator, run)
        rows = probs[np.isfinite(probs[:, 0]) & clip.face_found]
        mean = rows.mean(axis=0)
        top = int(np.argmax(mean))
        detector = EmotionChangeDetector(estimator.labels, fps=clip.fps)
        changes = sum(detector.step(p) is not None for p in rows
                      if p.max() >= estimator.settings.uncertain_below)
        out.append({"clip": clip.clip_id, "label": clip.label, "top": estimator.labels[top],
                    "mean_top_probability": float(mean[top]),
                    "uncertain": bool(mean[top] < estimator.settings.uncertain_below),
                    "changes": int(changes)})
    return out


def neutral_speech(estimator: EmotionEstimator, clips: Sequence[ClipFrames]) -> dict:
    """On clips of neutral speech: how many come out neutral or uncertain, none confident."""
    outcomes = clip_outcomes(estimator, clips)
    ok = [o["top"] == "neutral" or o["uncertain"] for o in outcomes]
    confident_wrong = [o for o in outcomes if o["top"] != "neutral"
                       and o["mean_top_probability"] >= 0.8]
    return {"clips": len(outcomes), "neutral_or_uncertain": int(sum(ok)),
            "confident_non_neutral": len(confident_wrong),
            "max_changes_per_clip": max((o["changes"] for o in outcomes), default=0),
            "outcomes": outcomes}


ABLATION_GROUPS = (("geometry",), ("prosody",), ("w",), ("geometry", "prosody"),
                   ("geometry", "w"), ("geometry", "prosody", "w"))


def estimator_section(model_folder, refs, w_by_clip: dict[str, np.ndarray], *, seed: int,
                      draws: int, ks=(1, 2, 5), train_cache=None, train_w=None) -> dict:
    """The report's `emotion.estimator` section (see the module doc); `train_cache` adds the
    feature ablation (estimators fitted on its train / val speakers per feature group set;
    `train_w(clip)` gives a training clip's w for the groups that read w)."""
    from streamav.emotion.fit import clip_frames, fit_estimator
    from streamav.evaluate.inputs import load_clip

    if not EmotionEstimator.present(model_folder):
        return {"available": False, "reason": "the model folder has no emotion estimator "
                                              "(streamav train emotion)"}
    estimator = EmotionEstimator.load(model_folder)
    loaded = [load_clip(ref) for ref in refs]
    if any(clip.mesh_crop_xy is None for clip in loaded):
        return {"available": False, "reason": "the cache has no face mesh (made by an older "
                                              "streamav): rebuild it with streamav corpus cache"}

    def frames(groups):
        return [clip_frames(clip, groups, w_by_clip.get(clip.clip_id)) for clip in loaded]

    clips = frames(estimator.settings.groups)
    labelled = _labelled(clips, estimator.labels)
    classes = sorted({c.label for c in labelled})
    section: dict = {"available": True, "groups": list(estimator.settings.groups),
                     "settings": {k: v for k, v in estimator.metrics.items()
                                  if k in ("train_speakers", "val_speakers", "cache")},
                     "speakers": len({c.speaker for c in clips}), "classes": classes}
    if len(classes) >= 2:
        section["new_person"] = new_person_online(estimator, labelled, seed=seed)
        section["per_user"] = per_user(estimator, labelled, ks=ks, draws=draws, seed=seed)
    if classes == ["neutral"] or not labelled:
        section["neutral_speech"] = neutral_speech(estimator, clips)
    else:
        section["clips_no_profile"] = clip_outcomes(estimator, labelled)
    if train_cache is not None and len(classes) >= 2:
        from streamav.train.sequences import load_clips

        train_clips = [c for c in load_clips(train_cache, "train") if c.emotion_index >= 0]
        val_clips = [c for c in load_clips(train_cache, "val") if c.emotion_index >= 0]
        ws: dict[str, np.ndarray] = {}  # each training clip's w, run once for every variant

        def w_of(clip) -> np.ndarray:
            if clip.clip_id not in ws:
                ws[clip.clip_id] = train_w(clip)
            return ws[clip.clip_id]

        rows = []
        for groups in ABLATION_GROUPS:
            def inputs(seqs):
                return [clip_frames(c, groups, w_of(c) if "w" in groups else None)
                        for c in seqs]
            variant = fit_estimator(inputs(train_clips), inputs(val_clips), estimator.labels,
                                    replace(estimator.settings, groups=tuple(groups)), seed=seed)
            test = _labelled(frames(groups), estimator.labels)
            online = new_person_online(variant, test, seed=seed)
            rows.append({"groups": list(groups),
                         "online": online["accuracy"],
                         "ece": online["calibration"]["ece"],
                         "per_user_k2": per_user(variant, test, ks=(2,), draws=1,
                                                 seed=seed)["by_k"]["2"]["accuracy"]})
        section["ablation"] = rows
    return section

