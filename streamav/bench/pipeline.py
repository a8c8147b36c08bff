"""The live-path benchmark: `streamav live` on files, every stage's latency, per backend.

Each clip runs through the same pipeline `streamav live --video CLIP` builds (decode, ring,
face front end, spectrum, model stage on the chosen backend, publisher on a free loopback port,
no preview, no control socket), in one or both modes:

- offline (`--no-realtime`): every frame as fast as possible: throughput and stage latencies
  with nothing dropped (deterministic);
- realtime: the file plays at its own speed like a camera: dropped frames and capture-to-publish
  latency under a live load.

The per-stage histograms of every run are merged (run_stats.STAGES: decode, queue, face,
spectrum, model, publish, capture_to_publish). `scripts/bench_frontend.py` uses `run_once`.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamav.engines.choice import EngineChoice
from streamav.errors import InputError

MODES = ("offline", "realtime")


@dataclass(frozen=True)
class PipelineSettings:
    clips: tuple[Path, ...]
    backends: tuple[EngineChoice, ...] = ()  # () → auto: what `streamav live` runs by default
    device: str = "cpu"
    repeat: int = 1
    modes: tuple[str, ...] = MODES
    threads: int = 0  # 0: the live default (config model.threads)
    model_folder: Path | None = None
    engine_dir: Path | None = None
    extra_overrides: dict = field(default_factory=dict)


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def resolve_clips(video: Path | None, demo: bool) -> tuple[Path, ...]:
    """--video FILE, --video FOLDER (every video in it), else the bundled demo clip."""
    from streamav.data import demo_clip_path

    if video is None or demo:
        if video is not None:
            raise InputError("--demo plays the bundled clip: leave out --video")
        return (demo_clip_path(),)
    video = Path(video)
    if video.is_dir():
        from streamav.offline_features import recordings_in

        clips = tuple(recordings_in(video))
        if not clips:
            raise InputError(f"--video {video}: no video file (.flv, .mp4, ...) in this folder")
        return clips
    if not video.is_file():
        raise InputError(f"--video {video}: no such file or folder")
    return (video,)


def run_once(clip: Path, realtime: bool, overrides: dict | None = None):
    """One `streamav live` run on `clip`: (final stats, the run's StageLatencies, engine label
    or None when no model ran)."""
    from streamav.config import load_config
    from streamav.live import build_pipeline

    config = load_config(None, {
        "source.video": str(clip), "run.realtime": realtime, "run.preview": False,
        "publish.endpoint": free_endpoint(), "publish.control_endpoint": "none",
        **(overrides or {}),
    })
    pipeline = build_pipeline(config)
    summary = pipeline.run()
    model = pipeline.model
    return summary.final_stats, pipeline.stats.latency, getattr(model, "engine_label", None)


def stage_summary(hist) -> dict:
    """p50/p90/p99/max (ms, to within 1%: the live path's log histograms) and the count."""
    if hist.count == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None, "count": 0}
    _, count, max_ns = hist.snapshot()
    return {"p50": round(hist.percentile_ms(50), 4), "p90": round(hist.percentile_ms(90), 4),
            "p99": round(hist.percentile_ms(99), 4), "max": round(max_ns / 1e6, 4),
            "count": int(count)}


def plan(settings: PipelineSettings) -> list[tuple[EngineChoice, str]]:
    """(engine choice, why) per backend asked; named ones are checked here, `auto` is resolved
    by the live model stage itself (with its fallbacks) and reported from the engine it
    opened."""
    from streamav.bench.step import check_backend_here

    planned: list[tuple[EngineChoice, str]] = []
    for choice in settings.backends or (EngineChoice(device=settings.device),):
        if choice.device != settings.device or choice.batch != 1:
            raise InputError(f"{choice.label}: the live path runs one stream on --device "
                             f"{settings.device}")
        if not choice.is_auto:
            check_backend_here(choice)
        if choice not in [p[0] for p in planned]:
            planned.append((choice, "asked for" if settings.backends else "the live default"))
    return planned


def run_pipeline_bench(settings: PipelineSettings, console, progress: bool = True) -> dict:
    from streamav.bench.machine import envelope, load_average, model_info
    from streamav.bench.step import _progress, check_device
    from streamav.latency import StageLatencies
    from streamav.data import default_model_folder
    from streamav.model.io import load_model
    from streamav.run_stats import STAGES

    if settings.repeat < 1:
        raise InputError(f"--repeat must be at least 1, got {settings.repeat}")
    if settings.threads < 0:
        raise InputError(f"--threads must be 0 (the live default) or more, got {settings.threads}")
    load_start = load_average()
    check_device(settings.device)
    planned = plan(settings)
    folder = Path(settings.model_folder) if settings.model_folder else default_model_folder()
    model = load_model(folder)
    overrides = {"model.folder": str(folder),
                 **({"model.threads": settings.threads} if settings.threads else {}),
                 **({"model.engine_dir": str(settings.engine_dir)} if settings.engine_dir
                    else {}),
                 **settings.extra_overrides}
    results = []
    runs_total = len(planned) * len(settings.modes) * settings.repeat * len(settings.clips)
    with _progress(console, progress) as bar:
        task = bar.add_task(f"{runs_total} live runs", total=runs_total)
        for choice, why in planned:
            backend = choice.name
            entry: dict = {"backend": backend, "why": why, "engine": None, "modes": {}}
            for mode in settings.modes:
                total = StageLatencies(STAGES)
                frames = dropped = faces = 0
                busy_s = elapsed_s = 0.0
                runs = []
                for _ in range(settings.repeat):
                    for clip in settings.clips:
                        bar.update(task, description=f"{backend} {mode} {clip.name}")
                        started = time.perf_counter()
                        final, latency, label = run_once(
                            clip, realtime=(mode == "realtime"),
                            overrides={**overrides, "model.backend": choice.backend,
                                       "model.device": choice.device,
                                       "model.precision": choice.precision})
                        busy_s += time.perf_counter() - started
                        entry["engine"] = label or entry["engine"]
                        for stage in STAGES:
                            total.total[stage].merge(latency.total[stage])
                        frames += final["frames"]
                        dropped += final["dropped_frames"]
                        faces += final["faces_found"]
                        elapsed_s += final["elapsed_s"]
                        runs.append({"clip": clip.name, "frames": final["frames"],
                                     "fps": round(final["fps"], 3),
                                     "dropped_frames": final["dropped_frames"]})
                        bar.advance(task)
                entry["modes"][mode] = {
                    "clips": len(settings.clips), "repeat": settings.repeat, "runs": runs,
                    "frames": frames, "dropped_frames": dropped, "faces_found": faces,
                    "fps": round(frames / elapsed_s, 3) if elapsed_s > 0 else None,
                    "fps_including_startup": round(frames / busy_s, 3) if busy_s > 0 else None,
                    "fps_per_run_median": round(statistics.median(r["fps"] for r in runs), 3),
                    "latency_ms": {stage: stage_summary(total.total[stage]) for stage in STAGES},
                }
            results.append(entry)
    settings_doc = {"device": settings.device, "modes": list(settings.modes),
                    "clips": [str(c) for c in settings.clips], "repeat": settings.repeat,
                    "threads": settings.threads or None,
                    "asked_backends": [c.name for c in settings.backends]}
    document = envelope("pipeline", load_start, model_info(folder, model), settings_doc)
    document["backends"] = results
    return document
