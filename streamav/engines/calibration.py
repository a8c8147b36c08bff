"""The calibration set: real recordings stepped frame by frame, for INT8 and for parity checks.

`calibration/calibration.json` describes the set: each recording (path relative to the JSON
file), its frame count and sha256, and one hash over all of them and the front end's signature
(`set_hash`), which an INT8 engine's manifest records. `load_calibration()` reads and verifies
it; `CalibrationSet.frames()` runs the live front end over each recording (every frame,
deterministic) and returns the model inputs, cached next to the engines by `set_hash`.
`describe_recordings(paths, out)` writes a new description (`streamav build-engines
--calibration FOLDER` does this for a folder of clips).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.errors import InputError
from streamav.host import file_sha256

FORMAT = "streamav-calibration"
VIDEO_SUFFIXES = (".flv", ".mp4", ".mkv", ".mov", ".avi", ".webm")


def default_calibration_file() -> Path:
    """The checkout's calibration/calibration.json."""
    return Path(__file__).resolve().parents[2] / "calibration" / "calibration.json"


@dataclass(frozen=True)
class CalibrationFrames:
    """Model inputs of the whole set, recordings one after the other (state carries across)."""

    spectra: np.ndarray  # (T, 513) float32 power
    faces: np.ndarray  # (T, 3, 64, 64) float32, -0.5..0.5 (frames with a face only)
    recording_starts: tuple[int, ...]  # index of each recording's first frame

    @property
    def n_frames(self) -> int:
        return int(self.spectra.shape[0])


@dataclass(frozen=True)
class CalibrationSet:
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
        from streamav.model.inputs import face_to_model
        from streamav.frontend.features import extract_clip_features

        spectra, faces, starts = [], [], []
        for path in self.recording_paths():
            features = extract_clip_features(path)
            keep = features.face_found
            starts.append(sum(len(s) for s in spectra))
            spectra.append(features.spectrum[keep].astype(np.float32))
            faces.append(face_to_model(features.face_crop_rgb[keep]).astype(np.float32))
        result = CalibrationFrames(np.concatenate(spectra), np.concatenate(faces), tuple(starts))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.tmp.npz")
            np.savez(tmp, spectra=result.spectra, faces=result.faces,
                     starts=np.asarray(starts, np.int64))
            tmp.replace(cached)
        return result


def _set_hash(recordings: list[dict]) -> str:
    from streamav.config import load_config
    from streamav.frontend.features import frontend_signature

    text = json.dumps({"recordings": [[r["path"], r["frames"], r["sha256"]] for r in recordings],
                       "frontend": frontend_signature(load_config(None, {}))}, sort_keys=True)
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
    if data.get("format") != FORMAT or not data.get("recordings"):
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
    description = {"format": FORMAT, "version": 1,
                   "about": "Recordings for INT8 calibration and parity checks of the engines; "
                            "run through the live front end, every frame, state fed back.",
                   "frames": sum(r["frames"] for r in recordings),
                   "recordings": recordings, "set_hash": _set_hash(recordings)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(description, indent=2) + "\n")
    return load_calibration(out)


def recordings_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
