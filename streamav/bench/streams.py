"""`streamav bench --pipeline --streams N|auto`: many streams in one process, in real time.

N streams run through the many-stream worker of `streamav live` (streamav.multi_live: one
process, one publisher on a free loopback port, one batched model step with a state slot per
stream), each a clip played in real time at its own frame rate (the bundled demo clip: 29.97
fps) and looped for `--seconds`. Measured per stream: frames, fps, dropped frames (stale ones
included), capture-to-publish latency of its `face` messages and capture-to-emotion latency of
its `emotion` messages (p50, p99: each stream's own histograms); for the whole run: the
process's CPU time per frame (every thread: decoders, face trackers, the step, the publisher)
over the steady state (from the moment every stream has a frame to the last sample taken while
they all still run), and the load average (the machine may be shared: it is reported, not
controlled).

A run *holds* when every stream kept its clip's rate (fps >= FPS_SHARE of it), dropped nothing
and published its frames' results within P99_BOUND_MS at p99 (capture to `emotion` when a
model runs, else capture to `face`), and no stream failed or was refused.

`--streams auto` looks for the largest N that holds: N = 1, 2, 4, ... until one fails (or
AUTO_LIMIT), then a bisection between the last that held and the first that failed. Each N is
run once, so on a busy machine the answer can move by one; the JSON keeps every run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from streamav.engines.choice import EngineChoice
from streamav.errors import InputError

FPS_SHARE = 0.95  # a stream holds its clip's rate when it runs at >= 95% of it
P99_BOUND_MS = 50.0
AUTO_LIMIT = 64
DEFAULT_SECONDS = 10.0
_POLL_S = 0.05


@dataclass(frozen=True)
class StreamsSettings:
    clips: tuple[Path, ...]  # stream i plays clips[i % len(clips)]
    streams: int | None  # None: auto (the largest N that holds)
    seconds: float = DEFAULT_SECONDS
    backend: EngineChoice = EngineChoice()
    threads: int = 0  # 0: the live default (config model.threads)
    model_folder: Path | None = None
    engine_dir: Path | None = None
    limit: int = AUTO_LIMIT


def parse_streams(text: str) -> int | None:
    """'auto' → None; a whole number >= 1 → it; else InputError."""
    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise InputError(f"--streams must be a number of streams or 'auto', got {text!r}") \
            from None
    if n < 1:
        raise InputError(f"--streams must be at least 1, got {n}")
    return n


def validate(settings: StreamsSettings) -> None:
    if not settings.seconds > 0:
        raise InputError(f"--seconds must be more than 0, got {settings.seconds}")
    if settings.streams is not None and settings.streams > settings.limit:
        raise InputError(f"--streams {settings.streams}: at most {settings.limit} in one run")
    if settings.threads < 0:
        raise InputError(f"--threads must be 0 (the live default) or more, got {settings.threads}")
    if settings.backend.batch != 1:
        raise InputError("--streams sets the engine's batch (one row per stream): leave out "
                         "--batch")


def _overrides(settings: StreamsSettings, folder: Path) -> dict:
    choice = settings.backend
    return {"model.folder": str(folder), "model.backend": choice.backend,
            "model.device": choice.device, "model.precision": choice.precision,
            **({"model.threads": settings.threads} if settings.threads else {}),
            **({"model.engine_dir": str(settings.engine_dir)} if settings.engine_dir else {})}


def _percentiles(final: dict, stage: str) -> dict:
    p = (final.get("latency_ms") or {}).get(stage) or {}
    return {"p50": _round(p.get("p50")), "p99": _round(p.get("p99"))}


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def run_streams(n: int, settings: StreamsSettings, overrides: dict) -> dict:
    """N streams for `settings.seconds` each; the run's entry of the JSON document."""
    from streamav.bench.machine import load_average
    from streamav.bench.pipeline import free_endpoint, stage_summary
    from streamav.config import load_config
    from streamav.latency import LatencyHistogram
    from streamav.multi_live import MultiRun, StreamInput

    clips = settings.clips
    config = load_config(None, {
        **overrides, "source.video": str(clips[0]), "source.loop": True,
        "run.realtime": True, "run.preview": False, "run.duration_s": settings.seconds,
        "run.max_streams": n, "publish.endpoint": free_endpoint(),
        "publish.control_endpoint": "none"})
    inputs = [StreamInput(f"s{i}", video=str(clips[i % len(clips)])) for i in range(n)]
    load_start = load_average()
    run = MultiRun(config)
    started = time.perf_counter()
    steady = None  # (cpu s, frames, wall s) when every stream has a frame
    last = None  # the last such sample while every stream still ran
    try:
        run.start()  # the engine for n rows: built once per n, then cached
        for stream in inputs:
            run.add(stream)
        setup_s = time.perf_counter() - started
        pipelines = list(run.pipelines.values())
        while run.running:
            frames = [p.stats.frames for p in pipelines]
            sample = (time.process_time(), sum(frames), time.perf_counter())
            if len(frames) == n and not any(p.stopping for p in pipelines):
                if steady is None and min(frames) > 0:
                    steady = sample
                elif steady is not None:
                    last = sample
            time.sleep(_POLL_S)
        summaries = run.wait()
    finally:
        run.close()
    streams, emotion, face = [], LatencyHistogram(), LatencyHistogram()
    for stream in inputs:
        pipeline = run.pipelines.get(stream.stream_id)
        summary = summaries.get(stream.stream_id)
        final = summary.final_stats if summary is not None else {}
        source_fps = next((s.video_fps for s in pipeline.sources
                           if getattr(s, "video_fps", None)), None) if pipeline else None
        if pipeline is not None:
            face.merge(pipeline.stats.latency.total["capture_to_publish"])
            emotion.merge(pipeline.stats.latency.total["capture_to_emotion"])
        streams.append({
            "id": stream.stream_id, "clip": Path(stream.video).name,
            "source_fps": _round(source_fps), "frames": final.get("frames", 0),
            "fps": _round(final.get("fps")), "dropped_frames": final.get("dropped_frames"),
            "stale_dropped": final.get("stale_dropped"), "faces_found": final.get("faces_found"),
            "nonfinite_frames": final.get("nonfinite_frames"),
            "capture_to_publish_ms": _percentiles(final, "capture_to_publish"),
            "capture_to_emotion_ms": _percentiles(final, "capture_to_emotion"),
            "stop_reason": summary.stop_reason if summary is not None else None})
    cpu = None
    if steady is not None and last is not None and last[1] > steady[1]:
        cpu_s, frames, wall_s = (b - a for a, b in zip(steady, last))
        cpu = {"cpu_ms_per_frame": round(cpu_s * 1e3 / frames, 3),
               "cores_busy": round(cpu_s / wall_s, 3), "frames": int(frames),
               "seconds": round(wall_s, 3)}
    slots = run.slots
    entry = {"streams": n, "engine": None if slots is None else slots.label,
             "setup_s": round(setup_s, 3), "per_stream": streams,
             # engine calls, and stream-frames per call (n when every tick gathers every stream)
             "ticks": None if slots is None else slots.ticks,
             "rows_per_tick": (round(slots.rows_stepped / slots.ticks, 3)
                               if slots is not None and slots.ticks else None),
             "engine_calls_per_batch": None if slots is None else {
                 str(b): calls for b, calls in slots.calls_per_batch.items()},
             "refused": list(run.refused),
             "errors": {sid: str(e) for sid, e in run.errors.items()},
             "process_cpu": cpu,
             "capture_to_publish_ms": stage_summary(face),
             "capture_to_emotion_ms": stage_summary(emotion),
             "load_average_start": load_start, "load_average_end": load_average()}
    entry["holds"], entry["why_not"] = holds(entry)
    return entry


def holds(entry: dict) -> tuple[bool, list[str]]:
    """Whether a run held real time (see the module docstring), and what broke if not."""
    why = []
    if entry["errors"]:
        why.append(f"{len(entry['errors'])} streams failed")
    if entry["refused"]:
        why.append(f"{len(entry['refused'])} streams refused")
    for s in entry["per_stream"]:
        rate = s["source_fps"] or 30.0
        if s["fps"] is None or s["fps"] < FPS_SHARE * rate:
            why.append(f"{s['id']}: {s['fps']} fps < {FPS_SHARE:g} x {rate:g}")
        if s["dropped_frames"]:
            why.append(f"{s['id']}: {s['dropped_frames']} dropped")
        latency = s["capture_to_emotion_ms"]["p99"]
        if latency is None:  # no model ran on it: the face messages
            latency = s["capture_to_publish_ms"]["p99"]
        if latency is None or latency > P99_BOUND_MS:
            why.append(f"{s['id']}: p99 {latency} ms > {P99_BOUND_MS:g}")
    return not why, why


def search(settings: StreamsSettings, probe) -> tuple[int, list[dict]]:
    """(largest N that holds, 0 if none; every run in the order made). `probe(n)` runs n."""
    runs: list[dict] = []

    def ok(n: int) -> bool:
        runs.append(probe(n))
        return runs[-1]["holds"]

    if settings.streams is not None:
        n = settings.streams
        return (n if ok(n) else 0), runs
    held, failed, n = 0, None, 1
    while True:
        if not ok(n):
            failed = n
            break
        held = n
        if n >= settings.limit:
            break
        n = min(2 * n, settings.limit)
    while failed is not None and failed - held > 1:
        mid = (held + failed) // 2
        if ok(mid):
            held = mid
        else:
            failed = mid
    return held, runs


def run_streams_bench(settings: StreamsSettings, console, progress: bool = True) -> dict:
    from streamav.bench.machine import envelope, load_average, model_info
    from streamav.bench.step import check_backend_here, check_device
    from streamav.data import default_model_folder
    from streamav.model.io import load_model

    validate(settings)
    load_start = load_average()
    check_device(settings.backend.device)
    if not settings.backend.is_auto:
        check_backend_here(settings.backend)
    folder = Path(settings.model_folder) if settings.model_folder else default_model_folder()
    model = load_model(folder)
    overrides = _overrides(settings, folder)

    def probe(n: int) -> dict:
        console.print(f"streamav bench: {n} streams for {settings.seconds:g} s ...")
        entry = run_streams(n, settings, overrides)
        cpu = entry["process_cpu"] or {}
        console.print(
            f"streamav bench: {n} streams: {'holds' if entry['holds'] else 'does not hold'}"
            + (f" ({'; '.join(entry['why_not'][:3])})" if entry["why_not"] else "")
            + f", CPU {cpu.get('cpu_ms_per_frame', math.nan):.2f} ms/frame, load "
            f"{entry['load_average_end']}")
        return entry

    largest, runs = search(settings, probe)
    settings_doc = {"device": settings.backend.device, "backend": settings.backend.name,
                    "clips": [str(c) for c in settings.clips], "seconds": settings.seconds,
                    "asked_streams": settings.streams if settings.streams is not None
                    else "auto", "limit": settings.limit, "fps_share": FPS_SHARE,
                    "p99_bound_ms": P99_BOUND_MS, "threads": settings.threads or None,
                    "realtime": True, "loop": True}
    document = envelope("streams", load_start, model_info(folder, model), settings_doc)
    document["runs"] = runs
    document["largest_holding"] = largest
    return document
