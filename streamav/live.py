"""Assembles a live run from its config: sources, face front end, publisher, control, preview."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

from streamav import __version__
from streamav.config import LiveConfig, check_output_paths, load_config
from streamav.errors import InputError
from streamav.frontend.corruption import parse_corruption
from streamav.frontend.face import FaceFrontEnd
from streamav.model.inputs import SPECTRUM_BINS
from streamav.model_runner import TORCH_HINT, runnable_without_torch
from streamav.model_stage import EngineOptions, ModelStage, default_model_folder
from streamav.frontend.features import FeatureRecorder, save_features
from streamav.pipeline import LivePipeline, RunSummary
from streamav.preview import PreviewWindow, display_available
from streamav.sources.factory import build_sources
from streamav.stop_signals import StopSignals, stop_on_signals
from streamav.wire.control import ControlServer
from streamav.wire.publisher import Publisher

log = logging.getLogger(__name__)


def _preview(config: LiveConfig) -> PreviewWindow | None:
    wanted = config.run.preview
    if wanted is False:
        return None
    available, why = display_available()
    if not available:
        log.warning("%s: running without preview", why)
        return None
    return PreviewWindow()


def _control(config: LiveConfig) -> ControlServer | None:
    endpoint = config.publish.control_endpoint
    if endpoint is None or endpoint.lower() == "none":
        return None
    key = config.publish.curve_secret_key_file
    return ControlServer(endpoint, curve_secret_key_file=Path(key) if key else None)


def _model(config: LiveConfig) -> ModelStage | None:
    section = config.model
    noise = parse_corruption(section.noise) if section.noise else None
    if not section.enabled:
        return None
    if section.folder is not None:
        folder = Path(section.folder)
        if not folder.exists():
            raise InputError(f"--model {folder}: the model folder does not exist")
        if not (folder / "config.json").is_file():
            raise InputError(f"--model {folder}: not a model folder, it is incomplete (no "
                             "config.json in it; make one with `streamav train`)")
        return _model_stage(config, folder, noise)
    folder = default_model_folder()
    if not (folder / "config.json").is_file():
        log.warning("no model shipped with this install: front end only (train one with "
                    "`streamav train` and pass --model DIR)")
        return None
    if importlib.util.find_spec("torch") is None:  # the shipped model was not asked for by name
        usable, why = runnable_without_torch(folder)
        if not usable:
            log.warning("front end only: the shipped step.onnx is not usable (%s) and the "
                        "model needs PyTorch otherwise: %s", why, TORCH_HINT)
            return None
    return _model_stage(config, folder, noise)


def _model_stage(config: LiveConfig, folder: Path, noise) -> ModelStage:
    if config.spectrum.n_bins != SPECTRUM_BINS:
        raise InputError(f"the model reads {SPECTRUM_BINS}-bin spectra ([spectrum] "
                         f"n_fft = 1024), not {config.spectrum.n_bins}: keep n_fft or use "
                         "--no-model")
    return ModelStage(folder, noise=noise, engine=_engine_options(config.model),
                      profile=config.model.profile)


def _engine_options(section) -> EngineOptions:
    return EngineOptions(backend=section.backend, device=section.device,
                         precision=section.precision, threads=section.threads,
                         engine_dir=Path(section.engine_dir) if section.engine_dir else None)


def build_pipeline(config: LiveConfig, on_frame=None) -> LivePipeline:
    pub = config.publish
    publisher = Publisher(
        endpoint=pub.endpoint, stream_id=pub.stream_id, queue_size=pub.queue_size,
        send_hwm=pub.send_hwm,
        curve_secret_key_file=Path(pub.curve_secret_key_file) if pub.curve_secret_key_file else None,
    )
    preview = _preview(config)
    console_line = print_stats_line if preview is None and sys.stderr.isatty() else None
    return LivePipeline(config, build_sources(config), FaceFrontEnd(config.face), publisher,
                        preview=preview, control=_control(config), model=_model(config),
                        on_stats=console_line,
                        on_frame=on_frame)


def print_stats_line(stats: dict) -> None:
    """One line a second on a terminal when there is no preview window to look at."""
    if stats["final"]:
        return
    latency = stats["latency_ms"]["capture_to_publish"]["p50"]
    print(f"streamav: {stats['fps']:5.1f} fps  {stats['frames']:6d} frames  "
          f"face {stats['faces_found']:6d}  dropped {stats['dropped_frames']}  "
          f"capture→publish p50 {latency if latency is None else round(latency, 1)} ms",
          file=sys.stderr, flush=True)


def check_inputs(config: LiveConfig) -> None:
    """What can be checked before anything is opened, bound or built: output paths, key files."""
    check_output_paths(config)
    key = config.publish.curve_secret_key_file
    if key is not None and not Path(key).is_file():
        raise InputError(f"--curve-secret-key {key}: no such file")
    if config.model.profile is not None:
        from streamav.emotion.profiles import check_name, profile_exists

        if not profile_exists(check_name(config.model.profile)):
            raise InputError(f"--profile {config.model.profile}: no such profile "
                             "(streamav profiles list; make one with streamav calibrate)")


def run_live(config_path: Path | None, overrides: dict[str, Any],
             signals: StopSignals | None = None) -> RunSummary:
    """One `streamav live` run. SIGINT, SIGTERM and SIGHUP end it cleanly once capture has
    started (final stats, outputs written, exit 0); before that they abort the set-up
    (KeyboardInterrupt). `signals`: the caller's `stop_on_signals` (the CLI installs it before
    its imports); without it, this run installs its own."""
    if signals is None:
        with stop_on_signals(afterwards="ignore") as own:  # the CLI exits right after
            return run_live(config_path, overrides, own)
    config = load_config(config_path, overrides)
    check_inputs(config)
    recorder = None
    if config.run.save_features:
        recorder = FeatureRecorder(config.face.crop_size_px, config.spectrum.n_bins)
    pipeline = signals.pipeline = build_pipeline(config, on_frame=recorder)
    summary = pipeline.run()
    _write_outputs(config, summary, recorder)
    return summary


def _write_outputs(config: LiveConfig, summary: RunSummary, recorder) -> None:
    """Each output of the run, the second even when the first fails (a disk that filled up
    during the run); a failure is one InputError line once both were tried."""
    failed = []
    writes = []
    if recorder is not None:
        writes.append(("--save-features", config.run.save_features,
                       lambda path: save_features(path, recorder.features())))
    if config.run.stats_json:
        writes.append(("--stats-json", config.run.stats_json,
                       lambda path: write_stats_json(path, config, summary)))
    for flag, path, write in writes:
        try:
            write(Path(path))
        except OSError as exc:
            failed.append(f"{flag} {path}: {exc.strerror or exc}")
    if failed:
        raise InputError("the run ended but its output could not be written: "
                         + "; ".join(failed))


def write_stats_json(path: Path, config: LiveConfig, summary: RunSummary) -> None:
    """The final stats and the config as JSON (atomic: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"streamav_version": __version__, "stop_reason": summary.stop_reason,
                "stats": summary.final_stats, "config": dataclasses.asdict(config)}
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
