"""Head motion, blinks and gaze: random processes that never look at the audio.

Each is drawn from the clip's own random stream (`rng_for(seed, clip, "motion")`), so they are
independent of the speech by construction; the test measures that they do not correlate with
the envelope while the mouth does.

- Head pose: per-clip offsets plus smooth noise (white noise through a second-order low-pass,
  0.2..0.6 Hz corner), yaw/pitch/roll in degrees, and a small sway (translation, in inter-ocular
  units).
- Blinks: a Poisson process (the speaker's rate, times the emotion's factor), at least 0.6 s
  apart; each blink closes in 3 frames, stays shut 1, opens in 4.
- Gaze: fixations of 0.3..2 s (exponential) at random targets, saccades of 2 frames between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamav.corpus.synth.factors import FPS

_BLINK_SHAPE = np.array([0.35, 0.75, 1.0, 1.0, 0.8, 0.5, 0.25, 0.08])


@dataclass(frozen=True)
class MotionStyle:
    """A speaker's habits: head-motion amplitudes (deg), blink rate (per minute)."""

    yaw_sd_deg: float = 4.0
    pitch_sd_deg: float = 2.5
    roll_sd_deg: float = 2.0
    blinks_per_min: float = 17.0
    gaze_sd: float = 0.3


@dataclass(frozen=True)
class MotionTraces:
    head_deg: np.ndarray  # (T, 3) float32 yaw, pitch, roll
    head_shift: np.ndarray  # (T, 2) float32 sway, inter-ocular units
    blink: np.ndarray  # (T,) float32 0..1 (1 = closed)
    gaze: np.ndarray  # (T, 2) float32 gaze_x, gaze_y in -1..1


def smooth_noise(rng: np.random.Generator, n: int, corner_hz: float) -> np.ndarray:
    """Unit-variance noise through a two-pole low-pass at `corner_hz` (after a 2 s warm-up)."""
    warm = 2 * FPS
    x = rng.standard_normal(n + warm)
    a = np.exp(-2.0 * np.pi * corner_hz / FPS)
    y1 = np.zeros_like(x)
    y2 = np.zeros_like(x)
    s1 = s2 = 0.0
    for i, value in enumerate(x):
        s1 = a * s1 + (1.0 - a) * value
        s2 = a * s2 + (1.0 - a) * s1
        y1[i], y2[i] = s1, s2
    out = y2[warm:]
    sd = float(out.std())
    return out / sd if sd > 1e-9 else out


def head_motion(rng: np.random.Generator, n: int, style: MotionStyle, offset_deg: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    clip_offset = rng.normal(0.0, [3.0, 2.0, 1.5])
    sds = np.array([style.yaw_sd_deg, style.pitch_sd_deg, style.roll_sd_deg])
    noise = np.stack([smooth_noise(rng, n, float(rng.uniform(0.2, 0.6))) for _ in range(3)], 1)
    head = offset_deg + clip_offset + noise * sds * 0.7
    head = np.clip(head, [-20.0, -14.0, -12.0], [20.0, 14.0, 12.0])
    shift = np.stack([smooth_noise(rng, n, 0.3) for _ in range(2)], 1) * [0.04, 0.025]
    return head.astype(np.float32), shift.astype(np.float32)


def blinks(rng: np.random.Generator, n: int, per_minute: float) -> np.ndarray:
    out = np.zeros(n, np.float32)
    mean_gap = 60.0 * FPS / max(per_minute, 1e-3)
    t = float(rng.uniform(0.1, 1.0) * mean_gap)
    while t < n:
        start = int(t)
        end = min(start + len(_BLINK_SHAPE), n)
        out[start:end] = np.maximum(out[start:end], _BLINK_SHAPE[: end - start])
        t += max(0.6 * FPS, float(rng.exponential(mean_gap)))
    return out


def gaze_path(rng: np.random.Generator, n: int, sd: float, offset: np.ndarray) -> np.ndarray:
    out = np.zeros((n, 2), np.float32)
    position = offset + rng.normal(0.0, sd * 0.5, 2)
    t = 0
    while t < n:
        dwell = int(np.clip(rng.exponential(0.8) * FPS, 0.3 * FPS, 2.0 * FPS))
        out[t: t + dwell] = position
        target = offset + rng.normal(0.0, [sd, sd * 0.6])
        if t + dwell < n:  # a two-frame saccade
            out[t + dwell] = (position + target) / 2.0
        position = target
        t += dwell + 1
    return np.clip(out, -1.0, 1.0)


def motion_traces(rng: np.random.Generator, n: int, style: MotionStyle, head_offset_deg:
                  np.ndarray, gaze_offset: np.ndarray, blink_rate_factor: float) -> MotionTraces:
    head, shift = head_motion(rng, n, style, head_offset_deg)
    blink = blinks(rng, n, style.blinks_per_min * blink_rate_factor)
    gaze = gaze_path(rng, n, style.gaze_sd, gaze_offset)
    return MotionTraces(head_deg=head, head_shift=shift, blink=blink, gaze=gaze)
