"""Turns the [source] config (`SourceConfig`) into the source objects of a run.

Rules: `video` (file or URL) or `camera` (default: camera 0) gives the frames. Audio comes from
`mic` if given, else from `audio` (a file), else from the video file's own track, else (camera)
from the default microphone; `no_audio` turns it off. File sources get their clock anchor from
the pipeline when it starts them (the same for all), so a video file and a separate audio file
line up exactly. A `video` that is a recording's folder (`live --record`) plays that recording:
its frames, and its audio unless another is given (streamav/sources/recording.py).

`loop` plays the media files again and again (a separate audio file loops on its own length);
`read_timeout_s` bounds every open and read of a URL; in real time a video file drops the frames
it decodes later than the run's `max_staleness_s` after their time (streamav/sources/media_file.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from streamav.errors import InputError
from streamav.sources.base import Source
from streamav.sources.camera import CameraConfig, CameraSource
from streamav.sources.media_file import DEFAULT_READ_TIMEOUT_S, MediaFileSource
from streamav.sources.recording import RecordingSource, is_recording


@dataclass(frozen=True)
class SourceConfig:
    """The [source] section of a run's config (streamav.config)."""

    camera: str | None = None  # index, device path or anything OpenCV opens
    video: str | None = None  # file or URL (PyAV)
    mic: str | None = None  # "default", an index or part of a device name
    audio: str | None = None  # audio file (PyAV)
    no_audio: bool = False
    loop: bool = False  # play the file(s) again from the start when they end, forever
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S  # a URL that sends no packet for this long fails


class _Run(Protocol):
    realtime: bool
    max_staleness_s: float | None


class SourcesConfig(Protocol):
    """What the sources read of a run's config (streamav.config.LiveConfig)."""

    source: SourceConfig
    camera: CameraConfig
    run: _Run


def build_sources(config: SourcesConfig) -> list[Source]:
    src = config.source
    realtime = config.run.realtime
    sources: list[Source] = []
    audio_from_video = src.video is not None and not src.no_audio and src.mic is None \
        and src.audio is None
    media = {"realtime": realtime, "loop": src.loop, "read_timeout_s": src.read_timeout_s}
    if src.video is not None and is_recording(src.video):  # a folder from live --record
        if src.loop:
            raise InputError(f"--loop plays media files; {src.video} is a recording folder, "
                             "which plays once")
        sources.append(RecordingSource(src.video, realtime=realtime,
                                       use_audio=audio_from_video))
    elif src.video is not None:
        sources.append(MediaFileSource(src.video, use_video=True, use_audio=audio_from_video,
                                       audio_optional=audio_from_video,
                                       max_staleness_s=config.run.max_staleness_s, **media))
    else:
        sources.append(CameraSource(src.camera if src.camera is not None else 0, config.camera))
    if src.no_audio or audio_from_video:
        return sources
    if src.audio is not None:
        sources.append(MediaFileSource(src.audio, use_video=False, use_audio=True, **media))
    else:
        from streamav.sources.microphone import MicrophoneSource  # PortAudio only when used

        mic = src.mic if src.mic not in (None, "default") else None
        sources.append(MicrophoneSource(int(mic) if mic is not None and mic.isdigit() else mic))
    return sources
