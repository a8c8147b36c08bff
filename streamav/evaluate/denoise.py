"""Denoising: corrupt the face crops, run the model with the audio (AV) and without it
(V-only), and compare each reconstruction with the clean crop.

Per corruption and clip: a seeded corruption of the clip's crops (streamav/frontend/corruption.py),
then two causal runs over the clip (batched together with the clean runs), AV (the clip's own spectra) and V-only (the audio input
replaced by a spectrum of zeros: digital silence, what a run without a microphone feeds the
model; the audio front end maps it to its silence floor). PSNR (0..1 scale, per frame, averaged
over the frames with a face) of the noisy input, the AV output and the V-only output against the
clean crop. For occlusions also inside the occluded box only (`region`), where the lips must
come from the audio (mouth) or from w and the dynamics (eyes).

Baselines on the same frames (streamav/evaluate/baselines.py): the visual VQ-VAE alone, a
Gaussian blur and a blur followed by a causal temporal mean, each at its best setting over the
clips (an oracle choice that favours them). Identity: on clean input and at gaussian 0.2, is
each AV output nearer (pixel MSE) to its own person's mean clean face than to every other
person's (the other evaluated speakers and, with a gallery, the training speakers)?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from streamav.evaluate.baselines import blur_temporal_grid, vqvae_alone
from streamav.evaluate.metrics import finite_or_none, model_face_to_unit, psnr_db, uint8_to_unit
from streamav.frontend.corruption import Corruption, parse_corruption
from streamav.evaluate.batch import run_many
from streamav.model.streaming import StreamingModel
from streamav.train.sequences import ClipSequence

EXAMPLES_PER_CORRUPTION = 6
CLIPS_PER_BATCH = 2  # clips whose 12 runs go through the model side by side
EXAMPLE_COLUMNS = ("clean", "noisy", "AV", "V-only (silence)", "VQ-VAE alone",
                   "blur + temporal mean")
IDENTITY_CORRUPTIONS = ("clean", "gaussian:0.2")


def region_mask(corruption: Corruption) -> np.ndarray | None:
    """(64, 64) bool: the pixels an occlusion covers; None for corruptions of the whole crop."""
    return corruption.region_mask(64)


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


def _score_clip(clip_id: str, crops: np.ndarray, found: np.ndarray, fps: float,
                noisy_crops: list[np.ndarray], outs: list, vq_faces: list[np.ndarray],
                parsed: list[Corruption], scores: dict[str, _Scores], clean_scores: _Scores,
                examples: dict[str, list[dict]], per_clip_examples: int) -> dict[str, np.ndarray]:
    """PSNRs and example rows of one clip from its 2 + 2 x corruptions runs and its baselines;
    returns the AV faces (found frames) on clean input and the identity corruptions."""
    clean = uint8_to_unit(crops)[found]
    faces = [model_face_to_unit(out.face_hat.numpy())[found] for out in outs]
    clean_scores.add("av", psnr_db(clean, faces[0]))
    clean_scores.add("v_only", psnr_db(clean, faces[1]))
    clean_scores.add("vq", psnr_db(clean, vq_faces[0][found]))
    identity_faces = {"clean": faces[0]}
    for c_index, corruption in enumerate(parsed):
        noisy_all = uint8_to_unit(noisy_crops[c_index])
        noisy = noisy_all[found]
        av, v_only = faces[2 + 2 * c_index], faces[3 + 2 * c_index]
        vq = vq_faces[1 + c_index][found]
        key = str(corruption)
        if key in IDENTITY_CORRUPTIONS:
            identity_faces[key] = av
        for name, image in (("noisy", noisy), ("av", av), ("v_only", v_only), ("vq", vq)):
            scores[key].add(name, psnr_db(clean, image))
        grid = blur_temporal_grid(noisy_all, fps)
        for (sigma, tau), estimate in grid.items():
            scores[key].add(_baseline_name(sigma, tau), psnr_db(clean, estimate[found]))
        mask = region_mask(corruption)
        if mask is not None:
            for name, image in (("noisy", noisy), ("av", av), ("v_only", v_only), ("vq", vq)):
                scores[key].add(f"region_{name}", _masked_psnr(clean, image, mask))
        reference = grid[(1.0, 0.5)][found]  # the example column; the table uses the best
        for i in _pick_examples(len(clean), per_clip_examples):
            if len(examples[key]) < EXAMPLES_PER_CORRUPTION:
                row = np.stack([clean[i], noisy[i], av[i], v_only[i], vq[i], reference[i]])
                examples[key].append({"image": (row * 255.0 + 0.5).astype(np.uint8),
                                      "label": f"{clip_id[:16]}\nt={np.flatnonzero(found)[i]}"})
    return identity_faces


def _baseline_name(sigma: float, tau: float | None) -> str:
    return f"blur_{sigma:g}" if tau is None else f"blur_{sigma:g}_mean_{tau:g}"


def _best_baseline(s: _Scores, temporal: bool) -> tuple[float | None, float | None, float | None]:
    """(best mean PSNR, its sigma, its tau) over the blur (+ temporal mean) grid."""
    best: tuple[float | None, float | None, float | None] = (None, None, None)
    for name in s.frames:
        parts = name.split("_")
        if parts[0] != "blur" or (("mean" in parts) != temporal):
            continue
        value = s.mean(name)
        if value is not None and (best[0] is None or value > best[0]):
            best = (value, float(parts[1]), float(parts[3]) if temporal else None)
    return best


def identity_check(faces_by_corruption: dict[str, dict[str, list[np.ndarray]]],
                   clean_by_speaker: dict[str, list[np.ndarray]],
                   gallery: dict[str, np.ndarray] | None = None) -> dict:
    """Per speaker, is the mean AV output nearer (MSE) to the speaker's own mean clean face than
    to every other person's (evaluated speakers + gallery)? {corruption: {kept, speakers, ...}}."""
    people = {f"eval:{k}": np.concatenate(v).mean(0) for k, v in clean_by_speaker.items()}
    for name, face in (gallery or {}).items():
        people[f"gallery:{name}"] = face
    if len(people) < 2:
        return {"available": False, "reason": "fewer than two people to tell apart"}
    names = list(people)
    stack = np.stack([people[n] for n in names])  # (P, H, W, 3)
    section: dict = {"available": True, "reason": None, "people": len(names),
                     "gallery_people": len(gallery or {}), "by_corruption": {}}
    for corruption, by_speaker in faces_by_corruption.items():
        per_speaker = {}
        for speaker, outputs in by_speaker.items():
            mean_out = np.concatenate(outputs).mean(0)
            distances = ((stack - mean_out) ** 2).reshape(len(names), -1).mean(1)
            own = distances[names.index(f"eval:{speaker}")]
            others = np.delete(distances, names.index(f"eval:{speaker}"))
            nearest = names[int(np.argmin(distances))]
            per_speaker[speaker] = {"nearest": nearest, "own_mse": round(float(own), 6),
                                    "nearest_other_mse": round(float(others.min()), 6),
                                    "kept": bool(own < others.min())}
        kept = sum(v["kept"] for v in per_speaker.values())
        section["by_corruption"][corruption] = {"speakers": len(per_speaker), "kept": kept,
                                                "all_kept": kept == len(per_speaker),
                                                "per_speaker": per_speaker}
    return section


def denoising(model: StreamingModel, clips: Sequence[ClipSequence], corruptions: Sequence[str],
              *, seed: int, max_frames: int, advance: Callable[[], None] = lambda: None,
              gallery: dict[str, np.ndarray] | None = None
              ) -> tuple[dict, dict[str, list[dict]]]:
    """(report section, {corruption: [{"image": (6, 64, 64, 3) uint8 in EXAMPLE_COLUMNS order,
    "label": clip and frame}]}). `gallery`: other people's mean clean faces (0..1, (64, 64, 3)),
    e.g. the training speakers', for the identity check."""
    parsed = [parse_corruption(spec) for spec in corruptions]
    scores = {str(c): _Scores() for c in parsed}
    clean_scores = _Scores()
    examples: dict[str, list[dict]] = {str(c): [] for c in parsed}
    frames = 0
    per_clip_examples = max(1, -(-EXAMPLES_PER_CORRUPTION // max(1, len(clips))))
    runs = 2 + 2 * len(parsed)
    identity_faces: dict[str, dict[str, list[np.ndarray]]] = {}
    clean_by_speaker: dict[str, list[np.ndarray]] = {}
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
                crops = clip.face_crop_rgb[:max_frames]
                vq_faces = [vqvae_alone(model, c) for c in (crops, *noisy_sets[n])]
                faces = _score_clip(clip.clip_id, crops, found, clip.fps, noisy_sets[n],
                                    outs[n * runs:(n + 1) * runs], vq_faces, parsed, scores,
                                    clean_scores, examples, per_clip_examples)
                clean_by_speaker.setdefault(clip.speaker, []).append(uint8_to_unit(crops[found]))
                for key, value in faces.items():
                    identity_faces.setdefault(key, {}).setdefault(clip.speaker, []).append(value)
            advance()
    section: dict = {"clips": len(clips), "frames": frames, "max_frames_per_clip": max_frames,
                     "silence_input": "zeros", "scale": "0..1, per-frame PSNR averaged",
                     "speakers": len(clean_by_speaker),
                     "baselines": "VQ-VAE alone; Gaussian blur and blur + causal temporal mean "
                                  "at their best sigma / time constant over these clips",
                     "clean": {"av_db": clean_scores.mean("av"),
                               "v_only_db": clean_scores.mean("v_only"),
                               "vq_db": clean_scores.mean("vq")},
                     "corruptions": {},
                     "identity": identity_check(identity_faces, clean_by_speaker, gallery)}
    for corruption in parsed:
        key, s = str(corruption), scores[str(corruption)]
        noisy, av, v_only, vq = s.mean("noisy"), s.mean("av"), s.mean("v_only"), s.mean("vq")
        blur_db, blur_sigma, _ = _best_baseline(s, temporal=False)
        bt_db, bt_sigma, bt_tau = _best_baseline(s, temporal=True)
        entry = {"noisy_db": noisy, "av_db": av, "v_only_db": v_only, "vq_db": vq,
                 "blur_db": blur_db, "blur_sigma_px": blur_sigma,
                 "blur_temporal_db": bt_db, "blur_temporal_sigma_px": bt_sigma,
                 "blur_temporal_tau_s": bt_tau,
                 "av_minus_noisy_db": _diff(av, noisy), "av_minus_v_only_db": _diff(av, v_only),
                 "av_minus_blur_temporal_db": _diff(av, bt_db), "region": None}
        if "region_av" in s.frames:
            r_noisy, r_av, r_v = s.mean("region_noisy"), s.mean("region_av"), s.mean("region_v_only")
            entry["region"] = {"noisy_db": r_noisy, "av_db": r_av, "v_only_db": r_v,
                               "vq_db": s.mean("region_vq"),
                               "av_minus_v_only_db": _diff(r_av, r_v),
                               "pixels": int(region_mask(corruption).sum())}
        section["corruptions"][key] = entry
    return section, examples


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)

