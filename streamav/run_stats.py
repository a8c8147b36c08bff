"""What a live run counts and measures, and the `stats` message built from it.

Per-stage latencies (ms, p50 and p99) and the audio-video skew are kept twice: for the current
stats window (reset each time a `stats` message goes out) and for the whole run (the final
message). Stages:

- decode: the source's time to decode one frame (PyAV or OpenCV `retrieve`)
- queue: capture time to the worker taking the frame from the ring
- face: the face front end (MediaPipe landmarks and the aligned crop)
- spectrum: the causal power spectrum of the frame's audio window
- model: the MDVAE step (encoders, one causal step, decoders, emotion head), frames with a face
- publish: the publisher's queue to the socket (enqueue to sent)
- capture_to_publish: the frame's capture time to its `face` message leaving the socket
"""

from __future__ import annotations

import threading
from collections import deque

from streamav.clock import NS_PER_S, now_ns
from streamav.latency import LatencyHistogram, StageLatencies
from streamav.wire.messages import Percentiles, Stats

# capture_to_publish: capture → the frame's `face` message sent; capture_to_emotion: capture →
# its `emotion` message sent (the model's result; frames with a face and a model only).
STAGES = ("decode", "queue", "face", "spectrum", "model", "publish", "capture_to_publish",
          "capture_to_emotion")


class RunStats:
    """Counters and histograms of one run; safe to update from the worker and publisher threads."""

    def __init__(self) -> None:
        self.latency = StageLatencies(STAGES)
        self.skew_window = LatencyHistogram()
        self.skew_total = LatencyHistogram()
        self.frames = 0
        self.faces_found = 0
        self._lock = threading.Lock()
        self.t_start_ns = now_ns()
        self._window_start_ns = self.t_start_ns
        self._window_frames = 0
        self._recent_done_ns: deque[int] = deque(maxlen=30)

    def mark_start(self) -> None:
        """The sources start now: fps and elapsed time count from here, not from set-up."""
        with self._lock:
            self.t_start_ns = self._window_start_ns = now_ns()

    def recent_fps(self) -> float | None:
        """Frames per second over the last 30 frames (for the preview); None before two frames."""
        recent = tuple(self._recent_done_ns)
        if len(recent) < 2 or recent[-1] == recent[0]:
            return None
        return (len(recent) - 1) * NS_PER_S / (recent[-1] - recent[0])

    def frame_done(self, face_found: bool, skew_ns: int | None) -> None:
        with self._lock:
            self.frames += 1
            self._window_frames += 1
            self.faces_found += int(face_found)
            self._recent_done_ns.append(now_ns())
        if skew_ns is not None:
            self.skew_window.record_ns(skew_ns)
            self.skew_total.record_ns(skew_ns)

    def window_due(self, interval_s: float, t_now_ns: int | None = None) -> bool:
        """Whether the stats window is `interval_s` old (at `t_now_ns`, default now)."""
        t_now_ns = now_ns() if t_now_ns is None else t_now_ns
        return t_now_ns - self._window_start_ns >= interval_s * NS_PER_S

    def payload(self, *, final: bool, dropped_frames: int, audio_overflows: int,
                nonfinite_frames: int, model_engine: str | None = None,
                audio_samples_lost: int, publish_dropped: int, has_audio: bool = True,
                stale_dropped: int = 0) -> Stats:
        """The `stats` message: this window's numbers, or the whole run's when `final`."""
        t_now = now_ns()
        with self._lock:
            if final:
                elapsed_ns, frames = t_now - self.t_start_ns, self.frames
            else:
                elapsed_ns, frames = t_now - self._window_start_ns, self._window_frames
                self._window_start_ns, self._window_frames = t_now, 0
        if final:
            latency = self.latency.total_summary_ms()
            skew = self.skew_total
        else:
            latency = self.latency.window_summary_ms(reset=True)
            skew = self.skew_window
        payload = Stats(
            final=final,
            fps=frames / (elapsed_ns / NS_PER_S) if elapsed_ns > 0 else 0.0,
            frames=self.frames,
            faces_found=self.faces_found,
            dropped_frames=dropped_frames,
            stale_dropped=stale_dropped,
            audio_overflows=audio_overflows,
            audio_samples_lost=audio_samples_lost,
            has_audio=has_audio,
            publish_dropped=publish_dropped,
            nonfinite_frames=nonfinite_frames,
            model_engine=model_engine,
            av_skew_ms=skew.percentile_ms(50),
            av_skew_p99_ms=skew.percentile_ms(99),
            latency_ms={stage: Percentiles(p50=p["p50"], p99=p["p99"])
                        for stage, p in latency.items()},
            elapsed_s=(t_now - self.t_start_ns) / NS_PER_S,
        )
        if not final:
            skew.reset()
        return payload
