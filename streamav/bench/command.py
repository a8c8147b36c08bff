"""`streamav bench`, `streamav bench --pipeline` and `streamav bench --pipeline --streams N`:
options checked, benchmark run, results printed and written."""

from __future__ import annotations

from pathlib import Path

from streamav.engines.choice import EngineChoice
from streamav.errors import InputError


def run(*, backend: str | None, device: str, batch: int, frames: int, warmup: int,
        json_out: Path | None, plot: Path | None, model: Path | None, engine_dir: Path | None,
        threads: int, pipeline: bool, video: Path | None, demo: bool, repeat: int,
        realtime: bool | None, streams: str | None = None, seconds: float | None = None,
        progress: bool = True) -> dict:
    from rich.console import Console

    from streamav.bench import report
    from streamav.bench.step import parse_backends

    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:  # a pipe or a file: don't squeeze the tables into 80 columns
        out = Console(width=max(out.width, 120))
    if (streams is not None or seconds is not None) and not pipeline:
        raise InputError("--streams and --seconds are for --pipeline")
    rows = 1 if pipeline else batch  # the live path steps one stream
    EngineChoice(device=device, batch=rows)  # the device and the batch, by themselves
    backends = parse_backends(backend, device, rows)  # one EngineChoice each, checked now
    if pipeline and streams is not None:
        document = _streams(backends, device, batch, model, engine_dir, threads, video, demo,
                            repeat, realtime, plot, streams, seconds, err, progress)
        report.print_streams_table(document, out)
    elif pipeline:
        if seconds is not None:
            raise InputError("--seconds is the length of a --streams run: give --streams")
        from streamav.bench.pipeline import MODES, PipelineSettings, resolve_clips, \
            run_pipeline_bench

        if plot is not None:
            raise InputError("--plot draws the step benchmark's latencies: leave it out with "
                             "--pipeline")
        settings = PipelineSettings(
            clips=resolve_clips(video, demo), backends=backends, device=device, repeat=repeat,
            modes=MODES if realtime is None else ("realtime",) if realtime else ("offline",),
            threads=threads, model_folder=model, engine_dir=engine_dir)
        document = run_pipeline_bench(settings, err, progress=progress)
        report.print_pipeline_table(document, out)
    else:
        from streamav.bench.step import StepSettings, run_step_bench, validate

        if video is not None or demo or realtime is not None or repeat != 1:
            raise InputError("--video, --demo, --repeat and --realtime are for --pipeline")
        settings = StepSettings(backends=backends, device=device, batch=batch, frames=frames,
                                warmup=warmup, threads=threads, model_folder=model,
                                engine_dir=engine_dir)
        validate(settings)
        if plot is not None:
            report.check_plotting()
        document, step_ms = run_step_bench(settings, err, progress=progress)
        report.print_step_table(document, out)
        if plot is not None:
            report.plot_step(document, step_ms, plot)
            err.print(f"streamav bench: wrote {plot}")
    if json_out is not None:
        report.write_json(document, json_out)
        err.print(f"streamav bench: wrote {json_out}")
    return document


def _streams(backends, device, batch, model, engine_dir, threads, video, demo, repeat,
             realtime, plot, streams, seconds, err, progress) -> dict:
    """--pipeline --streams N|auto: its own options checked, then the runs."""
    from streamav.bench.pipeline import resolve_clips
    from streamav.bench.streams import (DEFAULT_SECONDS, StreamsSettings, parse_streams,
                                        run_streams_bench)

    n = parse_streams(streams)
    if realtime is False:
        raise InputError("--streams runs in real time (every clip at its own rate): leave out "
                         "--no-realtime")
    if plot is not None or repeat != 1 or batch != 1:
        raise InputError("--plot, --repeat and --batch are not for --streams (each N is one "
                         "run; the batch is N)")
    if len(backends) > 1:
        raise InputError("--streams runs one backend: give one --backend")
    settings = StreamsSettings(
        clips=resolve_clips(video, demo), streams=n,
        seconds=DEFAULT_SECONDS if seconds is None else seconds,
        backend=backends[0] if backends else EngineChoice(device=device), threads=threads,
        model_folder=model, engine_dir=engine_dir)
    return run_streams_bench(settings, err, progress=progress)
