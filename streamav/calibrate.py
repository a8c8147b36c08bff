"""`streamav calibrate`: a person's labelled examples from a clip or a camera, into a profile.

The examples are the live front end's own per-frame features (the pipeline run offline over a
clip, or live over a camera for --seconds), turned into the emotion estimator's features; the
profile (streamav.emotion.profiles) keeps them and is refitted each time examples are added.
Nothing is written unless every clip given has a face and a known label.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from streamav.emotion.estimator import EmotionEstimator
from streamav.emotion.features import frame_features
from streamav.emotion.fit import ClipFrames
from streamav.errors import InputError


def _estimator(model_folder: Path | None) -> EmotionEstimator:
    from streamav.model_stage import default_model_folder

    folder = Path(model_folder) if model_folder is not None else default_model_folder()
    if not folder.is_dir():
        raise InputError(f"--model {folder}: the model folder does not exist")
    estimator = EmotionEstimator.load(folder)
    if "w" in estimator.settings.groups:
        raise InputError("this model's emotion estimator reads w; calibrate supports "
                         "estimators of face geometry and prosody only")
    return estimator


def clip_examples(features, estimator: EmotionEstimator, label: str, source: str,
                  start_s: float = 0.0, end_s: float | None = None) -> ClipFrames:
    """ClipFeatures of a run → the estimator's ClipFrames for frames in [start_s, end_s)."""
    pts = np.asarray(features.pts_s, np.float64)
    if np.isnan(pts).all():  # a live device: frame times from the first frame
        pts = np.arange(len(pts)) / 30.0
    keep = (pts >= start_s) & (pts < (np.inf if end_s is None else end_s))
    if not keep.any():
        raise InputError(f"{source}: no frame between {start_s:g} s and "
                         f"{'the end' if end_s is None else f'{end_s:g} s'}")
    fps = float(1.0 / np.median(np.diff(pts))) if len(pts) > 1 else 30.0
    mesh = np.nan_to_num(features.mesh_crop_xy[keep])
    values = frame_features(estimator.settings.groups, mesh_crop_xy=mesh,
                            spectrum=features.spectrum[keep], w=None)
    found = np.asarray(features.face_found[keep], bool)
    if not found.any():
        raise InputError(f"{source}: no face found in it; the profile was not changed")
    return ClipFrames(source, "", label, fps, values.astype(np.float64), found)


def _camera_features(camera: str, seconds: float):
    from streamav.config import load_config
    from streamav.frontend.face import FaceFrontEnd
    from streamav.frontend.features import FeatureRecorder
    from streamav.pipeline import LivePipeline, NullPublisher
    from streamav.sources.factory import build_sources

    config = load_config(None, {"source.camera": camera, "run.duration_s": seconds,
                                "run.preview": False, "publish.control_endpoint": "none"})
    recorder = FeatureRecorder(config.face.crop_size_px, config.spectrum.n_bins)
    LivePipeline(config, build_sources(config), FaceFrontEnd(config.face), NullPublisher(),
                 on_frame=recorder).run()
    return recorder.features()


def run_calibrate(profile: str, label: str | None, *, video: Path | None = None,
                  camera: str | None = None, seconds: float = 5.0, start_s: float = 0.0,
                  end_s: float | None = None, model_folder: Path | None = None,
                  no_audio: bool = False) -> dict:
    """Add the examples to `profile` and refit it; returns the profile's description."""
    from streamav.emotion.profiles import add_examples, check_name

    check_name(profile)
    if (video is None) == (camera is None):
        raise InputError("give one of --video PATH or --camera I")
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError(f"--seconds must be a positive number, got {seconds}")
    if not (math.isfinite(start_s) and start_s >= 0):
        raise InputError(f"--start must be a number of seconds >= 0, got {start_s}")
    if end_s is not None and not (math.isfinite(end_s) and end_s > start_s):
        raise InputError(f"--end must be a number of seconds after --start ({start_s:g}), "
                         f"got {end_s}")
    estimator = _estimator(model_folder)
    if label is not None and label not in estimator.labels:
        raise InputError(f"unknown label {label!r}: use one of {', '.join(estimator.labels)}")
    if video is not None:
        if label is None:
            raise InputError("--video needs --label (the emotion the clip shows)")
        if not Path(video).is_file():
            raise InputError(f"--video {video}: no such file")
        from streamav.offline_features import extract_clip_features

        features = extract_clip_features(video, no_audio=no_audio)
        clip = clip_examples(features, estimator, label, str(video), start_s, end_s)
        return add_examples(profile, estimator, [clip], [str(video)])
    labels = [label] if label is not None else list(estimator.labels)
    clips, sources = [], []
    for name in labels:  # guided: each label in turn
        if label is None:
            input(f"Next: {name}. Press Enter, then show it for {seconds:g} s ... ")
        features = _camera_features(camera, seconds)
        clips.append(clip_examples(features, estimator, name, f"camera {camera}"))
        sources.append(f"camera {camera} ({name})")
    return add_examples(profile, estimator, clips, sources)
