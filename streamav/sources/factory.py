"""Turns the [source] config into the source objects of a run.

Rules: `video` (file or URL) or `camera` (default: camera 0) gives the frames. Audio comes from
`mic` if given, else from `audio` (a file), else from the video file's own track, else (camera)
from the default microphone; `no_audio` turns it off. File sources get their clock anchor from
the pipeline when it starts them (the same for all), so a video file and a separate audio file
line up exactly.
"""

from __future__ import annotations

from streamav.config import LiveConfig
from streamav.sources.base import Source
from streamav.sources.camera import CameraSource
from streamav.sources.media_file import MediaFileSource


def build_sources(config: LiveConfig) -> list[Source]:
    src = config.source
    realtime = config.run.realtime
    sources: list[Source] = []
    audio_from_video = src.video is not None and not src.no_audio and src.mic is None \
        and src.audio is None
    if src.video is not None:
        sources.append(MediaFileSource(src.video, realtime=realtime, use_video=True,
                                       use_audio=audio_from_video,
                                       audio_optional=audio_from_video))
    else:
        sources.append(CameraSource(src.camera if src.camera is not None else 0, config.camera))
    if src.no_audio or audio_from_video:
        return sources
    if src.audio is not None:
        sources.append(MediaFileSource(src.audio, realtime=realtime, use_video=False,
                                       use_audio=True))
    else:
        from streamav.sources.microphone import MicrophoneSource  # PortAudio only when used

        mic = src.mic if src.mic not in (None, "default") else None
        sources.append(MicrophoneSource(int(mic) if mic is not None and mic.isdigit() else mic))
    return sources
