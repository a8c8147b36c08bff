"""The `streamav` command line (typer): live, subscribe, devices, --version.

Every fatal error is a `StreamavError`: it is printed as one line on stderr
(`streamav: error: ...`) and the process exits with that error's exit code (streamav/errors.py);
no traceback. Heavy modules are imported inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from streamav import __version__
from streamav.data import demo_clip_path
from streamav.errors import InputError, StreamavError

app = typer.Typer(
    name="streamav",
    help="Real-time audiovisual analysis of a speaking person, published over ZeroMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _no_types_for_flags() -> None:
    """Typer (0.2x, its own help panel) prints a value type after every option, `<bool>` after
    flags such as --no-audio, --demo and --help, which take no value at all. Its plain-text
    help leaves flags bare; do the same in the rich panel (options with a value keep their
    `<int>`, `<path>`, ...). Older typers have no such column and are left alone."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - a typer without its own option class
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "streamav_flags_bare", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich.streamav_flags_bare = True
    TyperOption.display_type_rich = display_type_rich


_no_types_for_flags()

from streamav.corpus.cli import corpus_app  # noqa: E402  (the sub-app; its work loads lazily)

app.add_typer(corpus_app, name="corpus")

from streamav.keys_cli import keys as _keys  # noqa: E402  (imports its work when it runs)

app.command(name="keys")(_keys)

def _check_outputs(*files: tuple[Optional[Path], str], folders=()) -> None:
    """Refuse output paths that could not be written, before the work that would fill them."""
    from streamav.outputs import check_writable_file, check_writable_folder

    for path, flag in files:
        if path is not None:
            check_writable_file(path, flag)
    for path, flag in folders:
        if path is not None:
            check_writable_folder(path, flag)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"streamav {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more (INFO level)."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="streamav: %(message)s", stream=sys.stderr)


LIVE_EXAMPLES = """Examples:

  streamav live --demo                 the bundled clip: model, summary, strip
  streamav live                        webcam 0 and the default microphone
  streamav live --camera 1 --mic USB --no-preview --duration 60
  streamav live --video talk.mp4 --no-realtime --csv talk.csv
  streamav live --video talk.mp4 --write-video seen.mp4 --stats-json s.json
  streamav live --record session1 --lsl   record the run; emotion on LSL
  streamav live --video talk.mp4 --loop --duration 600   the clip over and over for 10 min
  streamav live --no-realtime --video session1   rerun a recording, frame by frame

On a terminal a status line shows fps, latency, the face and the emotion while it runs; \
the last line sums the run up (frames, fps, engine, top emotions). More: README, \
docs/live.md, docs/config.md."""


@app.command(epilog=LIVE_EXAMPLES)
def live(
    camera: Optional[list[str]] = typer.Option(
        None, help="Camera index or device path. (default: 0, unless --video) Repeat it (or "
                   "--video) for several streams in one process."),
    video: Optional[list[str]] = typer.Option(
        None, help="Video file or URL (PyAV) instead of a camera; its audio track is the audio "
                   "unless --mic/--audio/--no-audio. Repeat it for several streams."),
    streams: Optional[Path] = typer.Option(
        None, help="A file of streams, one a line: [ID=]SOURCE, SOURCE a video file or URL or "
                   "camera:INDEX (docs/live.md, several streams)."),
    max_streams: Optional[int] = typer.Option(
        None, help="Several streams: stream slots of the batched model step; a stream beyond "
                   "them is refused with a status message. (default: 8)"),
    max_faces: Optional[int] = typer.Option(
        None, help="Faces per input, each tracked across frames as a stream of its own, "
                   "SOURCE_ID/face0, /face1, ... (ids never reused in a run; docs/live.md, "
                   "several faces). (default: 1)"),
    mic: Optional[str] = typer.Option(
        None, help="Microphone: 'default', an index or part of a name. (default: the default "
                   "microphone with a camera; none with --video)"),
    audio: Optional[str] = typer.Option(
        None, help="Audio file (wav, flac, mp3, ...) instead of a microphone."),
    no_audio: bool = typer.Option(False, "--no-audio", help="Run on video alone."),
    loop: bool = typer.Option(
        False, "--loop", help="Play the --video (and --audio) file again from its start each "
                              "time it ends, until stopped (soak tests, demos)."),
    demo: bool = typer.Option(
        False, "--demo", help="Run on the bundled CREMA-D clip; ends with an emotion timeline "
                              "and a PNG strip of input and denoised faces (in the temp folder)."),
    publish: Optional[str] = typer.Option(
        None, help="PUB endpoint. (default: tcp://127.0.0.1:5555)"),
    remote: Optional[str] = typer.Option(
        None, help="Run the front end here and the model on `streamav serve` at this endpoint "
                   "(e.g. tcp://127.0.0.1:5560); the results come out on serve's PUB socket "
                   "(docs/scaling.md). (default: the model runs here)"),
    remote_server_key: Optional[Path] = typer.Option(
        None, help="--remote over CURVE: the server's public key file (`streamav keys`)."),
    remote_client_key: Optional[Path] = typer.Option(
        None, help="--remote over CURVE: this client's secret key file (its public key on "
                   "the server's allow-list)."),
    control: Optional[str] = typer.Option(
        None, help="REQ/REP control endpoint; 'none' disables it. "
                   "(default: tcp://127.0.0.1:5556)"),
    curve_secret_key: Optional[Path] = typer.Option(
        None, help="CURVE secret key file (zmq.auth), required for a non-loopback --publish. "
                   "(default: none, loopback only)"),
    stream_id: Optional[str] = typer.Option(
        None, help="Stream id put in every message. (default: host-pid-random, new each run)"),
    preview: Optional[bool] = typer.Option(
        None, "--preview/--no-preview",
        help="Preview window. (default: on when a display exists)"),
    realtime: Optional[bool] = typer.Option(
        None, "--realtime/--no-realtime",
        help="Real time (newest frame, drops counted) or every frame of a file, deterministic. "
             "(default: --realtime)"),
    max_frames: Optional[int] = typer.Option(
        None, help="Stop after this many frames. (default: no limit)"),
    duration: Optional[float] = typer.Option(
        None, help="Stop after this many seconds. (default: no limit)"),
    width: Optional[int] = typer.Option(None, help="Camera frame width in px. (default: 640)"),
    height: Optional[int] = typer.Option(None, help="Camera frame height in px. (default: 480)"),
    fps: Optional[float] = typer.Option(None, help="Camera frame rate. (default: 30)"),
    stats_json: Optional[Path] = typer.Option(
        None, help="Write the final stats and the config here (JSON) at the end."),
    csv: Optional[Path] = typer.Option(
        None, help="Write one row per frame here: frame, timestamp_s, face_found, face box, "
                   "one column per emotion probability, emotion_top, uncertain (docs/live.md)."),
    write_video: Optional[Path] = typer.Option(
        None, help="Write what the preview shows for every frame here (.mp4, .mkv or .mov, "
                   "H.264): frame, face box, crop, denoised face, emotion bars."),
    save_features: Optional[Path] = typer.Option(
        None, help="Write every frame's face crop and spectrum here (.npz), as the corpus cache "
                   "stores them."),
    record: Optional[Path] = typer.Option(
        None, help="Record the run into this new folder: the frames (lossless MP4), the audio "
                   "(WAV), every message (msgpack log) and a manifest; replay it with "
                   "streamav replay, rerun it with --video FOLDER (docs/live.md)."),
    lsl: bool = typer.Option(
        False, "--lsl", help="Stream the emotion on Lab Streaming Layer: an Emotion stream "
                             "(one channel per class) and a Markers stream (emotion changes); "
                             "needs pip install 'streamav[lsl]'."),
    model: Optional[Path] = typer.Option(
        None, help="Model folder (streamav train). (default: the model shipped in the package)"),
    no_model: bool = typer.Option(False, "--no-model", help="Front end only, no MDVAE."),
    noise: Optional[str] = typer.Option(
        None, help="Corrupt the face before the model, e.g. gaussian:0.2, occlude_mouth. "
                   "(default: none)"),
    backend: Optional[str] = typer.Option(
        None, help="Model step backend: auto, onnx, eager, compile, tensorrt. (default: auto)"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda. (default: cpu)"),
    profile: Optional[str] = typer.Option(
        None, help="Calibration profile for the emotion (streamav calibrate; streamav profiles "
                   "list). (default: none)"),
    config: Optional[Path] = typer.Option(
        None, help="TOML config (docs/config.md); flags given win. (default: none)"),
) -> None:
    """Capture, run the front ends and the model, publish results until the input ends."""
    videos, cameras = list(video or ()), list(camera or ())
    if demo:
        if videos or cameras or streams is not None:
            raise InputError("--demo plays the bundled clip: leave out --video and --camera")
        videos = [str(demo_clip_path())]
    several = (streams is not None or len(videos) + len(cameras) > 1
               or (max_faces or 1) > 1 or _max_faces_in(config) > 1)
    overrides = {
        "source.camera": cameras[0] if cameras and not several else None,
        "source.video": videos[0] if videos and not several else None, "source.mic": mic, "source.audio": audio,
        "source.no_audio": True if no_audio else None, "source.loop": True if loop else None,
        "camera.width_px": width, "camera.height_px": height, "camera.fps": fps,
        "publish.endpoint": publish, "publish.stream_id": stream_id,
        "publish.curve_secret_key_file": str(curve_secret_key) if curve_secret_key else None,
        "publish.control_endpoint": control,
        "run.preview": preview, "run.realtime": realtime, "run.max_frames": max_frames,
        "run.duration_s": duration, "run.stats_json": str(stats_json) if stats_json else None,
        "run.save_features": str(save_features) if save_features else None,
        "run.csv": str(csv) if csv else None,
        "run.write_video": str(write_video) if write_video else None,
        "run.record": str(record) if record else None, "run.lsl": True if lsl else None,
        "model.folder": str(model) if model else None, "model.noise": noise,
        "model.enabled": False if no_model else None,
        "model.backend": backend, "model.device": device, "model.profile": profile,
        "run.max_streams": max_streams, "face.max_faces": max_faces,
    }
    from streamav.stop_signals import stop_on_signals

    if remote is not None:
        ignored = [flag for flag, value in (
            ("--backend", backend), ("--device", device), ("--model", model),
            ("--profile", profile), ("--noise", noise), ("--max-streams", max_streams))
            if value is not None]
        if ignored:
            raise InputError(f"{', '.join(ignored)}: not for --remote (the model runs on "
                             "streamav serve, with its own options)")
        _live_remote(config, overrides, videos, cameras, streams, remote, remote_server_key,
                     remote_client_key)
        return
    if remote_server_key is not None or remote_client_key is not None:
        raise InputError("--remote-server-key and --remote-client-key go with --remote")
    if several:
        _live_streams(config, overrides, videos, cameras, streams)
        return

    # From here on SIGINT, SIGTERM and SIGHUP abort the start-up, then end the run cleanly.
    with stop_on_signals(afterwards="ignore") as signals:  # the process exits right after
        from streamav.live import run_live

        outcome = run_live(config, overrides, signals, demo=demo)
    for note in outcome.notes:
        typer.echo(f"streamav: {note}", err=True)
    typer.echo(final_line(outcome.summary.final_stats, outcome.summary.stop_reason,
                          outcome.emotion), err=True)


def _max_faces_in(config: Optional[Path]) -> int:
    """[face] max_faces of a --config file (1 without one; a bad file fails later, as usual)."""
    if config is None:
        return 1
    from streamav.config import load_config

    try:
        return load_config(config, {}).face.max_faces
    except StreamavError:
        return 1


def _live_streams(config: Optional[Path], overrides: dict, videos: list[str],
                  cameras: list[str], streams: Optional[Path]) -> None:
    """`streamav live` with several streams (streamav.multi_live): one line per stream at the
    end, and a line per refused stream."""
    from streamav.stop_signals import stop_on_signals

    with stop_on_signals(afterwards="ignore") as signals:
        from streamav.config import load_config
        from streamav.multi_live import run_multi, stream_inputs

        if not (videos or cameras or streams is not None):
            cameras = ["0"]  # --max-faces alone: the default camera
        inputs = stream_inputs(videos, cameras, streams)
        if len(inputs) == 1 and streams is None and overrides.get("publish.stream_id"):
            inputs = [dataclasses.replace(inputs[0], stream_id=overrides["publish.stream_id"])]
        first = inputs[0]
        # validated with the first stream's source; each stream's own is checked as it joins
        config_ = load_config(config, {**overrides, "source.video": first.video,
                                       "source.camera": first.camera})
        result = run_multi(config_, inputs, signals)
    for stream_id, final in result["streams"].items():
        if final is not None:
            line = final_line(final, result["stop_reasons"][stream_id], None)
            typer.echo(f"streamav: stream {stream_id}: {line[len('streamav: '):]}"
                       f"{latency_note(final)}", err=True)
    for face_id, face in result.get("faces", {}).items():
        if not face["refused"]:
            typer.echo(f"streamav: face stream {face_id}: face on {face['frames_found']} "
                       f"frames, {face['frames_stepped']} stepped", err=True)
    for stream_id, error in result["errors"].items():
        typer.echo(f"streamav: stream {stream_id} failed: {error}", err=True)
    for stream_id in result["refused"]:
        typer.echo(f"streamav: stream {stream_id} refused: all {result['slots']} stream slots "
                   "were taken (--max-streams)", err=True)
    if result["errors"]:
        raise typer.Exit(6)


def latency_note(final: dict) -> str:
    """'; capture to publish p50 7.1 / p99 13.2 ms' (the stream's `face` messages; its
    `emotion` messages too when a model ran), '' before any message was sent."""
    latency = final.get("latency_ms") or {}
    parts = [f"{name} p50 {p['p50']:.1f} / p99 {p['p99']:.1f} ms"
             for name, p in (("capture to publish", latency.get("capture_to_publish")),
                             ("to emotion", latency.get("capture_to_emotion")))
             if p and p.get("p50") is not None and p.get("p99") is not None]
    return "; " + ", ".join(parts) if parts else ""


def _live_remote(config: Optional[Path], overrides: dict, videos: list[str],
                 cameras: list[str], streams: Optional[Path], remote: str,
                 server_key: Optional[Path] = None, client_key: Optional[Path] = None) -> None:
    """`streamav live --remote`: the capture client of `streamav serve` (streamav.serve.client),
    one line per stream at the end."""
    from streamav.stop_signals import stop_on_signals

    with stop_on_signals(afterwards="ignore") as signals:
        from streamav.config import load_config
        from streamav.multi_live import stream_inputs
        from streamav.serve.client import run_remote

        inputs = stream_inputs(videos, cameras or ([] if videos or streams else ["0"]), streams)
        config_ = load_config(config, {**overrides, "source.video": inputs[0].video,
                                       "source.camera": inputs[0].camera})
        result = run_remote(config_, inputs, remote, signals, server_key, client_key)
    for stream_id, final in result["streams"].items():
        if final is not None:
            line = final_line(final, result["stop_reasons"][stream_id], None)
            typer.echo(f"streamav: stream {stream_id}: {line[len('streamav: '):]}", err=True)
    for stream_id, error in result["errors"].items():
        typer.echo(f"streamav: stream {stream_id} failed: {error}", err=True)
    for stream_id in result["refused"]:
        typer.echo(f"streamav: stream {stream_id} refused by streamav serve (no free slot)",
                   err=True)
    typer.echo(f"streamav: {result['sent']} messages sent to {remote}, {result['dropped']} "
               "dropped", err=True)
    if result["errors"]:
        raise typer.Exit(6)


def final_line(final: dict, stop_reason: str, emotion: str | None) -> str:
    """The last line of `streamav live`: frames, fps, face, drops, engine, emotion, why it
    stopped."""
    return (f"streamav: {final['frames']} frames in {final['elapsed_s']:.1f} s "
            f"({final['fps']:.1f} fps), face found on {final['faces_found']}, "
            f"{final['dropped_frames']} dropped"
            + (f"; model on {final['model_engine']}" if final.get("model_engine") else "")
            + (f"; {emotion}" if emotion else "")
            + f"; stopped: {stop_reason}")


REPLAY_EXAMPLES = """Examples:

  streamav replay session1                       as recorded, on tcp://127.0.0.1:5555
  streamav replay session1 --speed 2 --wait-subscriber 10
  streamav replay session1 --no-realtime --publish tcp://127.0.0.1:6000

Each message is sent again byte for byte (topic, envelope with the recorded stream id, seq \
and times, buffers). To run the model again on the recorded frames and audio instead: \
streamav live --no-realtime --video session1. More: docs/live.md."""


@app.command(epilog=REPLAY_EXAMPLES)
def replay(
    folder: Path = typer.Argument(..., help="A recording (streamav live --record FOLDER)."),
    publish: str = typer.Option("tcp://127.0.0.1:5555", help="PUB endpoint to publish on."),
    speed: float = typer.Option(1.0, help="Playback speed: 2 sends twice as fast."),
    realtime: bool = typer.Option(
        True, "--realtime/--no-realtime",
        help="Keep the recorded timing, or send everything as fast as the socket takes it. "
             "(default: --realtime)"),
    wait_subscriber: float = typer.Option(
        0.0, help="Wait up to this many seconds for a first subscriber before sending. "
                  "(default: 0, start at once)"),
    curve_secret_key: Optional[Path] = typer.Option(
        None, help="CURVE secret key file, required for a non-loopback --publish."),
) -> None:
    """Publish a recording's messages again, with their original timing."""
    from streamav.wire.protocol import endpoint_problem

    problem = endpoint_problem(publish)
    if problem:
        raise InputError(f"--publish {publish!r}: {problem}")
    if not (math.isfinite(speed) and speed > 0):
        raise InputError(f"--speed must be a positive number, got {speed}")
    if not (math.isfinite(wait_subscriber) and wait_subscriber >= 0):
        raise InputError(f"--wait-subscriber must be >= 0 seconds, got {wait_subscriber}")
    if curve_secret_key is not None and not curve_secret_key.is_file():
        raise InputError(f"--curve-secret-key {curve_secret_key}: no such file")
    import signal
    import threading

    from streamav.replay import replay as run_replay
    from streamav.stop_signals import STOP_SIGNALS

    stop = threading.Event()  # SIGINT, SIGTERM, SIGHUP: stop sending, close, print the summary
    previous = {}

    def on_signal(signum, _frame) -> None:
        stop.set()

    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:  # nohup
            previous[number] = signal.signal(number, on_signal)
    try:
        summary = run_replay(folder, publish, speed=speed, realtime=realtime,
                             wait_subscriber_s=wait_subscriber,
                             curve_secret_key_file=curve_secret_key, stop=stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    typer.echo(f"streamav: replayed {summary.sent} messages of stream {summary.stream_id} in "
               f"{summary.elapsed_s:.1f} s (recorded over {summary.span_s:.1f} s), "
               f"{summary.dropped} dropped; stopped: {summary.stop_reason}", err=True)


@app.command()
def subscribe(
    endpoint: str = typer.Option("tcp://127.0.0.1:5555", help="PUB endpoint to connect to."),
    topic: list[str] = typer.Option([], help="Topic prefix (repeatable); default: all."),
    count: Optional[int] = typer.Option(None, help="Exit after this many messages."),
    timeout: Optional[float] = typer.Option(None, help="Exit if nothing arrives for this long (s)."),
    buffers_base64: bool = typer.Option(False, help="Print raw buffers as base64."),
    stream: list[str] = typer.Option(
        [], help="Only this stream id (repeatable; the envelope's `stream`); default: all."),
    server_key: Optional[Path] = typer.Option(None, help="The publisher's CURVE public key file."),
    client_key: Optional[Path] = typer.Option(
        None, help="This client's CURVE key pair (NAME.key_secret from streamav keys --client "
                   "NAME), for a publisher with a client allow-list."),
) -> None:
    """Print the messages of a running streamav as JSON lines."""
    from streamav.wire.protocol import endpoint_problem
    from streamav.wire.subscriber import subscribe_to_jsonl

    problem = endpoint_problem(endpoint)
    if problem:
        raise InputError(f"--endpoint {endpoint!r}: {problem}")
    if count is not None and count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise InputError(f"--timeout must be a positive number of seconds, got {timeout}")
    if server_key is not None and not server_key.is_file():
        raise InputError(f"--server-key {server_key}: no such file")
    if client_key is not None and not client_key.is_file():
        raise InputError(f"--client-key {client_key}: no such file")
    if client_key is not None and server_key is None:
        raise InputError("--client-key needs --server-key (the publisher's public key)")

    subscribe_to_jsonl(endpoint, tuple(topic) or ("",), count, sys.stdout, timeout_s=timeout,
                       buffers_base64=buffers_base64, curve_server_public_key_file=server_key,
                       curve_client_secret_key_file=client_key, streams=tuple(stream))


@app.command()
def train(
    stage: str = typer.Argument(..., help="vqvae-audio, vqvae-visual, mdvae, refine or emotion."),
    cache: Path = typer.Option(..., help="Feature cache (streamav corpus cache)."),
    out: Path = typer.Option(..., help="Model folder: created, or updated stage by stage."),
    preset: str = typer.Option("default", help="Model preset for a new folder: default, paper."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default per stage)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default per stage)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default per stage)."),
    seed: int = typer.Option(0, help="Seed (batches and initialisation)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(1, help="PyTorch CPU threads."),
    window_frames: Optional[int] = typer.Option(
        None, help="mdvae, refine: frames per training window (default 30, 48)."),
    estimator_only: bool = typer.Option(
        False, "--estimator-only",
        help="emotion: fit only the emotion estimator (emotion.safetensors + .json); the "
             "weights, the step's w head and step.onnx stay as they are."),
) -> None:
    """Train one stage of the model on a feature cache (resumes after a kill)."""
    _check_outputs(folders=[(out, "--out")])
    from streamav.train.stages import train_stage

    summary = train_stage(stage, cache, out, preset=preset, steps=steps, batch_size=batch_size,
                          learning_rate=lr, seed=seed, device=device, threads=threads,
                          window_frames=window_frames, estimator_only=estimator_only)
    typer.echo(json.dumps(summary))


@app.command(name="eval")
def eval_(
    model: Path = typer.Option(..., help="Model folder (streamav train)."),
    cache: Path = typer.Option(..., help="Feature cache (streamav corpus cache)."),
    split: str = typer.Option("test", help="Split to evaluate: train, val, test or all."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here (JSON)."),
    plots: Optional[Path] = typer.Option(None, help="Write the PNGs into this folder."),
    seed: int = typer.Option(0, help="Seed of every random choice (same seed, same report)."),
    max_clips: int = typer.Option(300, help="At most this many clips of the split (0: all)."),
    denoise_clips: int = typer.Option(
        12, help="Clips for the denoising metrics, spread over the speakers (0: skip)."),
    identity_gallery: Optional[Path] = typer.Option(
        None, help="A cache (e.g. the training cache) whose speakers' mean faces join the "
                   "identity check of the denoised faces."),
    emotion_train_cache: Optional[Path] = typer.Option(
        None, help="The emotion estimator's training cache: adds the feature ablation "
                   "(estimators refitted per feature group; minutes)."),
    denoise_max_frames: int = typer.Option(150, help="First frames of each denoising clip."),
    draws: int = typer.Option(5, help="Seeded repetitions of the few-shot and identity splits."),
    k: list[int] = typer.Option([1, 5, 10], help="Few-shot sequences per class (repeatable)."),
    fewshot_unit: str = typer.Option("auto", help="Few-shot sequences: auto, clip or segment."),
    within_actor: Optional[bool] = typer.Option(
        None, "--within-actor/--no-within-actor",
        help="Within-actor few-shot (default: only when the split has a single speaker)."),
    threads: int = typer.Option(
        1, help="PyTorch CPU threads (0: PyTorch's default). One is fastest for these small "
                "batches when other work shares the CPU (docs/evaluation.md)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Evaluate a model on a cache: reconstruction, denoising, few-shot emotion, identity,
    disentanglement (docs/evaluation.md)."""
    _check_outputs((json_out, "--json"), folders=[(plots, "--plots")])
    import torch

    from streamav.evaluate import EvalSettings, evaluate, print_summary, write_report

    if threads > 0:
        torch.set_num_threads(threads)
    settings = EvalSettings(split=split, seed=seed, max_clips=max_clips or None,
                            denoise_clips=denoise_clips, denoise_max_frames=denoise_max_frames,
                            draws=draws, k_shots=tuple(k), fewshot_unit=fewshot_unit,
                            within_actor=within_actor,
                            identity_gallery=str(identity_gallery) if identity_gallery else None,
                            emotion_train_cache=(str(emotion_train_cache) if emotion_train_cache
                                                 else None))
    report = evaluate(model, cache, settings, plots_dir=plots, progress=progress)
    if json_out is not None:
        write_report(report, json_out)
    print_summary(report)


@app.command(name="build-engines")
def build_engines(
    backend: str = typer.Option("auto", help="Comma-separated: onnx, tensorrt (auto: the best "
                                "cached backend for the device)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    precision: str = typer.Option("fp32", help="Comma-separated: fp32, fp16, int8."),
    batch: str = typer.Option("1", help="Comma-separated static batch sizes (streams per step)."),
    calibration: Optional[Path] = typer.Option(
        None, help="INT8 calibration: a calibration.json or a folder of clips "
                   "(default: calibration/calibration.json of the checkout)."),
    model: Optional[Path] = typer.Option(None, help="Model folder (default: the shipped one)."),
    engine_dir: Optional[Path] = typer.Option(
        None, help="Engine cache (default: $STREAMAV_ENGINE_DIR or engines/)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a matching engine exists."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the manifests here."),
) -> None:
    """Build the model's engines (or find them in the cache), with parity and latency."""
    from rich.console import Console

    _check_outputs((json_out, "--json"))
    from streamav.build_engines import build_engines as build, engine_choices

    choices = engine_choices(backend, device, precision, batch)  # every one checked first
    manifests = build(model, choices, engine_dir, calibration, force, Console(stderr=True))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(manifests, indent=2) + "\n")


@app.command()
def bench(
    backend: Optional[str] = typer.Option(
        None, help="Backends, comma-separated: eager, onnx, compile, tensorrt, auto; a precision after a colon (onnx:int8, tensorrt:fp16) (default: "
                   "eager,onnx on cpu; auto with --pipeline). eager is always added (reference)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    batch: int = typer.Option(1, help="Streams per step (the engines' static batch)."),
    frames: int = typer.Option(1000, help="Measured frames; every backend steps once per frame."),
    warmup: int = typer.Option(50, help="Warm-up steps per backend before measuring."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result here (JSON)."),
    plot: Optional[Path] = typer.Option(None, help="Latency distribution PNG (matplotlib)."),
    model: Optional[Path] = typer.Option(None, help="Model folder; default: the shipped model."),
    engine_dir: Optional[Path] = typer.Option(
        None, help="Engine cache (default $STREAMAV_ENGINE_DIR, the checkout's engines/, ...)."),
    threads: int = typer.Option(
        0, help="ONNX Runtime intra-op and PyTorch threads (0: every core of the process; "
                "with --pipeline: the live default)."),
    pipeline: bool = typer.Option(False, "--pipeline", help="Benchmark the live path instead."),
    video: Optional[Path] = typer.Option(
        None, help="--pipeline: a video file, or a folder of them (e.g. calibration/recordings)."),
    demo: bool = typer.Option(False, "--demo", help="--pipeline: the bundled clip (default)."),
    repeat: int = typer.Option(1, help="--pipeline: passes over each clip per mode."),
    realtime: Optional[bool] = typer.Option(
        None, "--realtime/--no-realtime", help="--pipeline: one mode only (default: both)."),
    streams: Optional[str] = typer.Option(
        None, help="--pipeline: N streams in one process in real time (per-stream latency, "
                   "drops, CPU per frame), or 'auto': the largest N that holds 30 fps, 0 drops, "
                   "p99 <= 50 ms."),
    seconds: Optional[float] = typer.Option(
        None, help="--streams: seconds each run of N streams lasts (clips looped). "
                   "(default: 10)"),
    serve: bool = typer.Option(
        False, "--serve", help="Streams through `streamav serve` (Ray Serve on this machine; "
                               "the serve path alone): streams sustained at 30 fps and p99 per "
                               "stream, with --streams N|auto (default auto), --replicas."),
    replicas: int = typer.Option(2, help="--serve: model replicas."),
) -> None:
    """Measure the model step on every backend, or the live path (docs/bench.md)."""
    from streamav.bench import run_bench_command

    _check_outputs((json_out, "--json"), (plot, "--plot"))
    if serve:
        ignored = [flag for flag, given in (
            ("--backend", backend is not None), ("--device", device != "cpu"),
            ("--threads", threads != 0), ("--plot", plot is not None), ("--batch", batch != 1),
            ("--frames", frames != 1000), ("--warmup", warmup != 50),
            ("--pipeline", pipeline), ("--realtime/--no-realtime", realtime is not None),
            ("--repeat", repeat != 1), ("--demo", demo)) if given]
        if ignored:
            raise InputError(f"{', '.join(ignored)}: not for --serve (the replicas run "
                             "`streamav serve`'s defaults; see streamav serve --help)")
    elif replicas != 2:
        raise InputError("--replicas goes with --serve")
    if serve:
        _bench_serve(streams, seconds, replicas, video, model, engine_dir, json_out)
        return
    run_bench_command(backend=backend, device=device, batch=batch, frames=frames, warmup=warmup,
                      json_out=json_out, plot=plot, model=model, engine_dir=engine_dir,
                      threads=threads, pipeline=pipeline, video=video, demo=demo, repeat=repeat,
                      realtime=realtime, streams=streams, seconds=seconds)


def _bench_serve(streams: Optional[str], seconds: Optional[float], replicas: int,
                 video: Optional[Path], model: Optional[Path], engine_dir: Optional[Path],
                 json_out: Optional[Path]) -> None:
    """`streamav bench --serve` (streamav.bench.serve): one line per run, the JSON."""
    from streamav.bench import report
    from streamav.bench.serve import DEFAULT_SECONDS, ServeBenchSettings, run_serve_bench
    from streamav.bench.streams import parse_streams
    from rich.console import Console

    err = Console(stderr=True)
    settings = ServeBenchSettings(
        clip=video or demo_clip_path(), streams=parse_streams(streams or "auto"),
        replicas=replicas, seconds=DEFAULT_SECONDS if seconds is None else seconds,
        model_folder=model, engine_dir=engine_dir)
    document = run_serve_bench(settings, err)
    for run in document["runs"]:
        typer.echo(f"{run['streams']} streams on {run['replicas']} replicas: "
                   f"{'sustains' if run['sustains'] else 'does not sustain'} 30 fps, p99 max "
                   f"{run['p99_ms_max']} ms, {run['lost_total']} lost, load "
                   f"{run['load_average_end']}")
    typer.echo(f"streams sustained at 30 fps through serve: {document['largest_sustained']} "
               f"(with p99 <= 50 ms too: {document['largest_holding']})")
    if json_out is not None:
        report.write_json(document, json_out)
        err.print(f"streamav bench: wrote {json_out}")


@app.command()
def calibrate(
    profile: str = typer.Option(..., help="Profile name (created, or examples added to it)."),
    label: Optional[str] = typer.Option(
        None, help="The emotion shown (neutral, happy, ...). With --camera and no --label: a "
                   "guided session that asks for each label in turn."),
    video: Optional[Path] = typer.Option(None, help="A clip of the person showing --label."),
    camera: Optional[str] = typer.Option(None, help="Record from this camera instead."),
    seconds: float = typer.Option(5.0, help="--camera: seconds recorded per label."),
    start: float = typer.Option(0.0, help="--video: first second used."),
    end: Optional[float] = typer.Option(None, help="--video: last second used (default: the end)."),
    model: Optional[Path] = typer.Option(
        None, help="Model folder whose emotion estimator the profile is for (default: shipped)."),
    no_audio: bool = typer.Option(False, "--no-audio", help="Ignore the clip's audio."),
) -> None:
    """Add labelled examples of one person to a calibration profile and refit it (seconds).

    Examples: streamav calibrate --profile ana --label neutral --video ana_neutral.mp4;
    streamav calibrate --profile ana --camera 0 (guided, every label in turn)."""
    from streamav.calibrate import run_calibrate

    meta = run_calibrate(profile, label, video=video, camera=camera, seconds=seconds,
                         start_s=start, end_s=end, model_folder=model, no_audio=no_audio)
    counts: dict[str, int] = {}
    for clip in meta["clips"]:
        counts[clip["label"]] = counts.get(clip["label"], 0) + 1
    typer.echo(f"streamav: profile {meta['name']}: " + ", ".join(
        f"{name} x{n}" for name, n in counts.items())
        + (_person_head_line(meta) if meta["person_head"] else "; baseline only"), err=True)


def _person_head_line(meta: dict) -> str:
    """How the profile's person head was fitted, for `calibrate`'s closing line."""
    l2, accuracy = meta.get("person_head_l2"), meta.get("population_accuracy")
    if l2 is None or accuracy is None:  # written by an older streamav
        return "; person head fitted"
    return (f"; person head fitted (the population head reads {accuracy:.0%} of these frames: "
            f"L2 {l2:g})")


profiles_app = typer.Typer(help="Calibration profiles (streamav calibrate).",
                           no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


@profiles_app.command(name="list")
def profiles_list() -> None:
    """List the profiles (name, labelled clips per emotion)."""
    from streamav.emotion.profiles import list_profiles, profiles_dir

    profiles = list_profiles()
    if not profiles:
        typer.echo(f"no profiles in {profiles_dir()}")
    for entry in profiles:
        if "error" in entry:
            typer.echo(f"{entry['name']}\tunreadable: {entry['error']}")
        else:
            typer.echo(f"{entry['name']}\t" + ", ".join(
                f"{label} x{n}" for label, n in entry["clips"].items()))


@profiles_app.command(name="remove")
def profiles_remove(name: str = typer.Argument(..., help="The profile to remove.")) -> None:
    """Remove a profile."""
    from streamav.emotion.profiles import remove_profile

    remove_profile(name)
    typer.echo(f"streamav: removed profile {name}", err=True)


@app.command()
def devices() -> None:
    """List cameras and audio inputs."""
    from rich.console import Console

    from streamav.devices import print_devices

    print_devices(Console())


SERVE_EXAMPLES = """Examples:

  streamav serve                                  local Ray, 2 replicas x 8 streams
  streamav live --remote tcp://127.0.0.1:5560 --video a.mp4 --video b.mp4 --no-preview
  streamav subscribe --topic emotion --topic status
  ray start --head; streamav serve --address auto --replicas 4 --num-gpus 0.25

Needs the serve extra: pip install 'streamav[serve]'. More: docs/scaling.md."""


@app.command(epilog=SERVE_EXAMPLES)
def serve(
    address: Optional[str] = typer.Option(
        None, help="Ray cluster to join ('auto', or HOST:6379 from `ray start --head`). "
                   "(default: a Ray of this machine's own, started here)"),
    replicas: int = typer.Option(2, help="Model replicas."),
    max_streams: int = typer.Option(
        8, help="Stream slots per replica (the batched step's batch); a stream beyond them is "
                "refused with a status message."),
    snapshot_every: int = typer.Option(
        30, help="Frames between two snapshots of a stream's state (what a stream resumes "
                 "from on another replica when its replica dies)."),
    listen: str = typer.Option("tcp://127.0.0.1:5560",
                               help="Where capture clients (live --remote) connect."),
    publish: str = typer.Option("tcp://127.0.0.1:5555", help="The PUB edge: results."),
    curve_secret_key: Optional[Path] = typer.Option(
        None, help="CURVE secret key file, required for non-loopback --listen/--publish."),
    model: Optional[Path] = typer.Option(
        None, help="Model folder. (default: the model shipped in the package)"),
    backend: str = typer.Option("onnx", help="Model step backend on the replicas."),
    device: str = typer.Option("cpu", help="cpu or cuda (with --num-gpus)."),
    num_cpus: float = typer.Option(1.0, help="CPUs each replica reserves."),
    num_gpus: float = typer.Option(0.0, help="GPUs each replica reserves (0.5: two share one)."),
    max_replicas_per_node: Optional[int] = typer.Option(
        None, help="At most this many replicas on one node. (default: no limit)"),
    duration: Optional[float] = typer.Option(
        None, help="Stop after this many seconds. (default: until Ctrl-C or SIGTERM)"),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Write the ingress's summary here at the end (per stream: "
                             "replica, frames stepped, lost, moves)."),
) -> None:
    """Serve the model on Ray Serve: capture clients send frames (streamav live --remote),
    replicas hold each stream's state and step batches, results go out on the PUB edge."""
    from streamav.serve import require_serve

    require_serve()
    if replicas < 1 or max_streams < 1 or snapshot_every < 1:
        raise InputError("--replicas, --max-streams and --snapshot-every must be at least 1")
    from streamav.data import default_model_folder
    from streamav.serve.app import ServeOptions, run_serve
    from streamav.serve.ingress import IngressSettings

    folder = model or default_model_folder()
    if not (Path(folder) / "config.json").is_file():
        raise InputError(f"--model {folder}: not a model folder (no config.json)")
    if json_path is not None:
        _check_writable(json_path)
    options = ServeOptions(
        model_folder=Path(folder), address=address, replicas=replicas, capacity=max_streams,
        snapshot_every=snapshot_every, backend=backend, device=device, num_cpus=num_cpus,
        num_gpus=num_gpus, max_replicas_per_node=max_replicas_per_node, duration_s=duration,
        ingress=IngressSettings(listen=listen, publish=publish,
                                curve_secret_key_file=curve_secret_key))
    summary = run_serve(options, on_ready=lambda: typer.echo(
        f"streamav: serving {replicas} replicas x {max_streams} streams; frames in on "
        f"{listen}, results on {publish}", err=True))
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2))
    streams = summary["streams"]
    typer.echo(f"streamav: served {len(streams)} streams, {summary['frames_in']} frames in, "
               f"{sum(s['lost'] for s in streams.values())} lost, "
               f"{sum(s['moves'] for s in streams.values())} moves; stopped: "
               f"{summary['stopped']}", err=True)


@app.command(name="export")
def export(
    triton: Path = typer.Option(
        ..., help="Write an NVIDIA Triton model repository here: the step, a config.pbtxt with "
                  "the sequence batcher keeping its state (docs/scaling.md; not tested here)."),
    model: Optional[Path] = typer.Option(
        None, help="Model folder. (default: the model shipped in the package)"),
    instances: int = typer.Option(4, help="Model instances (concurrent streams) per device."),
    kind: str = typer.Option("gpu", help="gpu or cpu instances."),
) -> None:
    """Export the model step for another server (NVIDIA Triton)."""
    from streamav.data import default_model_folder
    from streamav.serve.triton import export_triton

    where = export_triton(model or default_model_folder(), triton, instances, kind)
    typer.echo(f"streamav: Triton model repository in {triton} ({where.name}: config.pbtxt, "
               "1/model.onnx, initial_state/)", err=True)


def _check_writable(path: Path) -> None:
    """InputError now, before the work, when `path` cannot be written."""
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _click_exceptions():
    """The click exceptions typer raises: its bundled copy (typer >= 0.20), else click's own."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer, on top of click
        from click import exceptions
    return exceptions


def _usage_line(exc) -> str:
    """One line for a click/typer usage error, with where to find help."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _fail(message: str, exit_code: int) -> NoReturn:
    print(f"streamav: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def main() -> None:
    """Entry point: run the app; every failure is one `streamav: error: ...` line and its exit
    code (streamav/errors.py; click's usage errors exit 2), never a traceback."""
    click_exceptions = _click_exceptions()
    try:
        result = app(standalone_mode=False)  # a command's return value, or click's exit code
    except StreamavError as exc:
        _fail(" ".join(str(exc).split()), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except click_exceptions.NoArgsIsHelpError as exc:  # `streamav`, `streamav corpus`: help
        print(exc.ctx.get_help())
        _fail(f"missing command (the commands are listed above; "
              f"see '{exc.ctx.command_path} COMMAND --help')", exc.exit_code)
    except click_exceptions.ClickException as exc:  # usage errors: unknown option, bad value
        _fail(_usage_line(exc), exc.exit_code)
    except OSError as exc:  # a file the checks could not foresee (a disk that filled up, ...)
        logging.getLogger("streamav").info("details:", exc_info=True)  # with --verbose
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}", InputError.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
