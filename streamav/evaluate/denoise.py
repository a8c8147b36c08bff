"""Denoising: corrupt the face crops, run the model with the audio (AV) and without it
(V-only), and compare each reconstruction with the clean crop.

Per corruption and clip: a seeded corruption of the clip's crops (streamav/frontend/corruption.py),
then two causal runs over the clip (batched together with the clean runs), AV (the clip's own spectra) and V-only (the audio input
replaced by a spectrum of zeros: digital silence, what a run without a microphone feeds the
model; the audio front end maps it to its silence floor). PSNR (0..1 scale, per frame, averaged
over the frames with a face) of the noisy input, the AV output and the V-only output against the
clean crop. For occlusions also inside the occluded box only (`region`), where the lips must
come from the audio (mouth) or from w and the dynamics (eyes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from streamav.evaluate.metrics import finite_or_none, model_face_to_unit, psnr_db, uint8_to_unit
from streamav.frontend.corruption import Corruption, parse_corruption
from streamav.evaluate.batch import run_many
from streamav.model.streaming import StreamingModel
from streamav.train.sequences import ClipSequence

EXAMPLES_PER_CORRUPTION = 6
CLIPS_PER_BATCH = 2  # clips whose 12 runs go through the model side by side


def region_mask(corruption: Corruption) -> np.ndarray | None:
    """(64, 64) bool: the pixels an occlusion covers; None for corruptions of the whole crop."""
    if not corruption.name.startswith("occlude"):
        return None
    probe = corruption.apply(np.zeros((64, 64, 3), np.uint8), np.random.default_rng(0))
    mask = (probe != 0).all(axis=-1)
    return mask if mask.any() else None


def _masked_psnr(reference: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return psnr_db(reference[:, mask], estimate[:, mask])


@dataclass
class _Scores:
    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, name: str, values: np.ndarray) -> None:
        self.frames.setdefault(name, []).append(values)

    def mean(self, name: str) -> float | None:
        if name not in self.frames:
            return None
        return finite_or_none(float(np.concatenate(self.frames[name]).mean()), 3)


def _pick_examples(n_total: int, count: int) -> np.ndarray:
    """`count` frames spread over the clip, centred (one example: the middle frame, where the
    filter has context), never the very first frame unless the clip has only that."""
    count = min(count, n_total)
    return np.unique(((np.arange(count) + 0.5) * n_total / count).astype(int))


def _score_clip(clip_id: str, crops: np.ndarray, found: np.ndarray,
                noisy_crops: list[np.ndarray], outs: list, parsed: list[Corruption],
                scores: dict[str, _Scores], clean_scores: _Scores,
                examples: dict[str, list[dict]], per_clip_examples: int) -> None:
    """PSNRs and example rows of one clip from its 2 + 2 x corruptions runs."""
    clean = uint8_to_unit(crops)[found]
    faces = [model_face_to_unit(out.face_hat.numpy())[found] for out in outs]
    clean_scores.add("av", psnr_db(clean, faces[0]))
    clean_scores.add("v_only", psnr_db(clean, faces[1]))
    for c_index, corruption in enumerate(parsed):
        noisy = uint8_to_unit(noisy_crops[c_index])[found]
        av, v_only = faces[2 + 2 * c_index], faces[3 + 2 * c_index]
        key = str(corruption)
        for name, image in (("noisy", noisy), ("av", av), ("v_only", v_only)):
            scores[key].add(name, psnr_db(clean, image))
        mask = region_mask(corruption)
        if mask is not None:
            for name, image in (("noisy", noisy), ("av", av), ("v_only", v_only)):
                scores[key].add(f"region_{name}", _masked_psnr(clean, image, mask))
        for i in _pick_examples(len(clean), per_clip_examples):
            if len(examples[key]) < EXAMPLES_PER_CORRUPTION:
                row = np.stack([clean[i], noisy[i], av[i], v_only[i]])
                examples[key].append({"image": (row * 255.0 + 0.5).astype(np.uint8),
                                      "label": f"{clip_id[:16]}\nt={np.flatnonzero(found)[i]}"})


def denoising(model: StreamingModel, clips: Sequence[ClipSequence], corruptions: Sequence[str],
              *, seed: int, max_frames: int, advance: Callable[[], None] = lambda: None
              ) -> tuple[dict, dict[str, list[dict]]]:
    """(report section, {corruption: [{"image": (4, 64, 64, 3) uint8 clean|noisy|AV|V-only,
    "label": clip and frame}]})."""
    parsed = [parse_corruption(spec) for spec in corruptions]
    scores = {str(c): _Scores() for c in parsed}
    clean_scores = _Scores()
    examples: dict[str, list[dict]] = {str(c): [] for c in parsed}
    frames = 0
    per_clip_examples = max(1, -(-EXAMPLES_PER_CORRUPTION // max(1, len(clips))))
    runs = 2 + 2 * len(parsed)
    for first in range(0, len(clips), CLIPS_PER_BATCH):
        group = [(i, clips[i]) for i in range(first, min(len(clips), first + CLIPS_PER_BATCH))]
        jobs, noisy_sets = [], []
        for clip_index, clip in group:
            crops, spectrum = clip.face_crop_rgb[:max_frames], clip.spectrum[:max_frames]
            silence = np.zeros_like(spectrum)
            noisy_crops = [c.apply(crops, np.random.default_rng([seed, 17, c_index, clip_index]))
                           for c_index, c in enumerate(parsed)]
            noisy_sets.append(noisy_crops)
            jobs += [(spectrum, crops), (silence, crops)]
            for noisy_u8 in noisy_crops:
                jobs += [(spectrum, noisy_u8), (silence, noisy_u8)]
        outs = run_many(model, jobs)
        for n, (clip_index, clip) in enumerate(group):
            found = clip.face_found[:max_frames]
            if found.any():
                frames += int(found.sum())
                _score_clip(clip.clip_id, clip.face_crop_rgb[:max_frames], found, noisy_sets[n],
                            outs[n * runs:(n + 1) * runs], parsed, scores, clean_scores,
                            examples, per_clip_examples)
            advance()
    section: dict = {"clips": len(clips), "frames": frames, "max_frames_per_clip": max_frames,
                     "silence_input": "zeros", "scale": "0..1, per-frame PSNR averaged",
                     "clean": {"av_db": clean_scores.mean("av"),
                               "v_only_db": clean_scores.mean("v_only")},
                     "corruptions": {}}
    for corruption in parsed:
        key, s = str(corruption), scores[str(corruption)]
        noisy, av, v_only = s.mean("noisy"), s.mean("av"), s.mean("v_only")
        entry = {"noisy_db": noisy, "av_db": av, "v_only_db": v_only,
                 "av_minus_noisy_db": _diff(av, noisy), "av_minus_v_only_db": _diff(av, v_only),
                 "region": None}
        if "region_av" in s.frames:
            r_noisy, r_av, r_v = s.mean("region_noisy"), s.mean("region_av"), s.mean("region_v_only")
            entry["region"] = {"noisy_db": r_noisy, "av_db": r_av, "v_only_db": r_v,
                               "av_minus_v_only_db": _diff(r_av, r_v),
                               "pixels": int(region_mask(corruption).sum())}
        section["corruptions"][key] = entry
    return section, examples


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)

