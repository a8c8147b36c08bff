"""File and URL sources through PyAV: video frames and the audio track, each with its own clock.

A `MediaFileSource` decodes the video stream and the audio stream in two threads, each from its
own demuxer, so that neither waits on the other (offline mode applies back-pressure per stream).
Capture times are `anchor_ns + container time`: the container's own timestamps, on the monotonic
clock of this process. In real-time mode each thread sleeps until its item's capture time (the
file plays like a live device); in offline mode it writes as fast as the sink accepts.

Audio of any rate and channel count is resampled to 16 kHz mono float32 by libswresample
(`av.AudioResampler`); its timestamps count samples from the first audio frame's time.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import av
import numpy as np

from streamav.clock import NS_PER_S
from streamav.errors import InputError
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ, AVSink, ReplayingSource, StreamThreads

log = logging.getLogger(__name__)

_URL_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def is_url(location: str) -> bool:
    return location.startswith(_URL_SCHEMES)


def _open_container(location: str) -> av.container.InputContainer:
    """Open a file or URL for reading, or raise InputError with one clear line."""
    if not is_url(location):
        path = Path(location)
        if not path.exists():
            raise InputError(f"no such file: {location}")
        if path.is_dir():
            raise InputError(f"{location} is a directory, not a media file (nor a recording "
                             "folder: those hold a manifest.json)")
        if not os.access(path, os.R_OK):
            raise InputError(f"cannot read {location}: permission denied")
    options = {"rw_timeout": "10000000"} if is_url(location) else {}
    try:
        return av.open(location, mode="r", options=options)
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"cannot read {location}: {reason}") from None


class MediaFileSource(ReplayingSource):
    """Video and/or audio from a media file or URL (PyAV)."""

    def __init__(self, location: str, *, realtime: bool, use_video: bool = True,
                 use_audio: bool = True, anchor_ns: int | None = None,
                 audio_optional: bool = False) -> None:
        """`audio_optional`: a file without an audio stream runs on its video alone (one
        warning) instead of failing; the model then hears silence."""
        self.location = str(location)
        self.name = f"file:{Path(self.location).name}" if not is_url(self.location) else self.location
        self.realtime = realtime
        self.anchor_ns = anchor_ns
        with _open_container(self.location) as container:
            n_video = len(container.streams.video)
            n_audio = len(container.streams.audio)
            self.video_fps = (float(container.streams.video[0].average_rate)
                              if n_video and container.streams.video[0].average_rate else None)
            self.audio_rate_hz = container.streams.audio[0].rate if n_audio else None
        if use_video and n_video == 0:
            raise InputError(f"{self.location} has no video stream")
        if use_audio and n_audio == 0:
            if not audio_optional:
                raise InputError(f"{self.location} has no audio stream (use --no-audio, or "
                                 "--audio/--mic)")
            log.warning("%s has no audio stream: running on its video alone, the model hears "
                        "silence (--audio FILE or --mic adds sound)", self.location)
            use_audio = False
        if not use_video and not use_audio:
            raise InputError("a media source needs video or audio")
        self.has_video = use_video
        self.has_audio = use_audio
        self._threads = StreamThreads("decode", translate=self._decode_error)

    def _decode_error(self, kind: str, exc: BaseException) -> BaseException:
        if isinstance(exc, (av.FFmpegError, OSError)):
            return InputError(f"error while decoding {kind} of {self.location}: {exc}")
        return exc

    @staticmethod
    def _origin_s(container: av.container.InputContainer) -> float:
        """The container's start time: every stream's timestamps are taken relative to it."""
        return container.start_time / av.time_base if container.start_time is not None else 0.0

    def _run_video(self, sink: AVSink) -> None:
        assert self.anchor_ns is not None
        with _open_container(self.location) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            origin_s = self._origin_s(container)
            frames = container.decode(stream)
            seq = 0
            last_pts_s = -1.0
            while not self._threads.stopped.is_set():
                t0 = time.perf_counter_ns()
                frame = next(frames, None)
                if frame is None:
                    return
                image = frame.to_ndarray(format="bgr24")
                decode_ns = time.perf_counter_ns() - t0
                pts_s = (frame.time - origin_s) if frame.time is not None else last_pts_s + (
                    1.0 / self.video_fps if self.video_fps else 1 / 30)
                last_pts_s = pts_s
                t_capture_ns = self.anchor_ns + int(round(pts_s * NS_PER_S))
                if self.realtime:
                    self._threads.sleep_until(t_capture_ns)
                sink.write_video(seq, t_capture_ns, image, pts_s, decode_ns)
                seq += 1

    def _run_audio(self, sink: AVSink) -> None:
        assert self.anchor_ns is not None
        with _open_container(self.location) as container:
            stream = container.streams.audio[0]
            origin_s = self._origin_s(container)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_SAMPLE_RATE_HZ)
            first_s: float | None = None
            n_samples = 0
            seq = 0
            for frame in container.decode(stream):
                if self._threads.stopped.is_set():
                    return
                if first_s is None:
                    first_s = (frame.time - origin_s) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    n_samples, seq = self._emit_audio(sink, out, first_s, n_samples, seq)
            for out in resampler.resample(None):  # flush the resampler's tail
                n_samples, seq = self._emit_audio(sink, out, first_s or 0.0, n_samples, seq)

    def _emit_audio(self, sink: AVSink, out: av.AudioFrame, first_s: float, n_samples: int,
                    seq: int) -> tuple[int, int]:
        assert self.anchor_ns is not None
        samples = np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.float32)
        t_capture_ns = self.anchor_ns + int(round(
            (first_s + n_samples / MODEL_SAMPLE_RATE_HZ) * NS_PER_S))
        if self.realtime:  # a device delivers a block once its last sample is in
            self._threads.sleep_until(t_capture_ns + samples.size * NS_PER_S // MODEL_SAMPLE_RATE_HZ)
        sink.write_audio(seq, t_capture_ns, samples)
        return n_samples + samples.size, seq + 1
