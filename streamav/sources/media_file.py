"""File and URL sources through PyAV: video frames and the audio track, each with its own clock.

A `MediaFileSource` decodes the video stream and the audio stream in two threads, each from its
own demuxer, so that neither waits on the other (offline mode applies back-pressure per stream).
Capture times are `anchor_ns + container time`: the container's own timestamps, on the monotonic
clock of this process. In real-time mode each thread sleeps until its item's capture time (the
file plays like a live device); in offline mode it writes as fast as the sink accepts.

Audio of any rate and channel count is resampled to 16 kHz mono float32 by libswresample
(`av.AudioResampler`); its timestamps count samples from the first audio frame's time.

Faults: a decoder that raises (a damaged file) ends its thread with a `SourceError`, which the
thread reports at once (`source_failed`: the pipeline stops the run). A URL is opened and read
with a timeout (`read_timeout_s`, PyAV's interrupt callback): a server that stops sending, or
trickles too slowly to deliver a packet in that time, fails the source instead of hanging; the
first open of a URL runs in a helper thread, so that Ctrl-C ends a stalled start-up at once.

Real time stays live (`max_staleness_s`): a frame decoded more than that after its capture time
(the decoder is slower than real time, e.g. an 8K file on a small CPU) is not converted nor
written but counted (`AVSink.video_stale`), and the decoder skips to the next key frame
(`skip_frame = NONKEY`) until it is back within the bound.

`loop`: the file plays again from its start when it ends, forever; each pass is one period
later (the longest of its streams, so video and audio stay aligned pass after pass), and
sequence numbers go on counting.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from pathlib import Path

import av
import numpy as np

from streamav.clock import NS_PER_S, now_ns
from streamav.errors import InputError, SourceError
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ, AVSink, ReplayingSource, StreamThreads

log = logging.getLogger(__name__)

_URL_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_READ_TIMEOUT_S = 5.0  # a URL that delivers no packet for this long fails
_OPEN_POLL_S = 0.05  # how often the main thread looks up from a URL's first open (Ctrl-C)
_URL_STOP_WAIT_S = 1.0  # how long stop() waits for a thread blocked in a network read


def is_url(location: str) -> bool:
    return location.startswith(_URL_SCHEMES)


def _av_open(location: str, read_timeout_s: float) -> av.container.InputContainer:
    """av.open, with PyAV's open and read timeouts (and FFmpeg's own rw_timeout) for a URL."""
    if not is_url(location):
        return av.open(location, mode="r")
    return av.open(location, mode="r", options={"rw_timeout": str(int(read_timeout_s * 1e6))},
                   timeout=(read_timeout_s, read_timeout_s))


def _open_error(location: str, exc: BaseException, read_timeout_s: float) -> InputError:
    if isinstance(exc, av.ExitError):  # PyAV's interrupt callback: the timeout ran out
        return InputError(f"cannot read {location}: no answer within {read_timeout_s:g} s "
                          "(read timeout, [source] read_timeout_s)")
    reason = getattr(exc, "strerror", None) or str(exc)
    return InputError(f"cannot read {location}: {reason}")


def _open_container(location: str, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                    interruptible: bool = False) -> av.container.InputContainer:
    """Open a file or URL for reading, or raise InputError with one clear line.

    `interruptible` (the main thread's first open of a URL): the open runs in a helper thread
    while this one waits in Python, where Ctrl-C is seen at once; the helper ends by itself
    within the timeout and closes what it opened."""
    if not is_url(location):
        path = Path(location)
        if not path.exists():
            raise InputError(f"no such file: {location}")
        if path.is_dir():
            raise InputError(f"{location} is a directory, not a media file (nor a recording "
                             "folder: those hold a manifest.json)")
        if not os.access(path, os.R_OK):
            raise InputError(f"cannot read {location}: permission denied")
    if not (interruptible and is_url(location)):
        try:
            return _av_open(location, read_timeout_s)
        except (av.FFmpegError, OSError) as exc:
            raise _open_error(location, exc, read_timeout_s) from None
    return _open_in_thread(location, read_timeout_s)


def _open_in_thread(location: str, read_timeout_s: float) -> av.container.InputContainer:
    done = threading.Event()
    result: dict = {}
    abandoned = threading.Event()

    def open_it() -> None:
        try:
            result["container"] = _av_open(location, read_timeout_s)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            result["error"] = exc
        finally:
            done.set()
            if abandoned.is_set() and "container" in result:
                result["container"].close()

    threading.Thread(target=open_it, name="streamav-open", daemon=True).start()
    try:
        while not done.wait(_OPEN_POLL_S):
            pass
    except BaseException:  # Ctrl-C: leave the open to its timeout
        abandoned.set()
        if done.is_set() and "container" in result:
            result["container"].close()
        raise
    error = result.get("error")
    if error is not None:
        if isinstance(error, (av.FFmpegError, OSError)):
            raise _open_error(location, error, read_timeout_s) from None
        raise error
    return result["container"]


class _CatchUp:
    """Real time, one pass of a video stream: drops (and counts on the sink) every frame decoded
    later than `bound_s` after its capture time, and has the decoder skip to key frames
    (`skip_frame = NONKEY`) while it is behind. Frames the decoder skipped show as gaps in the
    times of the frames that follow (its threads still hold a few packets when it is told to
    decode everything again): those count as dropped too, as do the frames up to the end of
    the stream when it ends while behind."""

    _GAPS_AFTER_S = 1.0  # after catching up, gaps in the frame times are skips for this long

    def __init__(self, stream: av.VideoStream, sink: AVSink, bound_s: float,
                 period_s: float) -> None:
        self.stream = stream
        self.sink = sink
        self.bound_ns = int(bound_s * NS_PER_S)
        self.period_s = period_s
        self.behind = False
        self.last_pts_s: float | None = None
        self.gaps_until_s = -math.inf  # until this frame time, gaps are the decoder's skips

    def drop(self, pts_s: float, t_capture_ns: int) -> bool:
        """Whether to drop this decoded frame (before it is converted)."""
        if pts_s < self.gaps_until_s:
            self.sink.video_stale(self._missing(pts_s))
        self.last_pts_s = pts_s
        stale = now_ns() - t_capture_ns > self.bound_ns
        if stale != self.behind:  # key frames only while behind, every frame once back
            self.stream.codec_context.skip_frame = "NONKEY" if stale else "DEFAULT"
            self.behind = stale
            self.gaps_until_s = math.inf if stale else pts_s + self._GAPS_AFTER_S
        if stale:
            self.sink.video_stale()
        return stale

    def ended(self, end_s: float) -> None:
        """The stream ended at `end_s` (s): frames skipped on the way there are dropped."""
        if self.behind:
            self.sink.video_stale(self._missing(end_s))

    def _missing(self, pts_s: float) -> int:
        """Frames between the last one seen and `pts_s` (0 when they follow each other)."""
        if self.last_pts_s is None:
            return 0
        return max(0, int(round((pts_s - self.last_pts_s) / self.period_s)) - 1)


def _stream_end_s(container: av.container.InputContainer, stream: av.VideoStream,
                  origin_s: float, default_s: float) -> float:
    """Where the stream ends (s from the container's start), as its header says."""
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base) - origin_s
    if container.duration is not None:
        return container.duration / av.time_base
    return default_s


def _loop_period_s(container: av.container.InputContainer, location: str) -> float:
    """The length of one pass of a looped file: where its last video or audio packet ends,
    relative to the container's start (a URL: the container's duration)."""
    origin_s = container.start_time / av.time_base if container.start_time is not None else 0.0
    end_s = 0.0
    if not is_url(location):
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        for packet in container.demux(streams):
            if packet.pts is None or packet.time_base is None:
                continue
            end = (packet.pts + (packet.duration or 0)) * packet.time_base
            end_s = max(end_s, float(end) - origin_s)
    elif container.duration is not None:
        end_s = container.duration / av.time_base
    if end_s <= 0:
        raise InputError(f"--loop: the length of {location} is not known (a live stream "
                         "cannot be looped)")
    return end_s


class MediaFileSource(ReplayingSource):
    """Video and/or audio from a media file or URL (PyAV)."""

    def __init__(self, location: str, *, realtime: bool, use_video: bool = True,
                 use_audio: bool = True, anchor_ns: int | None = None,
                 audio_optional: bool = False, loop: bool = False,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 max_staleness_s: float | None = None) -> None:
        """`audio_optional`: a file without an audio stream runs on its video alone (one
        warning) instead of failing; the model then hears silence. `loop`: play it again and
        again. `read_timeout_s`: a URL that delivers nothing for this long fails.
        `max_staleness_s` (real time): drop frames decoded later than this after their
        capture time, and skip to key frames until the decoder is back within it."""
        self.location = str(location)
        self.name = f"file:{Path(self.location).name}" if not is_url(self.location) else self.location
        self.realtime = realtime
        self.anchor_ns = anchor_ns
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.max_staleness_s = max_staleness_s if realtime else None
        self.loop_period_s: float | None = None
        with _open_container(self.location, read_timeout_s, interruptible=True) as container:
            n_video = len(container.streams.video)
            n_audio = len(container.streams.audio)
            self.video_fps = (float(container.streams.video[0].average_rate)
                              if n_video and container.streams.video[0].average_rate else None)
            self.audio_rate_hz = container.streams.audio[0].rate if n_audio else None
            if loop:
                self.loop_period_s = _loop_period_s(container, self.location)
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
        self._media_s: dict[str, float] = {}  # how far each stream has played (error messages)
        self._threads = StreamThreads("decode", translate=self._decode_error)

    def _decode_error(self, kind: str, exc: BaseException) -> BaseException:
        at = self._media_s.get(kind)
        where = f" after {at:.2f} s" if at is not None else ""
        if isinstance(exc, av.ExitError):  # PyAV's interrupt callback: the read timed out
            return SourceError(f"{self.location}: no {kind} data for {self.read_timeout_s:g} s"
                               f"{where} (read timeout, [source] read_timeout_s)")
        if isinstance(exc, (av.FFmpegError, OSError)):
            reason = getattr(exc, "strerror", None) or str(exc)
            return SourceError(f"the {kind} decoder of {self.location} failed{where}: {reason} "
                               "(a damaged file?)")
        if isinstance(exc, InputError):  # the thread's own open failed (the file went away)
            return SourceError(str(exc))
        return exc

    def stop(self) -> None:
        """Stop and join the decoding threads. A thread blocked in a network read cannot be
        interrupted (PyAV's only interrupt is the read timeout): after a second it is left to
        end by itself, within the read timeout (a daemon thread: the process need not wait)."""
        self._threads.stop(timeout_s=_URL_STOP_WAIT_S if is_url(self.location) else 5.0)

    def _passes(self) -> "range | itertools.count":
        return itertools.count() if self.loop else range(1)

    @staticmethod
    def _origin_s(container: av.container.InputContainer) -> float:
        """The container's start time: every stream's timestamps are taken relative to it."""
        return container.start_time / av.time_base if container.start_time is not None else 0.0

    @staticmethod
    def _decode(container: av.container.InputContainer, stream: av.VideoStream):
        """The decoded frames of the video stream (one seam: where the decoding cost is)."""
        return container.decode(stream)

    def _run_video(self, sink: AVSink) -> None:
        seq = 0
        for n_pass in self._passes():
            if self._threads.stopped.is_set():
                return
            seq = self._play_video(sink, seq, n_pass * (self.loop_period_s or 0.0))

    def _play_video(self, sink: AVSink, seq: int, offset_s: float) -> int:
        """One pass over the video, its times shifted by `offset_s`; returns the next seq."""
        assert self.anchor_ns is not None
        with _open_container(self.location, self.read_timeout_s) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            origin_s = self._origin_s(container)
            frames = self._decode(container, stream)
            period_s = 1.0 / self.video_fps if self.video_fps else 1 / 30
            catch_up = (None if self.max_staleness_s is None else
                        _CatchUp(stream, sink, self.max_staleness_s, period_s))
            pts_s = -period_s
            while not self._threads.stopped.is_set():
                t0 = time.perf_counter_ns()
                frame = next(frames, None)
                if frame is None:
                    if catch_up is not None:
                        catch_up.ended(_stream_end_s(container, stream, origin_s,
                                                     pts_s + period_s))
                    return seq
                pts_s = (frame.time - origin_s) if frame.time is not None else pts_s + period_s
                if self.loop_period_s is not None and pts_s >= self.loop_period_s:
                    continue  # past the pass's end: the next pass begins there
                t_capture_ns = self.anchor_ns + int(round((offset_s + pts_s) * NS_PER_S))
                if catch_up is not None and catch_up.drop(pts_s, t_capture_ns):
                    continue
                image = frame.to_ndarray(format="bgr24")
                decode_ns = time.perf_counter_ns() - t0
                if self.realtime:
                    self._threads.sleep_until(t_capture_ns)
                sink.write_video(seq, t_capture_ns, image, pts_s, decode_ns)
                self._media_s["video"] = offset_s + pts_s
                seq += 1
        return seq

    def _run_audio(self, sink: AVSink) -> None:
        seq = 0
        for n_pass in self._passes():
            if self._threads.stopped.is_set():
                return
            seq = self._play_audio(sink, seq, n_pass * (self.loop_period_s or 0.0))

    def _play_audio(self, sink: AVSink, seq: int, offset_s: float) -> int:
        """One pass over the audio, its times shifted by `offset_s`; returns the next seq."""
        with _open_container(self.location, self.read_timeout_s) as container:
            stream = container.streams.audio[0]
            origin_s = self._origin_s(container)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=MODEL_SAMPLE_RATE_HZ)
            first_s: float | None = None
            n_samples = 0
            for frame in container.decode(stream):
                if self._threads.stopped.is_set():
                    return seq
                if first_s is None:
                    first_s = (frame.time - origin_s) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    n_samples, seq = self._emit_audio(sink, out, first_s, offset_s, n_samples,
                                                      seq)
            for out in resampler.resample(None):  # flush the resampler's tail
                n_samples, seq = self._emit_audio(sink, out, first_s or 0.0, offset_s,
                                                  n_samples, seq)
        return seq

    def _emit_audio(self, sink: AVSink, out: av.AudioFrame, first_s: float, offset_s: float,
                    n_samples: int, seq: int) -> tuple[int, int]:
        assert self.anchor_ns is not None
        samples = np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.float32)
        start_s = first_s + n_samples / MODEL_SAMPLE_RATE_HZ
        if self.loop_period_s is not None:  # a looped pass ends where the next one begins
            room = int(round((self.loop_period_s - start_s) * MODEL_SAMPLE_RATE_HZ))
            if room <= 0:
                return n_samples + samples.size, seq
            samples = samples[:room]
        t_capture_ns = self.anchor_ns + int(round((offset_s + start_s) * NS_PER_S))
        if self.realtime:  # a device delivers a block once its last sample is in
            self._threads.sleep_until(t_capture_ns + samples.size * NS_PER_S // MODEL_SAMPLE_RATE_HZ)
        sink.write_audio(seq, t_capture_ns, samples)
        self._media_s["audio"] = offset_s + start_s + samples.size / MODEL_SAMPLE_RATE_HZ
        return n_samples + samples.size, seq + 1
