#!/usr/bin/env python3
"""Benchmark the emotion estimator's per-frame cost (features + baseline + head), write JSON.

The estimator runs after the model step on every frame with a face (streamav/emotion/). This
times exactly what `ModelStage.step` adds for it: `frame_features` (geometry from the 468-point
mesh, prosody from the spectrum) and `EmotionStream.step`, on the real frames of the CREMA-D
clips (the live front end's own features, extracted once first), with and without a profile.

Usage: python scripts/bench_emotion.py [--model DIR] [--repeat N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from streamav import __version__
from streamav.emotion.estimator import EmotionEstimator, Profile
from streamav.emotion.features import frame_features
from streamav.offline_features import extract_clip_features

REPO = Path(__file__).resolve().parents[1]


def time_frames(estimator: EmotionEstimator, clips, profile: Profile | None, repeat: int
                ) -> np.ndarray:
    groups = estimator.settings.groups
    times_ns = []
    for _ in range(repeat):
        for features in clips:
            stream = estimator.stream(30.0, profile)
            for t in np.flatnonzero(features.face_found):
                t0 = time.perf_counter_ns()
                x = frame_features(groups, mesh_crop_xy=features.mesh_crop_xy[t],
                                   spectrum=features.spectrum[t], w=None)
                stream.step(x)
                times_ns.append(time.perf_counter_ns() - t0)
    return np.array(times_ns) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "streamav" / "data" / "model")
    parser.add_argument("--clips", type=Path, default=REPO.parent / "shared" / "data" / "crema-d")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    estimator = EmotionEstimator.load(args.model)
    paths = sorted(args.clips.glob("*.flv"))
    if not paths:
        parser.error(f"--clips {args.clips}: no .flv clips there (the CREMA-D clips of "
                     "../shared/data/crema-d)")
    clips = [extract_clip_features(path) for path in paths]
    load_before = os.getloadavg()
    plain = time_frames(estimator, clips, None, args.repeat)
    profile = Profile("bench", estimator.prior_mean.copy(),
                      np.zeros_like(estimator.weights), np.zeros_like(estimator.bias))
    profiled = time_frames(estimator, clips, profile, args.repeat)
    report = {
        "benchmark": "emotion-estimator", "streamav_version": __version__,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "load_average_1m": {"before": round(load_before[0], 2),
                            "after": round(os.getloadavg()[0], 2)},
        "frames": int(len(plain)),
        "per_frame_ms": {name: {"p50": round(float(np.percentile(t, 50)), 4),
                                "p99": round(float(np.percentile(t, 99)), 4)}
                         for name, t in (("no_profile", plain), ("profile", profiled))},
        "feature_dim": int(estimator.dim), "groups": list(estimator.settings.groups),
    }
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
