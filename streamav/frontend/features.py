"""Per-frame front-end features of a whole clip, as the live pipeline makes them.

Training and evaluation read exactly what `streamav live` computes: `FeatureRecorder` is a
pipeline's `on_frame` hook that collects each frame's aligned face crop and power spectrum;
`streamav.offline_features.extract_clip_features` runs the same `LivePipeline` offline (every
frame, deterministic) with no publisher and this recorder, `streamav live --save-features PATH`
writes the same arrays from a live run, and the corpus cache stores them, so there is no
train/serve skew.

Arrays (T frames):
    face_crop_rgb  (T, 64, 64, 3) uint8   aligned crop, zeros where no face was found
    face_found     (T,) bool
    face_box_xywh  (T, 4) float32         source pixels, NaN where no face
    landmarks_xy   (T, 5, 2) float32      source pixels, NaN where no face
    mesh_crop_xy   (T, 468, 2) float32    every FaceMesh point in crop pixels (the similarity
                                          of the alignment removed: pose-normalised), NaN where
                                          no face; the emotion features' face geometry
    spectrum       (T, 513) float32       power, zeros when the run has no audio
    pts_s          (T,) float64           the frame's time in its file (NaN for live devices)
    frame_seq      (T,) int64
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamav.frontend.face import FaceConfig, N_MESH_POINTS, mesh_in_crop
from streamav.frontend.spectrum import SpectrumConfig

# Bump when the front end's output changes for the same input (caches made before are stale).
FRONTEND_VERSION = 2  # 2: mesh_crop_xy

FEATURE_KEYS = ("face_crop_rgb", "face_found", "face_box_xywh", "landmarks_xy", "mesh_crop_xy",
                "spectrum", "pts_s", "frame_seq")


@dataclass(frozen=True)
class ClipFeatures:
    face_crop_rgb: np.ndarray
    face_found: np.ndarray
    face_box_xywh: np.ndarray
    landmarks_xy: np.ndarray
    mesh_crop_xy: np.ndarray
    spectrum: np.ndarray
    pts_s: np.ndarray
    frame_seq: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.face_found.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in FEATURE_KEYS}


class FeatureRecorder:
    """Collects FrameResults (the pipeline's `on_frame` hook) into ClipFeatures."""

    def __init__(self, crop_size_px: int = 64, n_bins: int = 513) -> None:
        self.crop_size_px = crop_size_px
        self.n_bins = n_bins
        self._rows: list[tuple] = []
        self._lock = threading.Lock()

    def __call__(self, result) -> None:
        face, frame = result.face, result.frame
        crop = face.crop_rgb if face.found and face.crop_rgb is not None else np.zeros(
            (self.crop_size_px, self.crop_size_px, 3), np.uint8)
        box = np.asarray(face.box_xywh, np.float32) if face.found else np.full(4, np.nan, np.float32)
        marks = (np.asarray(face.landmarks_xy, np.float32) if face.found
                 else np.full((5, 2), np.nan, np.float32))
        mesh = (mesh_in_crop(face) if face.found
                else np.full((N_MESH_POINTS, 2), np.nan, np.float32))
        spectrum = (result.spectrum if result.spectrum is not None
                    else np.zeros(self.n_bins, np.float32))
        pts = np.nan if frame.pts_s is None else frame.pts_s
        with self._lock:
            self._rows.append((np.array(crop), bool(face.found), box, marks, mesh, spectrum,
                               pts, frame.seq))

    def features(self) -> ClipFeatures:
        with self._lock:
            rows = list(self._rows)
        if not rows:
            raise ValueError("no frames were recorded")
        crops, found, boxes, marks, meshes, spectra, pts, seqs = zip(*rows)
        return ClipFeatures(
            face_crop_rgb=np.stack(crops).astype(np.uint8),
            face_found=np.array(found, bool),
            face_box_xywh=np.stack(boxes).astype(np.float32),
            landmarks_xy=np.stack(marks).astype(np.float32),
            mesh_crop_xy=np.stack(meshes).astype(np.float32),
            spectrum=np.stack(spectra).astype(np.float32),
            pts_s=np.array(pts, np.float64),
            frame_seq=np.array(seqs, np.int64),
        )


def save_features(path: Path, features: ClipFeatures) -> None:
    """Write the arrays as an uncompressed .npz (atomic: a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as out:
            np.savez(out, **features.arrays())
        partial.replace(path)
    except BaseException:  # a full disk, Ctrl-C: no half-written file left behind
        partial.unlink(missing_ok=True)
        raise


def load_features(path: Path) -> ClipFeatures:
    with np.load(Path(path)) as data:
        return ClipFeatures(**{key: data[key] for key in FEATURE_KEYS})


def frontend_signature(config=None) -> dict:
    """What the features depend on besides the input: caches record it and compare it.
    `config`: a run's config (its `face` and `spectrum` sections); None: the defaults."""
    import av
    import cv2
    import mediapipe

    face = asdict(config.face if config is not None else FaceConfig())
    face.pop("max_faces", None)  # how many faces are tracked changes no face's features
    signature = {
        "frontend_version": FRONTEND_VERSION,
        "face": face,
        "spectrum": asdict(config.spectrum if config is not None else SpectrumConfig()),
        "mediapipe": mediapipe.__version__,
        "opencv": cv2.__version__,
        "av": av.__version__,
    }
    signature["hash"] = hashlib.sha256(
        json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    return signature
