"""A test `AVSink` that records everything sources write into it, for assertions.

It copies every frame and audio block (sources may reuse their buffers), is safe to call from
any number of threads, and lets a test wait for an end of stream or for enough data. Read the
public lists once the source has stopped, or take a consistent copy with `snapshot()`.
"""

from __future__ import annotations

import threading
from typing import Callable, NamedTuple

import numpy as np


class VideoItem(NamedTuple):
    seq: int
    t_capture_ns: int
    image_bgr: np.ndarray  # a copy, (H, W, 3) uint8
    pts_s: float | None


class AudioItem(NamedTuple):
    seq: int
    t_capture_ns: int
    samples: np.ndarray  # a copy, float32 mono at 16 kHz


class RecordingSink:
    """Records video frames, audio blocks, overflows, ends of stream and status events."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.video: list[VideoItem] = []
        self.video_decode_ns: list[int] = []  # parallel to `video`
        self.audio_blocks: list[AudioItem] = []
        self.audio_samples = 0
        self.overflows = 0
        self.stale = 0  # video frames the source dropped as stale (real time)
        self.ended: set[str] = set()
        self.statuses: list[tuple[str, str]] = []  # (state, reason) in arrival order

    # -- AVSink ------------------------------------------------------------------------------

    def write_video(self, seq: int, t_capture_ns: int, image_bgr: np.ndarray,
                    pts_s: float | None, decode_ns: int = 0) -> None:
        item = VideoItem(seq, t_capture_ns, np.array(image_bgr, copy=True), pts_s)
        with self._cond:
            self.video.append(item)
            self.video_decode_ns.append(decode_ns)
            self._cond.notify_all()

    def write_audio(self, seq: int, t_capture_ns: int, samples: np.ndarray) -> None:
        item = AudioItem(seq, t_capture_ns, np.array(samples, dtype=np.float32, copy=True))
        with self._cond:
            self.audio_blocks.append(item)
            self.audio_samples += item.samples.shape[0]
            self._cond.notify_all()

    def audio_overflow(self, count: int = 1) -> None:
        with self._cond:
            self.overflows += count
            self._cond.notify_all()

    def video_stale(self, count: int = 1) -> None:
        with self._cond:
            self.stale += count
            self._cond.notify_all()

    def end_of_stream(self, kind: str) -> None:
        with self._cond:
            self.ended.add(kind)
            self._cond.notify_all()

    def status(self, state: str, reason: str = "") -> None:
        with self._cond:
            self.statuses.append((state, reason))
            self._cond.notify_all()

    # -- for tests ---------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[RecordingSink], bool], timeout_s: float) -> bool:
        """Wait until `predicate(self)` holds (checked under the lock); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout=timeout_s)

    def wait_ended(self, kind: str, timeout_s: float) -> bool:
        """Wait until the source said `kind` ("video" or "audio") has ended."""
        return self.wait_until(lambda sink: kind in sink.ended, timeout_s)

    def wait_audio_samples(self, n_samples: int, timeout_s: float) -> bool:
        return self.wait_until(lambda sink: sink.audio_samples >= n_samples, timeout_s)

    def wait_video_frames(self, n_frames: int, timeout_s: float) -> bool:
        return self.wait_until(lambda sink: len(sink.video) >= n_frames, timeout_s)

    def snapshot(self) -> tuple[list[VideoItem], list[AudioItem]]:
        """Consistent copies of the video and audio lists, safe while the source still runs."""
        with self._cond:
            return list(self.video), list(self.audio_blocks)

    def audio(self) -> np.ndarray:
        """Every audio sample received, in arrival order, as one float32 array."""
        with self._cond:
            blocks = [item.samples for item in self.audio_blocks]
        return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)

    def audio_times_ns(self) -> np.ndarray:
        """The capture time of each audio block's first sample, in arrival order."""
        with self._cond:
            return np.array([item.t_capture_ns for item in self.audio_blocks], np.int64)

    def audio_seqs(self) -> list[int]:
        with self._cond:
            return [item.seq for item in self.audio_blocks]

