"""The one typed configuration tree of a live run: a section per stage, from TOML, then flags.

    [source]   camera, video, mic, audio, no_audio
    [camera]   width_px, height_px, fps, reconnect_delay_s, max_reconnects
    [ring]     video_capacity_frames, audio_capacity_s
    [face]     crop_size_px, min_detection_confidence, min_tracking_confidence, static_image_mode
    [spectrum] sample_rate_hz, window_samples, n_fft, hop_samples
    [publish]  endpoint, control_endpoint, stream_id, queue_size, send_hwm, curve_secret_key_file
    [model]    enabled, folder, noise, backend, device, precision, threads, engine_dir
    [run]      realtime, preview, max_frames, duration_s, stats_interval_s, stats_json,
               save_features

`load_config(path, overrides)` reads the file (every key optional), applies the flags that were
given (a dict of "section.key" → value, None meaning "not given") and validates the result.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamav.errors import InputError
from streamav.frontend.face import FaceConfig
from streamav.frontend.spectrum import SpectrumConfig
from streamav.sources.camera import CameraConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class SourceConfig:
    camera: str | None = None  # index, device path or anything OpenCV opens
    video: str | None = None  # file or URL (PyAV)
    mic: str | None = None  # "default", an index or part of a device name
    audio: str | None = None  # audio file (PyAV)
    no_audio: bool = False


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


@dataclass(frozen=True)
class ModelSectionConfig:
    enabled: bool = True
    folder: str | None = None  # None: the model shipped in the package, if there is one
    noise: str | None = None  # corrupt the face crop before the model (see frontend/corruption)
    backend: str = "auto"  # eager | onnx | compile | tensorrt | auto (docs/engines.md)
    device: str = "cpu"  # cpu | cuda
    precision: str = "fp32"  # fp32 | fp16 | int8 (fp16/int8: tensorrt on cuda)
    threads: int = 1  # intra-op threads of the model step (the other cores decode and track)
    engine_dir: str | None = None  # None: $STREAMAV_ENGINE_DIR, the checkout's engines/, or ~/.cache


@dataclass(frozen=True)
class RunConfig:
    realtime: bool = True
    preview: bool | None = None  # None: on when a display exists
    max_frames: int | None = None
    duration_s: float | None = None
    stats_interval_s: float = 1.0
    stats_json: str | None = None
    save_features: str | None = None  # .npz of every frame's face crop and spectrum


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


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown key(s) in [{name}]: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    try:
        return cls(**values)
    except TypeError as exc:
        raise InputError(f"bad [{name}] section: {exc}") from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> LiveConfig:
    """The config from `path` (TOML, optional) with `overrides` ("section.key": value) on top."""
    tree: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"no such config file: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path} is not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        tree.setdefault(section, {})[key] = value
    # Each section's class is its field's default factory.
    sections = {f.name: f.default_factory for f in dataclasses.fields(LiveConfig)}
    unknown = sorted(set(tree) - set(sections))
    if unknown:
        raise InputError(f"unknown config section(s): {', '.join(unknown)}")
    built = {name: _section(cls, tree.get(name, {}), name) for name, cls in sections.items()}
    config = LiveConfig(**built)
    validate(config)
    return config


def validate(config: LiveConfig) -> None:
    """Raise InputError for combinations that cannot work."""
    src = config.source
    if src.camera is not None and src.video is not None:
        raise InputError("give either --camera or --video, not both")
    if src.no_audio and (src.mic is not None or src.audio is not None):
        raise InputError("--no-audio cannot be combined with --mic or --audio")
    if src.mic is not None and src.audio is not None:
        raise InputError("give either --mic or --audio, not both")
    live_device = src.video is None or src.mic is not None
    if not config.run.realtime and live_device:
        raise InputError("--no-realtime needs file sources (--video, and --audio or the file's "
                         "own audio): a camera or a microphone cannot wait for the worker")
    if config.run.max_frames is not None and config.run.max_frames < 1:
        raise InputError("--max-frames must be at least 1")
    if config.run.duration_s is not None and config.run.duration_s <= 0:
        raise InputError("--duration must be positive")
    if config.ring.video_capacity_frames < 1 or config.ring.audio_capacity_s < 0.5:
        raise InputError("[ring] needs video_capacity_frames >= 1 and audio_capacity_s >= 0.5")
