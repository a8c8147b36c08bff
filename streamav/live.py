"""Assembles a live run from its config: sources, face front end, publisher, control, preview,
and what it leaves behind (the status line, --csv, --write-video, the demo's strip and summary).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from streamav import __version__
from streamav.config import LiveConfig, check_output_paths, load_config
from streamav.errors import InputError, SourceError
from streamav.frontend.corruption import parse_corruption
from streamav.frontend.face import FaceFrontEnd
from streamav.model.inputs import check_frontend
from streamav.model_runner import TORCH_HINT, runnable_without_torch
from streamav.model_stage import ModelStage, default_model_folder
from streamav.offline_features import OfflineInputs
from streamav.frontend.features import FeatureRecorder, save_features
from streamav.pipeline import LivePipeline, RunSummary
from streamav.preview import PreviewWindow, display_available
from streamav.run_outputs import (CsvOutput, DenoisedStrip, EmotionTally, FrameFanout,
                                  VideoOutput, demo_strip_path)
from streamav.sources.factory import build_sources
from streamav.status_line import StatusLine, wanted as status_line_wanted
from streamav.stop_signals import StopSignals, stop_on_signals
from streamav.wire.control import ControlServer
from streamav.wire.publisher import Publisher

log = logging.getLogger(__name__)


def _preview(config: LiveConfig) -> tuple[PreviewWindow | None, str]:
    """The window, or None and why not ("" when --no-preview asked for none)."""
    wanted = config.run.preview
    if wanted is False:
        return None, ""
    available, why = display_available()
    if not available:
        return None, why
    return PreviewWindow(), ""


def _control(config: LiveConfig) -> ControlServer | None:
    endpoint = config.publish.control_endpoint
    if endpoint is None or endpoint.lower() == "none":
        return None
    key = config.publish.curve_secret_key_file
    return ControlServer(endpoint, curve_secret_key_file=Path(key) if key else None,
                         curve_client_keys=config.publish.curve_client_keys)


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
    # the model's input contract (streamav.model.inputs) against this run's front end
    check_frontend(config.face.crop_size_px, config.spectrum.sample_rate_hz,
                   config.spectrum.n_fft)
    section = config.model
    return ModelStage(folder, noise=noise, engine=section.engine, threads=section.threads,
                      engine_dir=Path(section.engine_dir) if section.engine_dir else None,
                      engine_inputs=OfflineInputs(), profile=section.profile)


def build_pipeline(config: LiveConfig, on_frame=None,
                   on_started: Callable[[], None] | None = None) -> LivePipeline:
    """The run's pipeline. A missing display is announced once capture has started (a device
    or endpoint that fails first is then the only line)."""
    pub = config.publish
    publisher = Publisher(
        endpoint=pub.endpoint, stream_id=pub.stream_id, queue_size=pub.queue_size,
        send_hwm=pub.send_hwm,
        curve_secret_key_file=Path(pub.curve_secret_key_file) if pub.curve_secret_key_file else None,
        curve_client_keys=pub.curve_client_keys,
    )
    preview, no_preview_because = _preview(config)

    def started() -> None:
        if no_preview_because:
            log.warning("%s: running without preview", no_preview_because)
        if on_started is not None:
            on_started()

    return LivePipeline(config, build_sources(config), FaceFrontEnd(config.face), publisher,
                        preview=preview, control=_control(config), model=_model(config),
                        on_frame=on_frame, on_started=started)


def check_inputs(config: LiveConfig) -> None:
    """What can be checked before anything is opened, bound or built: output paths, key files."""
    check_output_paths(config)
    key = config.publish.curve_secret_key_file
    if key is not None and not Path(key).is_file():
        raise InputError(f"--curve-secret-key {key}: no such file")
    if key is not None:  # the client allow-list: exit 4 now rather than once the model is built
        from streamav.wire.auth import resolve_allow_list

        resolve_allow_list(Path(key), config.publish.curve_client_keys)
    if config.model.profile is not None:
        from streamav.emotion.profiles import check_name, profile_exists

        if not profile_exists(check_name(config.model.profile)):
            raise InputError(f"--profile {config.model.profile}: no such profile "
                             "(streamav profiles list; make one with streamav calibrate)")
    if config.run.record:
        from streamav.recording import check_record_folder

        check_record_folder(Path(config.run.record))
    if config.run.lsl:
        if not config.model.enabled:
            raise InputError("--lsl streams the model's emotion: leave out --no-model")
        from streamav.lsl_outlet import import_pylsl

        import_pylsl()  # not installed: exit 2 with the install hint, before any build


@dataclass(frozen=True)
class LiveOutcome:
    """What `run_live` gives the CLI: the run's summary, its emotion summary (None when no
    model ran) and the lines to print before the final one (timeline, files written)."""

    summary: RunSummary
    emotion: str | None
    notes: tuple[str, ...]


class RunOutputs:
    """The per-frame consumers of one run: emotion tally, --csv, --write-video, --record,
    --lsl, the demo's strip. `started()` once capture runs; `finish(summary)` closes them once
    the run is over; `abandon()` after a failed run."""

    def __init__(self, config: LiveConfig, pipeline: LivePipeline, demo: bool) -> None:
        self.pipeline = pipeline
        self.demo = demo
        self.tally = EmotionTally() if pipeline.model is not None else None
        self.strip = DenoisedStrip() if demo and pipeline.model is not None else None
        self.csv = None
        if config.run.csv:
            self.csv = CsvOutput(Path(config.run.csv),
                                 labels=lambda: tuple(getattr(pipeline.model, "labels", ())))
        self.video = None
        if config.run.write_video:
            fps = next((s.video_fps for s in pipeline.sources
                        if getattr(s, "video_fps", None)), config.camera.fps)
            self.video = VideoOutput(Path(config.run.write_video), self._panel_numbers,
                                     fps_hint=fps)
        self.record = None
        if config.run.record:
            from streamav.recording import Recording

            self.record = Recording(Path(config.run.record), config)
            self.record.attach(pipeline)
        self.lsl = None
        if config.run.lsl and pipeline.model is not None:
            from streamav.lsl_outlet import LslOutlet

            self.lsl = LslOutlet(
                getattr(pipeline.publisher, "stream_id", None) or "streamav",
                labels=lambda: tuple(getattr(pipeline.model, "labels", ())),
                model_engine=lambda: getattr(pipeline.model, "engine_label", None))
        elif config.run.lsl:
            log.warning("--lsl: no model runs, so there is no emotion to stream")
        self.consumers = [c for c in (self.tally, self.strip, self.csv, self.video, self.record,
                                      self.lsl) if c is not None]

    def started(self) -> None:
        """Capture runs: the recording's first manifest, the LSL outlets."""
        if self.record is not None:
            self.record.started()
        if self.lsl is not None:
            self.lsl.open()

    def _panel_numbers(self) -> tuple[float | None, float | None]:
        numbers = self.pipeline.run_numbers()
        return numbers.fps, numbers.face_latency_ms

    def abandon(self) -> None:
        """The run failed: stop the encoder and close what was opened, quietly."""
        for output in (self.csv, self.video):
            if output is not None:
                try:
                    output.close(complete=False)
                except Exception:  # noqa: BLE001 - the run's own error is the one reported
                    log.info("closing %s after a failed run:", output.path, exc_info=True)
        if self.record is not None:
            try:
                self.record.abandon()
            except Exception:  # noqa: BLE001
                log.info("closing the recording after a failed run:", exc_info=True)
        if self.lsl is not None:
            self.lsl.close()

    def finish(self, summary: RunSummary | None = None) -> tuple[list[str], list[str]]:
        """(notes to print, failures `--flag path: reason`) once the run is over."""
        notes, failed = [], []
        if self.record is not None:
            try:
                notes.append(self.record.close(
                    summary.stop_reason if summary else "end of the run",
                    summary.final_stats if summary else None))
            except OSError as exc:
                failed.append(f"--record {self.record.folder}: "
                              f"{getattr(exc, 'strerror', None) or exc}")
        if self.lsl is not None:
            notes.append(self.lsl.note())
            self.lsl.close()
        for flag, output, unit in (("--csv", self.csv, "rows"),
                                   ("--write-video", self.video, "frames")):
            if output is None:
                continue
            try:
                output.close()
            except (OSError, RuntimeError, ValueError) as exc:
                failed.append(f"{flag} {output.path}: {getattr(exc, 'strerror', None) or exc}")
                continue
            count = output.rows if unit == "rows" else output.frames
            if unit == "frames" and count == 0:
                continue  # no file: close() said so
            notes.append(f"wrote {output.path} ({count} {unit})")
        if self.demo and self.tally is not None:
            notes.insert(0, "emotion per second: " + self.tally.timeline())
        if self.strip is not None:
            try:
                path = self.strip.write(demo_strip_path())
            except OSError as exc:
                notes.append(f"denoised strip not written: {exc.strerror or exc}")
            else:
                if path is not None:
                    notes.append(f"denoised strip ({min(len(self.strip.pairs), self.strip.columns)}"
                                 f" frames; input crops above, denoised below): {path}")
        elif self.demo and self.pipeline.model is None:
            notes.append("no denoised strip: the model did not run")
        return notes, failed


def run_live(config_path: Path | None, overrides: dict[str, Any],
             signals: StopSignals | None = None, demo: bool = False) -> LiveOutcome:
    """One `streamav live` run. SIGINT, SIGTERM and SIGHUP end it cleanly once capture has
    started (final stats, outputs written, exit 0); before that they abort the set-up
    (KeyboardInterrupt). `signals`: the caller's `stop_on_signals` (the CLI installs it before
    its imports); without it, this run installs its own. `demo`: add the emotion timeline and
    write the denoised strip (`--demo`)."""
    if signals is None:
        with stop_on_signals(afterwards="ignore") as own:  # the CLI exits right after
            return run_live(config_path, overrides, own, demo)
    config = load_config(config_path, overrides)
    check_inputs(config)
    recorder = None
    if config.run.save_features:
        recorder = FeatureRecorder(config.face.crop_size_px, config.spectrum.n_bins)
    fanout = FrameFanout([recorder])
    status: StatusLine | None = None
    outputs: RunOutputs | None = None

    def started() -> None:  # capture runs: the status line from now on
        if outputs is not None:
            outputs.started()
        if status is not None:
            try:
                status.start()
            except Exception as exc:  # noqa: BLE001 - a terminal rich cannot drive: no line
                log.info("no status line: %s", exc)

    pipeline = signals.pipeline = build_pipeline(config, on_frame=fanout, on_started=started)
    outputs = RunOutputs(config, pipeline, demo)
    fanout.consumers += outputs.consumers
    if status_line_wanted():
        status = StatusLine(pipeline)
        pipeline.on_stats = status.on_stats
    finished = False
    fault: SourceError | None = None
    try:
        try:
            summary = pipeline.run()
        except SourceError as exc:  # a source died: the run stopped in order, keep its outputs
            if pipeline.summary is None:
                raise
            summary, fault = pipeline.summary, exc
        finished = True
    finally:
        if status is not None:
            status.stop()
        if not finished:
            outputs.abandon()
    notes, failed = outputs.finish(summary)
    _write_outputs(config, summary, recorder, failed)
    if fault is not None:  # its one error line and exit code, once the outputs are written
        raise fault
    emotion = None if outputs.tally is None else outputs.tally.summary()
    return LiveOutcome(summary, emotion, tuple(notes))


def _write_outputs(config: LiveConfig, summary: RunSummary, recorder,
                   failed: list[str] | None = None) -> None:
    """Each output of the run, the second even when the first fails (a disk that filled up
    during the run); a failure is one InputError line once all were tried (`failed`: those
    of the outputs written during the run, --csv and --write-video)."""
    failed = list(failed or ())
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
