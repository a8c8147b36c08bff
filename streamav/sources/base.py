"""What every capture source is, and what it writes into.

A source owns one thread or device callback. It stamps every item with the monotonic capture
time in ns (taken as close to the device as possible) and its own sequence number, and writes it
into an `AVSink` (the AV ring buffer in production, a recorder in tests). A source never blocks
on the consumer except where the sink itself applies back-pressure (offline mode).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

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

    def end_of_stream(self, kind: str) -> None:
        """`kind` ("video" or "audio") will deliver nothing more."""

    def status(self, state: str, reason: str = "") -> None:
        """`state` is "source_lost" or "source_back"; `reason` is one human-readable line."""


class Source(Protocol):
    """A capture source: `start` spawns its thread or stream, `stop` ends it and joins."""

    name: str
    has_video: bool
    has_audio: bool

    def start(self, sink: AVSink) -> None: ...

    def stop(self) -> None: ...

    def error(self) -> BaseException | None:
        """The fatal error that ended the source's thread, if any (re-raised by the pipeline)."""
