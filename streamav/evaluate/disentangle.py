"""Disentanglement against ground truth: does z_av follow the mouth and z_v the head?

Only caches with per-frame traces (the synthetic corpus) can answer. For every latent (z_av,
z_v, z_a) and trace (mouth_open, head yaw/pitch/roll, blink, gaze), on the frames where a face
was found, after removing each clip's mean from both (the latents are the *dynamics*; static
per-clip offsets belong to w):

- `max_abs_r`: the largest |Pearson r| of one latent dimension with the trace (and which one);
- `r_linear_cv`: Pearson r between the trace and its least-squares prediction from all the
  latent's dimensions, fitted on half the clips and measured on the other half (two folds, so a
  16-d z_av gets no edge over a 4-d z_v from overfitting). The headline numbers use it.

Headlines: mouth = r(z_av, mouth_open) / r(z_v, mouth_open) (the paper's claim: >= 2), head pose
= mean over yaw/pitch/roll of r(z_v, .) against the same for z_av.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from streamav.evaluate.metrics import finite_or_none, linear_r_cv, max_abs_pearson

LATENTS = ("z_av", "z_v", "z_a")
TRACES = ("mouth_open", "head_yaw_deg", "head_pitch_deg", "head_roll_deg", "blink", "gaze_x",
          "gaze_y")
HEAD_POSE = ("head_yaw_deg", "head_pitch_deg", "head_roll_deg")
MIN_FRAMES_PER_CLIP = 3


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or abs(denominator) < 1e-6:
        return None
    return numerator / denominator


def disentanglement(clips: Sequence[dict], seed: int) -> dict:
    """clips: dicts with "latents" {name: (T, D)}, "traces" {name: (T,)}, "face_found" (T,)."""
    usable = []
    for clip in clips:
        keep = clip["face_found"]
        if not clip["traces"] or int(keep.sum()) < MIN_FRAMES_PER_CLIP:
            continue
        centre = {name: (lambda a: a - a.mean(axis=0))(np.asarray(v)[keep].astype(np.float64))
                  for name, v in {**clip["latents"], **clip["traces"]}.items()}
        usable.append(centre)
    empty = {"clips": len(usable), "traces": None, "mouth": None, "head_pose": None}
    if not clips or not any(c["traces"] for c in clips):
        return {"available": False,
                "reason": "the cache has no ground-truth traces (the synthetic corpus has them: "
                          "streamav corpus synth)", **empty}
    if len(usable) < 2:
        return {"available": False, "reason": f"{len(usable)} clip(s) with traces and a face; "
                "the cross-validated correlation needs at least 2", **empty}
    folds = np.random.default_rng([seed, 13]).permutation(len(usable)) % 2
    names = [t for t in TRACES if all(t in c for c in usable)]
    table: dict[str, dict] = {}
    for trace in names:
        truth = [c[trace] for c in usable]
        row = {}
        for latent in LATENTS:
            stacked = np.concatenate([c[latent] for c in usable])
            best, dim = max_abs_pearson(stacked, np.concatenate(truth))
            row[latent] = {"max_abs_r": finite_or_none(best), "max_abs_r_dim": dim,
                           "r_linear_cv": finite_or_none(
                               linear_r_cv([c[latent] for c in usable], truth, folds))}
        table[trace] = row

    def cv(trace: str, latent: str) -> float | None:
        return table.get(trace, {}).get(latent, {}).get("r_linear_cv")

    mouth = None
    if "mouth_open" in table:
        mouth = {"z_av": cv("mouth_open", "z_av"), "z_v": cv("mouth_open", "z_v"),
                 "ratio_z_av_over_z_v": finite_or_none(
                     _ratio(cv("mouth_open", "z_av"), cv("mouth_open", "z_v")))}
    head = None
    pose = [t for t in HEAD_POSE if t in table]
    if pose:
        def mean_cv(latent: str) -> float | None:
            values = [cv(t, latent) for t in pose]
            return None if any(v is None for v in values) else float(np.mean(values))
        head = {"traces": pose, "z_v": finite_or_none(mean_cv("z_v")),
                "z_av": finite_or_none(mean_cv("z_av")),
                "ratio_z_v_over_z_av": finite_or_none(_ratio(mean_cv("z_v"), mean_cv("z_av")))}
    return {"available": True, "reason": None, "clips": len(usable),
            "frames": int(sum(len(c[LATENTS[0]]) for c in usable)),
            "traces": table, "mouth": mouth, "head_pose": head}
