"""The AV ring buffer: preallocated, timestamped storage between capture and the worker.

`VideoRing` holds the last N frames, `AudioRing` the last few seconds of 16 kHz mono samples with
the capture time of every block. `AVRing` pairs them and is the `AVSink` that sources write into.

Two modes:
- real-time (`blocking=False`): writers never wait; the oldest data is overwritten and counted.
  The worker takes the newest frame (skipping older ones, counted) and the causal audio window
  that ends at that frame's capture time, or at the newest sample if audio lags (the skew).
- offline (`blocking=True`, for files): writers wait for space, the worker reads every frame in
  order and waits until the audio covering it has arrived. Nothing is dropped; the result depends
  only on the input, not on thread timing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from streamav.clock import NS_PER_S, now_ns


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One captured frame as the worker sees it (its own copy)."""

    seq: int
    t_capture_ns: int  # what results inherit: see VideoRing
    t_media_ns: int  # the source's own timestamp: what the audio is aligned to
    pts_s: float | None
    decode_ns: int
    image_bgr: np.ndarray  # (H, W, 3) uint8


@dataclass(frozen=True, slots=True)
class AudioWindow:
    """The causal audio window for one frame."""

    samples: np.ndarray  # (window_samples,) float32, zeros where no audio exists
    end_index: int  # index (exclusive) of the last sample, counted from the stream's first sample
    skew_ns: int  # frame time minus the time of the window's end: > 0 when audio lags video


class _EndOfStream:
    """Closing (drain, then end) and aborting (end now, wake everyone) a ring's condition."""

    _cond: threading.Condition
    _closed: bool
    _aborted: bool

    def close(self) -> None:
        """No more data will come; readers drain what is left, then see the end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop now: wake blocked writers and readers; later writes are ignored."""
        with self._cond:
            self._closed = True
            self._aborted = True
            self._cond.notify_all()


class VideoRing(_EndOfStream):
    """A fixed number of frame slots, allocated on the first frame (whose size fixes the shape).

    Each frame keeps the source's timestamp (`t_media_ns`, which aligns it with the audio) and
    the time it entered the ring. In real time, a frame's capture time is the source's
    timestamp. Offline, a file is read faster than it plays, so the source's timestamps (anchor
    + container time) run ahead of the clock; there the capture time is the moment the decoded
    frame entered the ring, which keeps capture-to-publish latencies meaningful.
    """

    def __init__(self, capacity_frames: int, blocking: bool) -> None:
        if capacity_frames < 1:
            raise ValueError("capacity_frames must be >= 1")
        self.capacity_frames = capacity_frames
        self.blocking = blocking
        self._cond = threading.Condition()
        self._slots: np.ndarray | None = None  # (capacity, H, W, 3) uint8
        self._seq = np.zeros(capacity_frames, dtype=np.int64)
        self._t_ns = np.zeros(capacity_frames, dtype=np.int64)
        self._t_entry_ns = np.zeros(capacity_frames, dtype=np.int64)
        self._pts_s = np.full(capacity_frames, np.nan)
        self._decode_ns = np.zeros(capacity_frames, dtype=np.int64)
        self._written = 0  # frames written in total
        self._read = 0  # index of the oldest frame not yet taken
        self._closed = False
        self._aborted = False
        self.overwritten_frames = 0  # real-time: frames overwritten before the worker took them
        self.skipped_frames = 0  # real-time: frames passed over to take a newer one

    @property
    def dropped_frames(self) -> int:
        return self.overwritten_frames + self.skipped_frames

    def write(self, seq: int, t_capture_ns: int, image_bgr: np.ndarray, pts_s: float | None,
              decode_ns: int = 0) -> None:
        with self._cond:
            if self._aborted:
                return
            if self._slots is None or self._slots.shape[1:] != image_bgr.shape:
                self._allocate(image_bgr.shape)
            if self._written - self._read >= self.capacity_frames:
                if self.blocking:
                    self._cond.wait_for(
                        lambda: self._written - self._read < self.capacity_frames or self._aborted)
                    if self._aborted:
                        return
                else:
                    self._read += 1
                    self.overwritten_frames += 1
            slot = self._written % self.capacity_frames
            assert self._slots is not None
            np.copyto(self._slots[slot], image_bgr)
            self._seq[slot] = seq
            self._t_ns[slot] = t_capture_ns
            self._t_entry_ns[slot] = now_ns()
            self._pts_s[slot] = np.nan if pts_s is None else pts_s
            self._decode_ns[slot] = decode_ns
            self._written += 1
            self._cond.notify_all()

    def _allocate(self, shape: tuple[int, ...]) -> None:
        """(Re)allocate the slots for a new frame size; frames of the old size are dropped."""
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"video frames must be (H, W, 3), got {shape}")
        if self._slots is not None:
            pending = self._written - self._read
            self.overwritten_frames += pending
            self._read = self._written
        self._slots = np.zeros((self.capacity_frames, *shape), dtype=np.uint8)

    @property
    def closed(self) -> bool:
        return self._closed

    def read_next(self, timeout_s: float | None = None) -> VideoFrame | None:
        """The oldest frame not yet taken (offline mode). None at the end or on timeout."""
        return self._read_frame(newest=False, timeout_s=timeout_s)

    def read_newest(self, timeout_s: float | None = None) -> VideoFrame | None:
        """The newest frame, skipping older unread ones (real-time mode). None at end or timeout."""
        return self._read_frame(newest=True, timeout_s=timeout_s)

    def _read_frame(self, newest: bool, timeout_s: float | None) -> VideoFrame | None:
        with self._cond:
            available = self._cond.wait_for(
                lambda: self._written > self._read or self._closed, timeout=timeout_s)
            if not available or self._written == self._read or self._aborted:
                return None
            if newest:
                self.skipped_frames += self._written - self._read - 1
                self._read = self._written - 1
            slot = self._read % self.capacity_frames
            assert self._slots is not None
            pts = float(self._pts_s[slot])
            frame = VideoFrame(
                seq=int(self._seq[slot]),
                t_capture_ns=int(self._t_entry_ns[slot] if self.blocking else self._t_ns[slot]),
                t_media_ns=int(self._t_ns[slot]),
                pts_s=None if np.isnan(pts) else pts,
                decode_ns=int(self._decode_ns[slot]),
                image_bgr=self._slots[slot].copy(),
            )
            self._read += 1
            self._cond.notify_all()
            return frame


class AudioRing(_EndOfStream):
    """The last `capacity_samples` samples, and the capture time of each written block."""

    _N_ANCHORS = 1024  # capture-time anchors kept (one per written block)

    def __init__(self, capacity_samples: int, sample_rate_hz: int, blocking: bool) -> None:
        self.capacity_samples = capacity_samples
        self.sample_rate_hz = sample_rate_hz
        self.blocking = blocking
        self._cond = threading.Condition()
        self._buffer = np.zeros(capacity_samples, dtype=np.float32)
        self._anchor_index = np.zeros(self._N_ANCHORS, dtype=np.int64)
        self._anchor_t_ns = np.zeros(self._N_ANCHORS, dtype=np.int64)
        self._n_anchors = 0  # anchors written in total
        self._written = 0  # samples written in total
        self._low_water = 0  # offline: the oldest sample the reader still needs
        self._closed = False
        self._aborted = False
        self.overwritten_samples = 0  # samples lost before a reader could use them

    @property
    def written_samples(self) -> int:
        return self._written

    def write(self, t_capture_ns: int, samples: np.ndarray) -> int | None:
        """Append a block whose first sample was captured at `t_capture_ns`. Returns the index
        of its first sample (counted from the stream's first sample), or None when nothing was
        stored (an empty block, or the ring was aborted)."""
        n = int(samples.shape[0])
        if n == 0:
            return None
        if n > self.capacity_samples:
            raise ValueError(f"audio block of {n} samples exceeds the ring ({self.capacity_samples})")
        with self._cond:
            if self._aborted:
                return None
            if self.blocking:
                self._cond.wait_for(
                    lambda: self._written + n - self._low_water <= self.capacity_samples
                    or self._aborted)
                if self._aborted:
                    return None
            index = self._written
            start = self._written % self.capacity_samples
            first = min(n, self.capacity_samples - start)
            self._buffer[start:start + first] = samples[:first]
            if first < n:
                self._buffer[:n - first] = samples[first:]
            anchor = self._n_anchors % self._N_ANCHORS
            self._anchor_index[anchor] = self._written
            self._anchor_t_ns[anchor] = t_capture_ns
            self._n_anchors += 1
            self._written += n
            self._cond.notify_all()
        return index

    def _index_at(self, t_ns: int) -> int | None:
        """The sample index captured at `t_ns` (rounded), from the newest anchor not after it
        (a binary search: the anchors' capture times grow block by block)."""
        n_kept = min(self._n_anchors, self._N_ANCHORS)
        if n_kept == 0:
            return None
        oldest = self._n_anchors - n_kept  # extrapolate backwards from it if t is earlier
        start = oldest % self._N_ANCHORS
        head = self._anchor_t_ns[start:start + n_kept]  # the kept anchors in write order ...
        count = int(np.searchsorted(head, t_ns, side="right"))  # (how many are <= t_ns)
        if count == head.shape[0] and head.shape[0] < n_kept:  # ... and those wrapped around
            tail = self._anchor_t_ns[:n_kept - head.shape[0]]
            count += int(np.searchsorted(tail, t_ns, side="right"))
        chosen = oldest + max(count - 1, 0)
        a = chosen % self._N_ANCHORS
        offset = (t_ns - int(self._anchor_t_ns[a])) * self.sample_rate_hz / NS_PER_S
        return int(self._anchor_index[a]) + int(round(offset))

    def window_ending_at(self, t_ns: int, window_samples: int,
                         timeout_s: float | None = None) -> AudioWindow:
        """The `window_samples` samples captured just before `t_ns` (causal).

        Offline: waits until audio up to `t_ns` has arrived (or the stream ended). Real-time:
        never waits; if audio lags, the window ends at the newest sample and `skew_ns` says by
        how much. Samples that were never captured (before the stream, or overwritten) are 0.
        """
        with self._cond:
            if self.blocking:
                self._cond.wait_for(lambda: self._offline_window_ready(t_ns, window_samples),
                                    timeout=timeout_s)
            wanted_end = self._index_at(t_ns)
            if wanted_end is None:  # no audio yet at all
                return AudioWindow(np.zeros(window_samples, np.float32), 0, 0)
            end = min(wanted_end, self._written)
            skew_ns = int((wanted_end - end) * NS_PER_S / self.sample_rate_hz)
            start = end - window_samples
            samples = self._copy_range(start, end)
            return AudioWindow(samples, end, skew_ns)

    def _offline_window_ready(self, t_ns: int, window_samples: int) -> bool:
        """Offline wait predicate. Lets the writer reuse everything older than the window."""
        if self._closed:
            return True
        end = self._index_at(t_ns)
        if end is None:
            return False
        if end - window_samples > self._low_water:
            self._low_water = end - window_samples
            self._cond.notify_all()
        return self._written >= end

    def _copy_range(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) as a new array; indices never written or overwritten read as 0."""
        out = np.zeros(end - start, dtype=np.float32)
        oldest = max(0, self._written - self.capacity_samples)
        lo, hi = max(start, oldest), min(end, self._written)
        self.overwritten_samples += max(0, min(end, oldest) - max(start, 0))
        if hi > lo:  # at most two slices of the circular buffer
            cap = self.capacity_samples
            first = lo % cap
            n = hi - lo
            head = min(n, cap - first)
            out[lo - start:lo - start + head] = self._buffer[first:first + head]
            if head < n:
                out[lo - start + head:hi - start] = self._buffer[:n - head]
        return out


class AVRing:
    """The `AVSink` sources write into: one video ring, one audio ring, counters and events."""

    def __init__(self, video_capacity_frames: int, audio_capacity_samples: int,
                 sample_rate_hz: int, blocking: bool,
                 on_status: Callable[[str, str], None] | None = None,
                 on_audio: Callable[[int, np.ndarray], None] | None = None) -> None:
        """`on_audio(first_index, samples)`, if given, is called (in the writing source's thread,
        after the block is stored) with every audio block the ring stored: `streamav live
        --record` writes these samples, which are exactly those the worker's windows read."""
        self.video = VideoRing(video_capacity_frames, blocking)
        self.audio = AudioRing(audio_capacity_samples, sample_rate_hz, blocking)
        self.audio_overflows = 0
        self.video_stale_frames = 0  # frames sources dropped as older than the staleness bound
        self.audio_blocks = 0
        self.ended: set[str] = set()
        self._on_status = on_status
        self._on_audio = on_audio

    def write_video(self, seq: int, t_capture_ns: int, image_bgr: np.ndarray, pts_s: float | None,
                    decode_ns: int = 0) -> None:
        self.video.write(seq, t_capture_ns, image_bgr, pts_s, decode_ns)

    def write_audio(self, seq: int, t_capture_ns: int, samples: np.ndarray) -> None:
        self.audio_blocks += 1
        index = self.audio.write(t_capture_ns, samples)
        if index is not None and self._on_audio is not None:
            self._on_audio(index, samples)

    def audio_overflow(self, count: int = 1) -> None:
        self.audio_overflows += count

    def video_stale(self, count: int = 1) -> None:
        self.video_stale_frames += count

    def end_of_stream(self, kind: str) -> None:
        self.ended.add(kind)
        (self.video if kind == "video" else self.audio).close()

    def status(self, state: str, reason: str = "") -> None:
        if self._on_status is not None:
            self._on_status(state, reason)

    def abort(self) -> None:
        self.video.abort()
        self.audio.abort()
