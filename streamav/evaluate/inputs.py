"""What an evaluation reads: the model folder, the feature cache's clips of one split (loaded one
at a time), and the identity of both (config and front-end hashes) for the report.

`load_clips` (streamav/train/sequences.py) loads a whole split into memory; a test split of a
large corpus is hundreds of MB of face crops, so the evaluation lists the clips from the
manifest and reads each shard (memory-mapped) only when it runs that clip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamav.corpus.cache import load_manifest, memmap_shard
from streamav.corpus.labels import EMOTIONS, emotion_name, normalize_split
from streamav.errors import InputError
from streamav.model.io import load_model, read_model_config
from streamav.model.streaming import StreamingModel
from streamav.train.sequences import ClipSequence, mesh_of

TRAINING_STAGES = ("vqvae-audio", "vqvae-visual", "mdvae", "emotion")


@dataclass(frozen=True)
class ClipRef:
    """One clip of the evaluated split, as the manifest lists it (arrays not loaded)."""

    clip_id: str
    speaker: str
    emotion: str
    emotion_index: int
    shard: Path
    n_frames: int
    trace_names: tuple[str, ...]


def open_model(folder: str | Path) -> tuple[StreamingModel, dict[str, Any]]:
    """The model (eval mode, CPU) and what the report says about it. ModelFolderError if bad."""
    folder = Path(folder)
    cfg, meta = read_model_config(folder)
    model = load_model(folder)
    training = (meta.get("extra") or {}).get("training") or {}
    info = {
        "folder": str(folder),
        "preset": meta.get("preset"),
        "config_sha256": hashlib.sha256(
            json.dumps(meta["model"], sort_keys=True).encode()).hexdigest()[:16],
        "weights_sha256": meta.get("weights_sha256"),
        "streamav_version": meta.get("streamav_version"),
        "labels": list(cfg.emotion.labels),
        "trained_stages": [stage for stage in TRAINING_STAGES if stage in training],
        "training_steps": {stage: training[stage].get("steps") for stage in TRAINING_STAGES
                           if stage in training and "steps" in training[stage]},
    }
    return model, info


def list_clips(cache: str | Path, split: str) -> tuple[list[ClipRef], dict[str, Any]]:
    """The clips of `split` ("train", "val", "test" or "all") and the cache's description.

    InputError (one line) when the cache is missing or the split has no clip.
    """
    cache = Path(cache)
    if not cache.exists():
        raise InputError(f"cache {cache} does not exist (make one with `streamav corpus cache`)")
    manifest = load_manifest(cache)
    try:
        wanted = None if split == "all" else normalize_split(split)
    except ValueError:
        wanted = None
    if wanted is None and split != "all":
        raise InputError(f"unknown split {split!r}: use train, val, test or all")
    refs, counts = [], {}
    for clip in manifest.get("clips", []):
        counts[clip["split"]] = counts.get(clip["split"], 0) + 1
        if wanted is not None and clip["split"] != wanted:
            continue
        if float(clip.get("face_found_fraction", 1.0)) <= 0.0:
            continue
        refs.append(ClipRef(clip["clip_id"], str(clip["speaker"]), emotion_name(int(clip["emotion_index"])),
                            int(clip["emotion_index"]), cache / clip["shard"],
                            int(clip.get("n_frames", 0)), tuple(clip.get("trace_names") or ())))
    if not refs:
        present = ", ".join(f"{name}: {n} clips" for name, n in sorted(counts.items())) or "none"
        raise InputError(f"the {split} split of {cache} has no clip with a face (splits present: "
                         f"{present}); pass --split with one of them, or --split all")
    frontend = manifest.get("frontend") or {}
    info = {
        "folder": str(cache),
        "format": manifest.get("format"),
        "frontend_hash": frontend.get("hash"),
        "complete": manifest.get("complete"),
        "split": split,
        "clips_in_split": len(refs),
        "speakers_in_split": sorted({r.speaker for r in refs}),
        "emotions_in_split": [e for e in EMOTIONS if any(r.emotion == e for r in refs)],
        "has_traces": any(r.trace_names for r in refs),
    }
    return refs, info


def subsample(refs: list[ClipRef], max_clips: int | None, seed: int) -> list[ClipRef]:
    """At most `max_clips` clips, a seeded random choice kept in manifest order."""
    if max_clips is None or len(refs) <= max_clips:
        return list(refs)
    rng = np.random.default_rng([seed, 101])
    keep = np.sort(rng.choice(len(refs), size=max_clips, replace=False))
    return [refs[i] for i in keep]


def load_clip(ref: ClipRef) -> ClipSequence:
    """One clip's arrays (copied out of the shard's memory map), as `load_clips` returns them."""
    try:
        arrays = memmap_shard(ref.shard)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read the cache shard {ref.shard}: {exc}") from None
    pts = np.array(arrays["pts_s"], np.float64)
    fps = float(1.0 / np.median(np.diff(pts))) if len(pts) > 1 else 30.0
    traces = ({name: np.array(arrays["traces"][:, i], np.float32)
               for i, name in enumerate(ref.trace_names)}
              if "traces" in arrays and ref.trace_names else {})
    return ClipSequence(ref.clip_id, ref.speaker, ref.emotion_index,
                        np.array(arrays["spectrum"], np.float32),
                        np.array(arrays["face_crop_rgb"], np.uint8),
                        np.array(arrays["face_found"], bool), fps, traces, mesh_of(arrays))
