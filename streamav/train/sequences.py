"""Whole clips from a feature cache, run through the causal model: what the emotion stage and the
evaluation read (per-frame w, latents and reconstructions of every clip of a split)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from streamav.corpus.cache import load_manifest, memmap_shard
from streamav.corpus.dataset import face_to_model
from streamav.corpus.labels import normalize_split
from streamav.model.streaming import StepOutputs, StreamingModel


@dataclass(frozen=True)
class ClipSequence:
    clip_id: str
    speaker: str
    emotion_index: int
    spectrum: np.ndarray  # (T, 513) float32
    face_crop_rgb: np.ndarray  # (T, 64, 64, 3) uint8
    face_found: np.ndarray  # (T,) bool
    fps: float
    traces: dict[str, np.ndarray]  # name -> (T,) float32, empty when the corpus has none
    mesh_crop_xy: np.ndarray | None = None  # (T, 468, 2) float32 crop px; None in old caches


def mesh_of(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    return np.array(arrays["mesh_crop_xy"], np.float32) if "mesh_crop_xy" in arrays else None


def load_clips(cache: Path, split: str | None) -> list[ClipSequence]:
    """Every clip of `split` (None: all) with at least one face, in manifest order."""
    return list(iter_clips(cache, split))


def iter_clips(cache: Path, split: str | None) -> Iterator[ClipSequence]:
    """`load_clips` one clip at a time: a caller that keeps only some of each clip (the emotion
    estimator's features) never holds the whole split's face crops (~12 KB a frame)."""
    manifest = load_manifest(cache)
    wanted = None if split in (None, "all") else normalize_split(split)
    for clip in manifest["clips"]:
        if wanted is not None and clip["split"] != wanted:
            continue
        arrays = memmap_shard(Path(cache) / clip["shard"])
        found = np.array(arrays["face_found"], bool)
        if not found.any():
            continue
        pts = np.array(arrays["pts_s"], np.float64)
        fps = float(1.0 / np.median(np.diff(pts))) if len(pts) > 1 else 30.0
        names = clip.get("trace_names") or []
        traces = ({name: np.array(arrays["traces"][:, i], np.float32)
                   for i, name in enumerate(names)} if "traces" in arrays and names else {})
        yield ClipSequence(clip["clip_id"], clip["speaker"], int(clip["emotion_index"]),
                           np.array(arrays["spectrum"], np.float32),
                           np.array(arrays["face_crop_rgb"], np.uint8), found, fps, traces,
                           mesh_of(arrays))


@torch.no_grad()
def run_clip(model: StreamingModel, spectrum: np.ndarray, face_crop_rgb: np.ndarray) -> StepOutputs:
    """The causal model over one whole clip: outputs with shapes (T, ...) as numpy-able tensors."""
    spectra = torch.from_numpy(np.ascontiguousarray(spectrum))[None]
    faces = torch.from_numpy(np.ascontiguousarray(face_to_model(face_crop_rgb)))[None]
    outputs, _ = model.run_sequence(spectra, faces)
    return StepOutputs(*(o[0] for o in outputs))
