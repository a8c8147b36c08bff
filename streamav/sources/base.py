"""What every capture source is, and what it writes into.

A source owns one thread or device callback. It stamps every item with the monotonic capture
time in ns (taken as close to the device as possible) and its own sequence number, and writes it
into an `AVSink` (the AV ring buffer in production, a recorder in tests). A source never blocks
on the consumer except where the sink itself applies back-pressure (offline mode).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Callable, Protocol

import numpy as np

from streamav.clock import NS_PER_S, now_ns

MODEL_SAMPLE_RATE_HZ = 16_000


class AVSink(Protocol):
    """Where sources put what they capture. All methods are thread-safe and cheap."""

    def write_video(self, seq: int, t_capture_ns: int, image_bgr: np.ndarray, pts_s: float | None,
                    decode_ns: int = 0) -> None:
        """One video frame, (H, W, 3) uint8 in BGR (OpenCV) order; copied by the sink."""

    def write_audio(self, seq: int, t_capture_ns: int, samples: np.ndarray) -> None:
        """One block of float32 mono samples at 16 kHz; `t_capture_ns` is its first sample's time."""

    def audio_overflow(self, count: int = 1) -> None:
        """The device dropped input (PortAudio's input overflow flag)."""

    def video_stale(self, count: int = 1) -> None:
        """Real time: the source dropped frames that were already older than the run's
        staleness bound when decoded (a decoder slower than real time catching up)."""

    def end_of_stream(self, kind: str) -> None:
        """`kind` ("video" or "audio") will deliver nothing more."""

    def status(self, state: str, reason: str = "") -> None:
        """`state` is "source_lost", "source_back" or "source_failed" (the source is dead: its
        decoder raised, or a network read timed out; the run stops); `reason` is one line."""


class Source(Protocol):
    """A capture source: `start` spawns its thread or stream, `stop` ends it and joins."""

    name: str
    has_video: bool
    has_audio: bool

    def start(self, sink: AVSink) -> None: ...

    def stop(self) -> None: ...

    def error(self) -> BaseException | None:
        """The fatal error that ended the source's thread, if any (re-raised by the pipeline)."""


class StreamThreads:
    """The threads of a source that produces one thread per stream ("video", "audio").

    Each thread ends its stream on the sink however it exits; the first error it raises is kept
    for `Source.error()` (after `translate`, which may turn library errors into StreamavErrors)
    and said at once with a `source_failed` status on the sink (the pipeline stops the run
    then, rather than going on without that stream). An error raised after `stop()` (a network
    read cut short by the stop) is no failure. `sleep_until` paces real-time playback and
    returns early when the source is stopped.
    """

    def __init__(self, name: str,
                 translate: Callable[[str, BaseException], BaseException] | None = None) -> None:
        self.name = name
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._translate = translate
        self._threads: list[threading.Thread] = []

    def spawn(self, kind: str, target: Callable[[AVSink], None], sink: AVSink) -> None:
        def run() -> None:
            try:
                target(sink)
            except Exception as exc:  # kept for error(); the pipeline re-raises it
                if self.stopped.is_set():
                    return  # asked to stop: whatever the interrupted read raised is no fault
                error = self._translate(kind, exc) if self._translate else exc
                if self.error is None:
                    self.error = error
                sink.status("source_failed", " ".join(str(error).split()) or repr(error))
            finally:
                sink.end_of_stream(kind)

        thread = threading.Thread(target=run, name=f"streamav-{self.name}-{kind}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def sleep_until(self, t_ns: int) -> None:
        delay_ns = t_ns - now_ns()
        if delay_ns > 0:
            self.stopped.wait(delay_ns / NS_PER_S)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the threads to stop and wait for them, `timeout_s` in all."""
        self.stopped.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


class ReplayingSource(ABC):
    """What file and synthetic sources share: a clock anchor and one thread per stream.

    Subclasses set `has_video`, `has_audio`, `anchor_ns` (None: taken at start, or set by the
    pipeline so that several sources share it) and `_threads`, and define `_run_video(sink)` and
    `_run_audio(sink)`.
    """

    has_video: bool
    has_audio: bool
    anchor_ns: int | None
    _threads: StreamThreads

    def start(self, sink: AVSink) -> None:
        if self.anchor_ns is None:
            self.anchor_ns = now_ns()
        if self.has_video:
            self._threads.spawn("video", self._run_video, sink)
        if self.has_audio:
            self._threads.spawn("audio", self._run_audio, sink)

    def stop(self) -> None:
        self._threads.stop()

    def error(self) -> BaseException | None:
        return self._threads.error

    @abstractmethod
    def _run_video(self, sink: AVSink) -> None:
        """Decode or make the video stream, writing each frame into `sink`."""

    @abstractmethod
    def _run_audio(self, sink: AVSink) -> None:
        """Decode or make the audio stream, writing each block into `sink`."""
