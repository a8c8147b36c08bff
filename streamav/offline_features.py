"""Front-end features of whole clips, offline, and the real model inputs made from them.

- `extract_clip_features(video)` runs the live pipeline itself over a clip (every frame,
  deterministic, no publisher) and returns each frame's features (streamav.frontend.features:
  ClipFeatures); the corpus cache, calibration profiles and the engines' inputs use it, so
  training, evaluation and engine checks read exactly what `streamav live` computes.
- The calibration set (`calibration/calibration.json`): real recordings described by their
  frame counts and sha256s and one hash over them and the front end's signature (`set_hash`,
  which an INT8 engine's manifest records). `load_calibration()` reads and verifies it,
  `describe_recordings(paths, out)` writes a new description (`streamav build-engines
  --calibration FOLDER`), `CalibrationSet.frames()` steps the front end over each recording,
  cached next to the engines by `set_hash`.
- `OfflineInputs`: what the engines read when they build (streamav.engines.inputs.EngineInputs):
  parity frames from the calibration set, else from the bundled demo clip, and the calibration
  set for INT8.

This module sits above the pipeline and below the commands: the engines get their real frames
from here through their callers and never run the front end themselves (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.data import demo_clip_path
from streamav.engines.inputs import CalibrationFrames
from streamav.errors import InputError
from streamav.frontend.features import ClipFeatures, FeatureRecorder, frontend_signature
from streamav.host import file_sha256
from streamav.model.inputs import face_to_model

CALIBRATION_FORMAT = "streamav-calibration"
VIDEO_SUFFIXES = (".flv", ".mp4", ".mkv", ".mov", ".avi", ".webm")


def extract_clip_features(video: str | Path, *, audio: str | Path | None = None,
                          no_audio: bool = False, config_path: Path | None = None,
                          max_frames: int | None = None) -> ClipFeatures:
    """Run the live pipeline offline over a clip and return its per-frame features."""
    # the live path's modules (PyAV, MediaPipe) load here, not at import: the step benchmark
    # reads cached calibration frames and runs where neither is installed (a GPU image)
    from streamav.config import load_config
    from streamav.frontend.face import FaceFrontEnd
    from streamav.pipeline import LivePipeline, NullPublisher
    from streamav.sources.factory import build_sources

    config = load_config(config_path, {
        "source.video": str(video), "source.audio": str(audio) if audio else None,
        "source.no_audio": True if no_audio else None, "run.realtime": False,
        "run.preview": False, "run.max_frames": max_frames,
        "publish.control_endpoint": "none",
    })
    recorder = FeatureRecorder(config.face.crop_size_px, config.spectrum.n_bins)
    pipeline = LivePipeline(config, build_sources(config), FaceFrontEnd(config.face),
                            NullPublisher(), on_frame=recorder)
    pipeline.run()
    return recorder.features()


def model_inputs(features: ClipFeatures) -> tuple[np.ndarray, np.ndarray]:
    """The model's inputs of a clip's frames with a face: (T, 513) spectra and (T, 3, 64, 64)
    faces, float32 (streamav.model.inputs)."""
    keep = features.face_found
    return (features.spectrum[keep].astype(np.float32),
            face_to_model(features.face_crop_rgb[keep]).astype(np.float32))


# -- the calibration set -----------------------------------------------------------------------

def default_calibration_file() -> Path:
    """The checkout's calibration/calibration.json."""
    return Path(__file__).resolve().parents[1] / "calibration" / "calibration.json"


@dataclass(frozen=True)
class CalibrationSet:
    """A verified calibration description (streamav.engines.inputs.Calibration)."""

    path: Path
    recordings: tuple[dict, ...]  # {"path", "frames", "sha256"}
    set_hash: str

    def recording_paths(self) -> list[Path]:
        return [(self.path.parent / r["path"]).resolve() for r in self.recordings]

    def frames(self, cache_dir: Path | None = None) -> CalibrationFrames:
        """Front-end features of every recording (faces found only), cached by set_hash."""
        cached = cache_dir / f"calibration-{self.set_hash[:16]}.npz" if cache_dir else None
        if cached is not None and cached.is_file():
            with np.load(cached) as data:
                return CalibrationFrames(data["spectra"], data["faces"],
                                         tuple(int(i) for i in data["starts"]))
        spectra, faces, starts = [], [], []
        for path in self.recording_paths():
            clip_spectra, clip_faces = model_inputs(extract_clip_features(path))
            starts.append(sum(len(s) for s in spectra))
            spectra.append(clip_spectra)
            faces.append(clip_faces)
        result = CalibrationFrames(np.concatenate(spectra), np.concatenate(faces), tuple(starts))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.tmp.npz")
            np.savez(tmp, spectra=result.spectra, faces=result.faces,
                     starts=np.asarray(starts, np.int64))
            tmp.replace(cached)
        return result


def _set_hash(recordings: list[dict]) -> str:
    text = json.dumps({"recordings": [[r["path"], r["frames"], r["sha256"]] for r in recordings],
                       "frontend": frontend_signature()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_calibration(path: Path | str | None = None) -> CalibrationSet:
    """Read a calibration description (default: the checkout's) and check its recordings."""
    path = Path(path) if path is not None else default_calibration_file()
    if path.is_dir():
        path = path / "calibration.json"
    if not path.is_file():
        raise InputError(f"no calibration description at {path} (make one with "
                         "`streamav build-engines --calibration FOLDER_OF_CLIPS`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path} does not parse: {error}") from None
    if data.get("format") != CALIBRATION_FORMAT or not data.get("recordings"):
        raise InputError(f"{path} is not a streamav calibration description")
    recordings = tuple(data["recordings"])
    for r in recordings:
        clip = (path.parent / r["path"])
        if not clip.is_file():
            raise InputError(f"calibration recording {clip} is missing")
        if file_sha256(clip) != r["sha256"]:
            raise InputError(f"calibration recording {clip} has changed since {path} was made "
                             "(sha256 differs): describe the set again")
    set_hash = _set_hash(list(recordings))
    if data.get("set_hash") != set_hash:
        raise InputError(f"{path}: set_hash does not match its recordings and front end "
                         "(describe the set again)")
    return CalibrationSet(path, recordings, set_hash)


def describe_recordings(paths: list[Path], out: Path) -> CalibrationSet:
    """Write `out` (calibration.json) for these clips: frame counts from PyAV, sha256s, hash."""
    import av

    if not paths:
        raise InputError("no recordings to calibrate with")
    recordings = []
    for clip in sorted(paths):
        try:
            with av.open(str(clip)) as container:
                frames = sum(1 for _ in container.decode(video=0))
        except (av.FFmpegError, IndexError) as error:
            raise InputError(f"calibration recording {clip}: cannot decode its video ({error})")
        recordings.append({"path": str(Path(clip).resolve().relative_to(out.parent.resolve()))
                           if Path(clip).resolve().is_relative_to(out.parent.resolve())
                           else str(Path(clip).resolve()),
                           "frames": frames, "sha256": file_sha256(Path(clip))})
    description = {"format": CALIBRATION_FORMAT, "version": 1,
                   "about": "Recordings for INT8 calibration and parity checks of the engines; "
                            "run through the live front end, every frame, state fed back.",
                   "frames": sum(r["frames"] for r in recordings),
                   "recordings": recordings, "set_hash": _set_hash(recordings)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(description, indent=2) + "\n")
    return load_calibration(out)


def recordings_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


# -- what the engines read when they build -----------------------------------------------------

_FRAMES_MEMO: dict[str, tuple[np.ndarray, np.ndarray]] = {}


class OfflineInputs:
    """The engines' real inputs (streamav.engines.inputs.EngineInputs). Parity frames: the
    checkout's calibration set when it loads, else the bundled demo clip; both are read once
    per process (and the calibration frames cached on disk by their hash). `calibration`: the
    INT8 calibration description (a calibration.json or its folder; default: the checkout's).
    `frames_file`: an .npz with `spectra` and `faces` (model inputs, e.g. the calibration
    frames' cache file) used as the parity frames instead, on a machine without the front end
    (scripts/bench_gpu_step.py on a GPU image)."""

    def __init__(self, calibration: Path | str | None = None,
                 frames_file: Path | str | None = None) -> None:
        self._calibration_path = Path(calibration) if calibration is not None else None
        self._frames_file = Path(frames_file) if frames_file is not None else None
        if self._frames_file is not None and not self._frames_file.is_file():
            raise InputError(f"{self._frames_file}: no such frames file (.npz with spectra "
                             "and faces)")

    def calibration(self) -> CalibrationSet:
        return load_calibration(self._calibration_path)

    def reference_source(self) -> str:
        """Where the parity frames come from: the checkout's calibration set when it loads;
        else the demo clip, and why (a stale set must not hide behind its file name)."""
        if self._frames_file is not None:
            return str(self._frames_file)
        try:
            load_calibration()
        except InputError as error:
            return f"the demo clip, looped (calibration set not used: {error})"
        return "calibration/calibration.json"

    def reference_frames(self, frames: int, cache_dir: Path | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Real model inputs for parity checks and benchmarks, looped to `frames`."""
        key = str(self._frames_file or cache_dir)
        if key not in _FRAMES_MEMO:
            _FRAMES_MEMO[key] = (_saved_frames(self._frames_file) if self._frames_file
                                 else _real_frames(cache_dir))
        spectra, faces = _FRAMES_MEMO[key]
        reps = -(-frames // spectra.shape[0])
        return (np.ascontiguousarray(np.concatenate([spectra] * reps)[:frames]),
                np.ascontiguousarray(np.concatenate([faces] * reps)[:frames]))


def _saved_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as data:
            return np.asarray(data["spectra"], np.float32), np.asarray(data["faces"], np.float32)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{path}: not a frames file (.npz with spectra and faces): "
                         f"{error}") from error


def _real_frames(cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = load_calibration().frames(cache_dir)
    except InputError:
        return model_inputs(extract_clip_features(demo_clip_path()))
    return data.spectra, data.faces
