"""`streamav bench` and `streamav bench --pipeline`: options checked, benchmark run, results
printed and written."""

from __future__ import annotations

from pathlib import Path

from streamav.engines.choice import EngineChoice
from streamav.errors import InputError


def run(*, backend: str | None, device: str, batch: int, frames: int, warmup: int,
        json_out: Path | None, plot: Path | None, model: Path | None, engine_dir: Path | None,
        threads: int, pipeline: bool, video: Path | None, demo: bool, repeat: int,
        realtime: bool | None, progress: bool = True) -> dict:
    from rich.console import Console

    from streamav.bench import report
    from streamav.bench.step import parse_backends

    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:  # a pipe or a file: don't squeeze the tables into 80 columns
        out = Console(width=max(out.width, 120))
    streams = 1 if pipeline else batch  # the live path steps one stream
    EngineChoice(device=device, batch=streams)  # the device and the batch, by themselves
    backends = parse_backends(backend, device, streams)  # one EngineChoice each, checked now
    if pipeline:
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
