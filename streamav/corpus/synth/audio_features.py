"""Per-video-frame measurements of 16 kHz audio: envelope, band energies, pitch (YIN).

Video frame i shows time [i / 30, (i + 1) / 30) s; its audio measurements are centred on
(i + 0.5) / 30 s. The envelope is the RMS of exactly the frame's 1/30 s of audio; spectra and
pitch use a 1024-sample (64 ms) window centred on the same instant.
"""

from __future__ import annotations

import numpy as np

from streamav.corpus.synth.factors import FPS, SAMPLE_RATE_HZ

SPECTRUM_WINDOW = 1024


def samples_for_frames(n_frames: int) -> int:
    """Audio samples that span `n_frames` video frames (rounded up)."""
    return -(-n_frames * SAMPLE_RATE_HZ // FPS)


def frames_for_samples(n_samples: int) -> int:
    """Video frames needed to show `n_samples` of audio (rounded up)."""
    return -(-n_samples * FPS // SAMPLE_RATE_HZ)


def frame_rms(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """(T,) float32 RMS of each frame's own 1/30 s of audio (zeros past the end)."""
    edges = (np.arange(n_frames + 1) * SAMPLE_RATE_HZ) // FPS
    padded = np.zeros(max(int(edges[-1]), len(audio)) + 1, np.float64)
    padded[: len(audio)] = audio
    cumsum = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    energy = cumsum[edges[1:]] - cumsum[edges[:-1]]
    return np.sqrt(energy / np.diff(edges)).astype(np.float32)


def centred_windows(audio: np.ndarray, n_frames: int, window: int = SPECTRUM_WINDOW
                    ) -> np.ndarray:
    """(T, window) float64: `window` samples centred on each frame's centre (zero padded)."""
    centres = ((np.arange(n_frames) + 0.5) * SAMPLE_RATE_HZ / FPS).astype(np.int64)
    half = window // 2
    padded = np.zeros(max(len(audio), int(centres.max(initial=0)) + 1) + 2 * window)
    padded[window: window + len(audio)] = audio
    starts = centres - half + window
    index = starts[:, None] + np.arange(window)[None, :]
    return padded[index]


def band_energies(audio: np.ndarray, n_frames: int, bands_hz: list[tuple[float, float]]
                  ) -> np.ndarray:
    """(T, B) float64 power in each band of a Hann-windowed 1024-point spectrum per frame."""
    frames = centred_windows(audio, n_frames) * np.hanning(SPECTRUM_WINDOW)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 513)
    freqs = np.fft.rfftfreq(SPECTRUM_WINDOW, 1.0 / SAMPLE_RATE_HZ)
    return np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1)
                     for lo, hi in bands_hz], axis=1)


def yin_pitch(audio: np.ndarray, n_frames: int, fmin_hz: float = 60.0, fmax_hz: float = 500.0,
              threshold: float = 0.3, min_level_db: float = -40.0) -> np.ndarray:
    """(T,) float32 fundamental frequency in Hz by YIN (de Cheveigné & Kawahara 2002); 0 where
    the frame is unvoiced (no dip below `threshold`) or quieter than `min_level_db` re the
    loudest frame. Octave jumps away from the clip's median are folded back."""
    frames = centred_windows(audio, n_frames)  # (T, 1024)
    tau_min = int(SAMPLE_RATE_HZ / fmax_hz)
    tau_max = int(SAMPLE_RATE_HZ / fmin_hz)
    span = SPECTRUM_WINDOW - tau_max  # integration length
    head = frames[:, :span]
    n_fft = 2 * SPECTRUM_WINDOW
    cross = np.fft.irfft(np.conj(np.fft.rfft(head, n_fft, axis=1))
                         * np.fft.rfft(frames, n_fft, axis=1), n_fft, axis=1)[:, : tau_max + 1]
    sq = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_head = sq[:, span][:, None]
    energy_lag = sq[:, taus + span] - sq[:, taus]
    diff = np.maximum(energy_head + energy_lag - 2.0 * cross, 0.0)  # (T, tau_max + 1)
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    level = np.sqrt(sq[:, -1] / SPECTRUM_WINDOW)
    loud = 20.0 * np.log10(level / max(float(level.max()), 1e-12) + 1e-12) > min_level_db
    f0 = np.zeros(n_frames, np.float32)
    for t in range(n_frames):
        if not loud[t]:
            continue
        below = np.nonzero(cmnd[t, tau_min: tau_max] < threshold)[0]
        if len(below) == 0:
            continue
        tau = tau_min + int(below[0])
        while tau + 1 < tau_max and cmnd[t, tau + 1] < cmnd[t, tau]:
            tau += 1
        a, b, c = cmnd[t, tau - 1], cmnd[t, tau], cmnd[t, tau + 1]
        denom = a - 2.0 * b + c
        shift = 0.5 * (a - c) / denom if abs(denom) > 1e-12 else 0.0
        f0[t] = SAMPLE_RATE_HZ / (tau + float(np.clip(shift, -1.0, 1.0)))
    voiced = f0 > 0
    if voiced.sum() >= 3:
        median = float(np.median(f0[voiced]))
        f0[voiced & (f0 > 1.7 * median)] /= 2.0
        f0[voiced & (f0 < 0.6 * median)] *= 2.0
        f0[voiced] = np.clip(f0[voiced], fmin_hz, fmax_hz)
    return f0
