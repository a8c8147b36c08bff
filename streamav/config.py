"""The one typed configuration tree of a live run: a section per stage, from TOML, then flags.

    [source]   camera, video, mic, audio, no_audio, loop, read_timeout_s
    [camera]   width_px, height_px, fps, reconnect_delay_s, max_reconnects
    [ring]     video_capacity_frames, audio_capacity_s
    [face]     crop_size_px, min_detection_confidence, min_tracking_confidence, static_image_mode,
               max_faces
    [spectrum] sample_rate_hz, window_samples, n_fft, hop_samples
    [publish]  endpoint, control_endpoint, stream_id, queue_size, send_hwm, curve_secret_key_file,
               curve_client_keys
    [model]    enabled, folder, noise, backend, device, precision, threads, engine_dir,
               profile
    [run]      realtime, max_staleness_s, preview, max_frames, duration_s, stats_interval_s,
               stats_json, save_features, csv, write_video, record, lsl, face_lost_reset_s,
               max_streams, gather_ms

`load_config(path, overrides)` reads the file (every key optional), applies the flags that were
given (a dict of "section.key" → value, None meaning "not given") and validates the result: every
value has its field's type and lies in its range (`LIMITS`), endpoints are well formed, and the
sources combine. A bad value is an `InputError` naming the flag or the TOML key, raised before
anything is opened, bound or built. `check_output_paths` checks that the run's output files can
be written, also before the run starts.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamav.engines.choice import EngineChoice, EngineChoiceError
from streamav.errors import InputError
from streamav.frontend.face import FaceConfig
from streamav.frontend.spectrum import SpectrumConfig
from streamav.outputs import check_writable_file, check_writable_folder
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ as SOURCE_SAMPLE_RATE_HZ
from streamav.sources.camera import CameraConfig
from streamav.sources.factory import SourceConfig
from streamav.wire.protocol import endpoint_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class RingConfig:
    video_capacity_frames: int = 8
    audio_capacity_s: float = 8.0


@dataclass(frozen=True)
class PublishConfig:
    endpoint: str = "tcp://127.0.0.1:5555"
    control_endpoint: str | None = "tcp://127.0.0.1:5556"
    stream_id: str | None = None  # None: "<host>-<pid>-<random>", unique per run
    queue_size: int = 512
    send_hwm: int = 1000
    curve_secret_key_file: str | None = None
    # With CURVE, the folder of the client public keys allowed to connect (streamav keys);
    # None: clients/ beside the secret key file; "any": no allow-list (server auth only).
    curve_client_keys: str | None = None


@dataclass(frozen=True)
class ModelSectionConfig:
    enabled: bool = True
    folder: str | None = None  # None: the model shipped in the package, if there is one
    noise: str | None = None  # corrupt the face crop before the model (see frontend/corruption)
    # The engine choice (streamav.engines.choice.EngineChoice, batch 1): docs/engines.md
    backend: str = "auto"  # auto, eager, onnx, compile, tensorrt
    device: str = "cpu"  # cpu, cuda
    precision: str = "fp32"  # fp32, fp16, int8 (which a backend builds: EngineChoice)
    threads: int = 1  # intra-op threads of the model step (the other cores decode and track)
    engine_dir: str | None = None  # None: $STREAMAV_ENGINE_DIR, the checkout's engines/, or ~/.cache
    profile: str | None = None  # a calibration profile (streamav calibrate) for the emotion

    @property
    def engine(self) -> EngineChoice:
        """The engine choice of these keys (checked when the config loads)."""
        return EngineChoice(self.backend, self.device, self.precision, 1)


@dataclass(frozen=True)
class RunConfig:
    realtime: bool = True
    # Real time: a frame whose results would leave later than this after its capture is
    # dropped (and counted: stats' stale_dropped) instead of processed late.
    max_staleness_s: float = 0.5
    preview: bool | None = None  # None: on when a display exists
    max_frames: int | None = None
    duration_s: float | None = None
    stats_interval_s: float = 1.0
    stats_json: str | None = None
    save_features: str | None = None  # .npz of every frame's face crop and spectrum
    csv: str | None = None  # one row per frame: face box, emotion probabilities (run_outputs)
    write_video: str | None = None  # the preview composition of every frame (.mp4/.mkv/.mov)
    record: str | None = None  # a new folder: input video and audio, messages, manifest
    lsl: bool = False  # Lab Streaming Layer outlets: Emotion and Markers (the lsl extra)
    # The face gone longer than this (media time): a new person, every stage's state starts
    # again and a `status` `reset` says so (LivePipeline.reset)
    face_lost_reset_s: float = 2.0
    # Several streams in one process (streamav.multi_live): the stream slots of the batched
    # model step (the engine's batch); a stream beyond them is refused with a `status`
    max_streams: int = 8
    # how long a tick's first face waits for the other streams' faces before the step runs
    gather_ms: float = 5.0
    # The model step in a thread of its own (LivePipeline): the face of frame t+1 overlaps
    # the step of frame t, so both cores work. Offline outputs are those of the serial worker;
    # a reset asked from another thread or from on_frame may land one frame later.
    pipelined: bool = False


@dataclass(frozen=True)
class LiveConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    ring: RingConfig = field(default_factory=RingConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    model: ModelSectionConfig = field(default_factory=ModelSectionConfig)
    run: RunConfig = field(default_factory=RunConfig)


# The flag that sets a key, for messages about values given on the command line.
FLAGS = {
    "source.camera": "--camera", "source.video": "--video", "source.mic": "--mic",
    "source.audio": "--audio", "source.loop": "--loop", "camera.width_px": "--width", "camera.height_px": "--height",
    "camera.fps": "--fps", "publish.endpoint": "--publish", "publish.control_endpoint": "--control",
    "publish.stream_id": "--stream-id", "publish.curve_secret_key_file": "--curve-secret-key",
    "run.max_frames": "--max-frames", "run.max_streams": "--max-streams",
    "face.max_faces": "--max-faces",
    "run.duration_s": "--duration",
    "run.stats_json": "--stats-json", "run.save_features": "--save-features",
    "run.csv": "--csv", "run.write_video": "--write-video", "run.record": "--record",
    "model.folder": "--model", "model.noise": "--noise", "model.backend": "--backend",
    "model.device": "--device", "model.profile": "--profile",
}

# The containers --write-video writes (H.264 video; the format follows the file's suffix).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")

# String keys whose value must be at most this long (a stream id goes into every message).
MAX_LENGTH = {"publish.stream_id": 256}

# Inclusive (low, high) of every number; None: unbounded on that side. Values must be finite.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    "camera.width_px": (16, 16384), "camera.height_px": (16, 16384), "camera.fps": (0.1, 1000),
    "camera.reconnect_delay_s": (0, 3600), "camera.max_reconnects": (0, None),
    "source.read_timeout_s": (0.1, 3600), "run.max_staleness_s": (0.05, 3600),
    "ring.video_capacity_frames": (1, 512), "ring.audio_capacity_s": (0.5, 600),
    # the sources deliver audio at this one rate (they resample to it)
    "spectrum.sample_rate_hz": (SOURCE_SAMPLE_RATE_HZ, SOURCE_SAMPLE_RATE_HZ),
    "spectrum.window_samples": (16, 65_536), "spectrum.n_fft": (16, 65_536),
    "spectrum.hop_samples": (1, 160_000),
    "publish.queue_size": (1, 1_000_000), "publish.send_hwm": (0, 10_000_000),
    "face.crop_size_px": (8, 1024), "face.min_detection_confidence": (0, 1),
    "face.min_tracking_confidence": (0, 1), "face.max_faces": (1, 16),
    "model.threads": (1, 256),
    "run.max_frames": (1, None), "run.duration_s": (0.001, None),
    "run.stats_interval_s": (0.05, 3600), "run.face_lost_reset_s": (0.1, 86_400),
    "run.max_streams": (1, 1024), "run.gather_ms": (0, 1000),
}


def _describe(hint: Any) -> str:
    """'an integer', 'a number', ... : what a value of this annotation looks like."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


def _has_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # not a simple type: the section's own checks decide


def _name(dotted: str, from_flags: set[str]) -> str:
    """The flag when the value came from the command line, else the TOML key."""
    if dotted in from_flags and dotted in FLAGS:
        return FLAGS[dotted]
    section, key = dotted.split(".", 1)
    return f"[{section}] {key}"


def _check_value(dotted: str, value: Any, hint: Any, from_flags: set[str]) -> None:
    if not _has_type(value, hint):
        raise InputError(f"{_name(dotted, from_flags)} must be {_describe(hint)}, got {value!r}")
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError(f"{_name(dotted, from_flags)} contains a NUL character")
        if not value.strip():  # a path, device, endpoint or name: "" is never meant
            raise InputError(f"{_name(dotted, from_flags)} is empty")
        if len(value) > MAX_LENGTH.get(dotted, len(value)):
            raise InputError(f"{_name(dotted, from_flags)} is longer than "
                             f"{MAX_LENGTH[dotted]} characters")
    _check_range(dotted, value, from_flags)


def _check_range(dotted: str, value: Any, from_flags: set[str]) -> None:
    if dotted not in LIMITS or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = LIMITS[dotted]
    if math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high):
        return
    if not math.isfinite(value):
        bound = "a finite number"
    elif high is None:
        bound = f"at least {low}"
    elif low == high:
        bound = f"{low}"
    else:
        bound = f"in {low}..{high}"
    raise InputError(f"{_name(dotted, from_flags)} must be {bound}, got {value!r}")


def _section(cls: type, values: Any, name: str, from_flags: set[str] = frozenset()) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"[{name}] must be a table of keys, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown key(s) in [{name}]: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls, include_extras=False)
    for key, value in values.items():
        _check_value(f"{name}.{key}", value, hints[key], from_flags)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad [{name}] section: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no such config file: {path}") from None
    except IsADirectoryError:
        raise InputError(f"--config {path} is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text (UTF-8) TOML file") from None
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> LiveConfig:
    """The config from `path` (TOML, optional) with `overrides` ("section.key": value) on top."""
    tree: dict[str, Any] = _read_toml(path) if path is not None else {}
    from_flags: set[str] = set()
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        values = tree.setdefault(section, {})
        if not isinstance(values, dict):
            raise InputError(f"[{section}] must be a table of keys, got {values!r}")
        values[key] = value
        from_flags.add(dotted)
    # Each section's class is its field's default factory.
    sections = {f.name: f.default_factory for f in dataclasses.fields(LiveConfig)}
    unknown = sorted(set(tree) - set(sections))
    if unknown:
        raise InputError(f"unknown config section(s): {', '.join(unknown)}")
    built = {name: _section(cls, tree.get(name, {}), name, from_flags)
             for name, cls in sections.items()}
    config = LiveConfig(**built)
    validate(config, from_flags)
    return config


def validate(config: LiveConfig, from_flags: set[str] = frozenset()) -> None:
    """Raise InputError for values out of range and combinations that cannot work."""
    for section in dataclasses.fields(LiveConfig):
        values = getattr(config, section.name)
        for item in dataclasses.fields(values):
            dotted = f"{section.name}.{item.name}"
            _check_range(dotted, getattr(values, item.name), from_flags)
    src = config.source
    if src.camera is not None and src.video is not None:
        raise InputError("give either --camera or --video, not both")
    if src.no_audio and (src.mic is not None or src.audio is not None):
        raise InputError("--no-audio cannot be combined with --mic or --audio")
    if src.mic is not None and src.audio is not None:
        raise InputError("give either --mic or --audio, not both")
    if src.loop and src.video is None and src.audio is None:
        raise InputError("--loop plays files again: give --video (or --audio)")
    live_device = src.video is None or src.mic is not None
    if not config.run.realtime and live_device:
        raise InputError("--no-realtime needs file sources (--video, and --audio or the file's "
                         "own audio): a camera or a microphone cannot wait for the worker")
    spectrum = config.spectrum
    if spectrum.window_samples > spectrum.n_fft:
        raise InputError(f"[spectrum] window_samples ({spectrum.window_samples}) cannot exceed "
                         f"n_fft ({spectrum.n_fft})")
    if spectrum.window_samples > config.ring.audio_capacity_s * spectrum.sample_rate_hz:
        raise InputError("[ring] audio_capacity_s must hold at least one spectrum window "
                         f"({spectrum.window_samples} samples)")
    _validate_endpoints(config.publish, from_flags)
    try:
        config.model.engine  # noqa: B018 - made to be checked
    except EngineChoiceError as exc:
        raise InputError(f"{_name('model.' + exc.field, from_flags)}: {exc.reason}") from None
    if config.model.noise is not None:
        from streamav.frontend.corruption import parse_corruption

        try:
            parse_corruption(config.model.noise)
        except InputError as exc:
            raise InputError(f"{_name('model.noise', from_flags)}: {exc}") from None


def _validate_endpoints(publish: PublishConfig, from_flags: set[str]) -> None:
    problem = endpoint_problem(publish.endpoint)
    if problem:
        raise InputError(f"{_name('publish.endpoint', from_flags)} {publish.endpoint!r}: {problem}")
    control = publish.control_endpoint
    if control is None or control.lower() == "none":
        return
    problem = endpoint_problem(control)
    if problem:
        raise InputError(f"{_name('publish.control_endpoint', from_flags)} {control!r}: {problem}")
    if control == publish.endpoint:
        raise InputError(f"the publish and control endpoints are the same ({control}): give "
                         "--control another port, or --control none")


def check_output_paths(config: LiveConfig) -> None:
    """InputError now, before the run, if an output file of the run could not be written, or
    the engine folder is not a folder that exists or can be made."""
    for dotted in ("run.stats_json", "run.save_features", "run.csv", "run.write_video"):
        value = getattr(config.run, dotted.split(".")[1])
        if value:
            check_writable_file(Path(value), FLAGS[dotted])
    video = config.run.write_video
    if video and Path(video).suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"{FLAGS['run.write_video']} {video}: give a file ending in "
                         f"{', '.join(VIDEO_SUFFIXES)} (H.264 in that container)")
    if config.model.enabled and config.model.engine_dir is not None:
        folder = Path(config.model.engine_dir)
        if folder.exists():  # an existing cache may be read-only (prebuilt engines)
            if not folder.is_dir():
                raise InputError(f"[model] engine_dir {folder} is not a directory")
        else:
            check_writable_folder(folder, "[model] engine_dir")
