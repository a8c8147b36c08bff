"""A synthetic audiovisual source for tests and demos without files or devices.

Video: a drawn face whose mouth opens with the audio's syllable envelope. Audio: a harmonic,
voice-like tone (a 4 Hz syllable rhythm) plus a little noise. Everything is a deterministic
function of the seed and of time, so tests can compare against the exact signal
(`SyntheticSource.audio_signal`). Timestamps follow the nominal rates exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamav.clock import NS_PER_S
from streamav.sources.base import MODEL_SAMPLE_RATE_HZ, AVSink, ReplayingSource, StreamThreads


@dataclass(frozen=True)
class SyntheticConfig:
    duration_s: float = 2.0
    fps: float = 30.0
    width_px: int = 320
    height_px: int = 240
    audio_block_samples: int = 320  # 20 ms blocks, like a sound card
    seed: int = 0
    video: bool = True
    audio: bool = True


def syllable_envelope(t_s: np.ndarray) -> np.ndarray:
    """0..1, four syllables a second."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t_s)


class SyntheticSource(ReplayingSource):
    """Generates `duration_s` of video and audio, in real time or as fast as the sink takes it."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), *, realtime: bool = False,
                 anchor_ns: int | None = None) -> None:
        self.config = config
        self.realtime = realtime
        self.anchor_ns = anchor_ns
        self.name = "synthetic"
        self.has_video = config.video
        self.has_audio = config.audio
        self._threads = StreamThreads("synthetic")

    @property
    def n_frames(self) -> int:
        return int(round(self.config.duration_s * self.config.fps))

    def audio_signal(self) -> np.ndarray:
        """The whole audio track (float32, 16 kHz): what the source delivers, block by block."""
        n = int(round(self.config.duration_s * MODEL_SAMPLE_RATE_HZ))
        t_s = np.arange(n) / MODEL_SAMPLE_RATE_HZ
        f0_hz = 140.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t_s)
        phase = 2 * np.pi * np.cumsum(f0_hz) / MODEL_SAMPLE_RATE_HZ
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        noise = np.random.default_rng(self.config.seed).normal(0.0, 0.01, n)
        return (0.3 * syllable_envelope(t_s) * voice + noise).astype(np.float32)

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` (BGR uint8): a face with the mouth opened by the syllable envelope."""
        cfg = self.config
        image = np.full((cfg.height_px, cfg.width_px, 3), (60, 90, 120), np.uint8)
        cx, cy = cfg.width_px // 2, cfg.height_px // 2
        scale = cfg.height_px / 240
        opening = float(syllable_envelope(np.array(index / cfg.fps)))
        cv2.ellipse(image, (cx, cy), (int(60 * scale), int(80 * scale)), 0, 0, 360,
                    (140, 170, 210), -1)
        for dx in (-25, 25):
            cv2.circle(image, (cx + int(dx * scale), cy - int(20 * scale)), int(6 * scale),
                       (40, 30, 30), -1)
        cv2.ellipse(image, (cx, cy + int(35 * scale)),
                    (int(20 * scale), max(1, int((2 + 14 * opening) * scale))), 0, 0, 360,
                    (50, 40, 120), -1)
        return image

    def _wait_until(self, t_ns: int) -> None:
        if self.realtime:
            self._threads.sleep_until(t_ns)

    def _run_video(self, sink: AVSink) -> None:
        assert self.anchor_ns is not None
        for index in range(self.n_frames):
            if self._threads.stopped.is_set():
                return
            t_ns = self.anchor_ns + int(round(index * NS_PER_S / self.config.fps))
            self._wait_until(t_ns)
            sink.write_video(index, t_ns, self.frame(index), index / self.config.fps)

    def _run_audio(self, sink: AVSink) -> None:
        assert self.anchor_ns is not None
        signal = self.audio_signal()
        block = self.config.audio_block_samples
        for seq, start in enumerate(range(0, signal.size, block)):
            if self._threads.stopped.is_set():
                return
            samples = signal[start:start + block]
            t_ns = self.anchor_ns + start * NS_PER_S // MODEL_SAMPLE_RATE_HZ
            self._wait_until(t_ns + samples.size * NS_PER_S // MODEL_SAMPLE_RATE_HZ)
            sink.write_audio(seq, t_ns, samples)
