"""A clip's soundtrack from its speech: silence around it, a breath before it, a noise floor.

The breath and the noise are audio-only: the lips are driven by the speech alone, so neither
moves the face. Returns both the mixed track and the speech on the same time line (for the
lips and the traces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamav.corpus.synth.audio_features import frames_for_samples, samples_for_frames
from streamav.corpus.synth.factors import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Soundtrack:
    audio: np.ndarray  # (N,) float32: what the clip's audio track holds
    speech: np.ndarray  # (N,) float32: the speech alone, same time line
    breath: np.ndarray  # (N,) float32: the breath alone
    n_frames: int  # video frames the track spans (N = samples_for_frames(n_frames))
    speech_start_s: float


def _band_noise(rng: np.random.Generator, n: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
    gain = ((freqs >= lo_hz) & (freqs <= hi_hz)).astype(float)
    gain *= 1.0 / np.sqrt(np.maximum(freqs, 100.0) / 100.0)  # pinkish
    out = np.fft.irfft(spectrum * gain, n)
    return out / max(float(np.abs(out).max()), 1e-12)


def mix(speech: np.ndarray, rng: np.random.Generator) -> Soundtrack:
    """Pad `speech` (16 kHz float32) with 0.35..0.6 s before and 0.3..0.5 s after, add a breath
    (an inhale of 0.25..0.45 s, ending just before the speech, 28..38 dB below the speech peak)
    and a noise floor (58..68 dB below it); the length is a whole number of video frames."""
    lead = int(rng.uniform(0.35, 0.6) * SAMPLE_RATE_HZ)
    tail = int(rng.uniform(0.3, 0.5) * SAMPLE_RATE_HZ)
    n_frames = frames_for_samples(lead + len(speech) + tail)
    total = samples_for_frames(n_frames)
    speech_line = np.zeros(total, np.float32)
    speech_line[lead: lead + len(speech)] = speech
    peak = max(float(np.abs(speech).max()), 1e-6)

    breath = np.zeros(total, np.float32)
    breath_len = int(rng.uniform(0.25, 0.45) * SAMPLE_RATE_HZ)
    breath_end = max(lead - int(rng.uniform(0.02, 0.08) * SAMPLE_RATE_HZ), breath_len)
    start = breath_end - breath_len
    envelope = np.sin(np.linspace(0.0, np.pi, breath_len)) ** 2
    level = peak * 10.0 ** (-rng.uniform(28.0, 38.0) / 20.0)
    breath[start:breath_end] = (level * envelope * _band_noise(rng, breath_len, 400.0, 3000.0))

    floor = peak * 10.0 ** (-rng.uniform(58.0, 68.0) / 20.0)
    noise = floor * _band_noise(rng, total, 50.0, 7800.0)
    audio = np.clip(speech_line + breath + noise, -1.0, 1.0).astype(np.float32)
    return Soundtrack(audio=audio, speech=speech_line, breath=breath.astype(np.float32),
                      n_frames=n_frames, speech_start_s=lead / SAMPLE_RATE_HZ)
