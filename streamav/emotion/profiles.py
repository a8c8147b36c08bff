"""Calibration profiles on disk: a person's labelled examples and the profile fitted on them.

A profile lives in the user's data directory (platformdirs: `~/.local/share/streamav/profiles`
on Linux; `$XDG_DATA_HOME` moves it) as two files:

    NAME.safetensors   the examples (per clip: features (T, D) float32, face_found (T,) uint8)
                       and the fitted profile (baseline (D,), weights (C, D), bias (C,))
    NAME.json          name, the labels and frame rates of the examples, the feature groups,
                       the fingerprint of the estimator the profile was fitted for, times

`add_examples` appends clips and refits (calibrating is repeatable); `load_profile` returns the
fitted profile, refitting from the stored examples when the estimator has changed since (a new
model). Writes go to a temporary file first and are renamed into place, so a failed or
interrupted calibration leaves the previous profile as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from streamav.emotion.estimator import EmotionEstimator, Profile
from streamav.emotion.fit import ClipFrames, fit_profile
from streamav.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def profiles_dir() -> Path:
    from platformdirs import user_data_path

    return user_data_path("streamav", appauthor=False) / "profiles"


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InputError(f"profile name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                         "starting with a letter or digit")
    return name


def _paths(name: str) -> tuple[Path, Path]:
    folder = profiles_dir()
    return folder / f"{check_name(name)}.safetensors", folder / f"{name}.json"


def profile_exists(name: str) -> bool:
    try:
        arrays, meta = _paths(name)
    except InputError:
        return False
    return arrays.is_file() and meta.is_file()


def fingerprint(estimator: EmotionEstimator) -> str:
    digest = hashlib.sha256()
    # everything fit_profile reads (the person head is scaled by the mature temperature)
    for array in (estimator.prior_mean, estimator.weights, estimator.bias,
                  estimator.class_offsets, estimator.feature_scale, estimator.temperatures):
        digest.update(np.ascontiguousarray(array, np.float32).tobytes())
    digest.update(json.dumps(list(estimator.labels)).encode())
    return digest.hexdigest()[:16]


def _read(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    arrays_path, meta_path = _paths(name)
    if not (arrays_path.is_file() and meta_path.is_file()):
        raise InputError(f"no profile named {name!r} in {profiles_dir()} "
                         "(streamav profiles list)")
    try:
        meta = json.loads(meta_path.read_text())
        arrays = load_file(str(arrays_path))
        missing = [key for i in range(len(meta["clips"]))
                   for key in (f"clip{i}.features", f"clip{i}.face_found") if key not in arrays]
        if missing:
            raise KeyError(f"missing arrays {missing[:2]}")
    except Exception as exc:  # noqa: BLE001 - any damage (safetensors' own error included)
        raise InputError(f"profile {name!r} cannot be read ({meta_path}): "
                         f"{type(exc).__name__}: {exc}") from None
    return meta, arrays


def _examples(meta: dict, arrays: dict[str, np.ndarray]) -> list[ClipFrames]:
    return [ClipFrames(clip["source"], meta["name"], clip["label"], float(clip["fps"]),
                       arrays[f"clip{i}.features"].astype(np.float64),
                       arrays[f"clip{i}.face_found"].astype(bool))
            for i, clip in enumerate(meta["clips"])]


def _write(name: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    arrays_path, meta_path = _paths(name)
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((arrays_path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()})),
                       (meta_path, (json.dumps(meta, indent=1) + "\n").encode())):
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)


def _fitted_arrays(profile: Profile) -> dict[str, np.ndarray]:
    arrays = {"profile.baseline": profile.baseline.astype(np.float32)}
    if profile.weights is not None:
        arrays["profile.weights"] = profile.weights.astype(np.float32)
        arrays["profile.bias"] = profile.bias.astype(np.float32)
    return arrays


def add_examples(name: str, estimator: EmotionEstimator, clips: Sequence[ClipFrames],
                 sources: Sequence[str]) -> dict:
    """Append labelled clips to the profile `name` (created if new), refit, write it back.
    Returns its JSON description."""
    check_name(name)
    for clip in clips:
        if clip.label not in estimator.labels:
            raise InputError(f"unknown label {clip.label!r}: use one of "
                             f"{', '.join(estimator.labels)}")
        if not clip.face_found.any():
            raise InputError(f"{clip.clip_id}: no face found in it; nothing was added")
    if profile_exists(name):
        meta, arrays = _read(name)
        if tuple(meta["groups"]) != tuple(estimator.settings.groups):
            raise InputError(f"profile {name!r} holds {meta['groups']} features, this model's "
                             f"estimator reads {list(estimator.settings.groups)}: remove it or "
                             "use another name")
        arrays = {k: v for k, v in arrays.items() if k.startswith("clip")}
    else:
        meta = {"format_version": 1, "name": name, "groups": list(estimator.settings.groups),
                "created_unix_s": time.time(), "clips": []}
        arrays = {}
    for clip, source in zip(clips, sources):
        i = len(meta["clips"])
        arrays[f"clip{i}.features"] = clip.features.astype(np.float32)
        arrays[f"clip{i}.face_found"] = clip.face_found.astype(np.uint8)
        meta["clips"].append({"label": clip.label, "fps": clip.fps, "source": source,
                              "frames": int(len(clip.features)),
                              "face_frames": int(clip.face_found.sum())})
    profile = fit_profile(estimator, name, _examples(meta, arrays))
    arrays.update(_fitted_arrays(profile))
    meta.update(updated_unix_s=time.time(), estimator=fingerprint(estimator),
                labels=list(profile.labels_seen), person_head=profile.weights is not None,
                person_head_l2=profile.head_l2,
                population_accuracy=profile.population_accuracy)
    _write(name, meta, arrays)
    return meta


def load_profile(name: str, estimator: EmotionEstimator) -> Profile:
    meta, arrays = _read(name)
    if tuple(meta["groups"]) != tuple(estimator.settings.groups):
        raise InputError(f"profile {name!r} holds {meta['groups']} features; this model reads "
                         f"{list(estimator.settings.groups)}: calibrate it again")
    if meta.get("estimator") != fingerprint(estimator) or "profile.baseline" not in arrays:
        return fit_profile(estimator, name, _examples(meta, arrays))  # fitted for another model
    head = "profile.weights" in arrays
    return Profile(name, arrays["profile.baseline"].astype(np.float64),
                   arrays["profile.weights"].astype(np.float64) if head else None,
                   arrays["profile.bias"].astype(np.float64) if head else None,
                   tuple(meta.get("labels", ())), tuple(meta["groups"]))


def list_profiles() -> list[dict]:
    """Every profile's description (unreadable ones say so in `error`)."""
    folder = profiles_dir()
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            meta = json.loads(path.read_text())
            labels: dict[str, int] = {}
            for clip in meta["clips"]:
                labels[clip["label"]] = labels.get(clip["label"], 0) + 1
            out.append({"name": meta["name"], "clips": labels,
                        "updated_unix_s": meta.get("updated_unix_s")})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append({"name": path.stem, "error": f"{type(exc).__name__}: {exc}"})
    return out


def remove_profile(name: str) -> None:
    arrays_path, meta_path = _paths(name)
    if not (arrays_path.exists() or meta_path.exists()):
        raise InputError(f"no profile named {name!r} in {profiles_dir()}")
    for path in (arrays_path, meta_path):
        path.unlink(missing_ok=True)
