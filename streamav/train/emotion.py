"""The `emotion` stage: fit the emotion estimator (streamav.emotion) and the step's w head.

- The estimator (what `streamav live` publishes as `emotion`): face geometry + voice prosody,
  minus the person's running baseline, a softmax head fitted on the cache's train speakers and
  temperatures on its val speakers (`streamav.emotion.fit.fit_estimator`, under a minute). It
  is written next to the model as emotion.safetensors + emotion.json.
- The step's own linear head on w (its `emotion_probs` output, kept for the engines' contract
  and as the w-only ablation): every frame from `min_context_s` on is one example of its clip's
  emotion (`streamav.emotion.head.fit_emotion_head`, seconds).

Only labelled clips are used: an unlabelled folder (GRID, your own clips) teaches nothing here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamav.corpus.labels import EMOTIONS
from streamav.emotion.estimator import EmotionSettings
from streamav.emotion.head import EmotionHead, fit_emotion_head
from streamav.errors import InputError
from streamav.model.streaming import StreamingModel
from streamav.train.sequences import iter_clips, load_clips, run_clip


def install_head(model: StreamingModel, head: EmotionHead) -> None:
    """Load a fitted (weights, bias) head into the model's linear emotion layer."""
    if tuple(head.labels) != tuple(model.labels):
        raise InputError(f"head labels {head.labels} differ from the model's {model.labels}")
    layer = model.emotion.net
    if not isinstance(layer, torch.nn.Linear):
        raise InputError("only a linear emotion head (hidden 0) can take a few-shot fit")
    with torch.no_grad():
        model.emotion.input_mean.zero_()
        model.emotion.input_scale.fill_(1.0)
        layer.weight.copy_(torch.from_numpy(head.weights))
        layer.bias.copy_(torch.from_numpy(head.bias))


def clip_w(model: StreamingModel, cache: Path, split: str, min_context_s: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, W) causal w means, (N,) emotion names, (N,) speakers of every usable frame."""
    ws, labels, speakers = [], [], []
    for clip in load_clips(cache, split):
        if clip.emotion_index < 0:  # unlabelled: nothing to fit on
            continue
        w = run_clip(model, clip.spectrum, clip.face_crop_rgb).w_mean.numpy()
        keep = np.arange(len(w)) >= int(min_context_s * clip.fps)
        keep &= clip.face_found
        ws.append(w[keep])
        labels += [EMOTIONS[clip.emotion_index]] * int(keep.sum())
        speakers += [clip.speaker] * int(keep.sum())
    if not ws:
        raise InputError(f"no usable clips in the {split} split of {cache}")
    return np.concatenate(ws), np.array(labels), speakers


def fit_model_emotion_head(model: StreamingModel, cache: Path) -> dict:
    w, labels, _ = clip_w(model, cache, "train")
    head = fit_emotion_head(w, labels, classes=tuple(model.labels))
    install_head(model, head)
    accuracy = float(np.mean(np.array(head.predict(w)) == labels))
    return {"stage": "emotion", "examples": int(len(labels)),
            "classes_seen": sorted(set(labels.tolist())), "train_accuracy": round(accuracy, 4)}


def labelled_frames(model: StreamingModel | None, cache: Path, split: str,
                    groups: tuple[str, ...]) -> list:
    """The labelled clips of a split as estimator inputs (w run through the model if needed)."""
    from streamav.emotion.fit import clip_frames

    frames = []
    for clip in iter_clips(cache, split):
        if clip.emotion_index < 0:
            continue
        w = (run_clip(model, clip.spectrum, clip.face_crop_rgb).w_mean.numpy()
             if "w" in groups and model is not None else None)
        frames.append(clip_frames(clip, groups, w))
    return frames


def fit_model_estimator(model: StreamingModel, cache: Path, out: Path,
                        settings: EmotionSettings | None = None, seed: int = 0) -> dict:
    """Fit the estimator on the cache's train (head) and val (temperatures) speakers; save it
    into the model folder `out`."""
    from streamav.corpus.cache import describe_cache
    from streamav.emotion.fit import fit_estimator

    settings = settings or EmotionSettings()
    train = labelled_frames(model, cache, "train", settings.groups)
    val = labelled_frames(model, cache, "val", settings.groups)
    if not train:
        raise InputError(f"no labelled clips in the train split of {cache}")
    estimator = fit_estimator(train, val, tuple(model.labels), settings, seed=seed)
    estimator.metrics["cache"] = describe_cache(cache)
    estimator.save(out)
    return {"estimator": estimator.metrics}
