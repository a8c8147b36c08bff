"""The audio front end: one causal power spectrum per video frame (DESIGN section 1).

For a frame captured at time t, the window is the 1024 samples (64 ms at 16 kHz) that end at t,
weighted by a periodic Hann window; the feature is the power |X|^2 of its 1024-point real FFT,
513 bins. Peak normalisation of the whole signal (as in the paper's offline pipeline) is not
causal, so it is not done here: gain is the model's business.

`offline_power_spectrogram` computes the same features on a whole signal at once; it is the
reference that the streaming path must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpectrumConfig:
    sample_rate_hz: int = 16_000
    window_samples: int = 1024  # 64 ms
    n_fft: int = 1024
    hop_samples: int = 533  # 33.3 ms: one spectrum per 30 fps frame (offline framing only)

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1


def hann_window(window_samples: int) -> np.ndarray:
    """Periodic Hann window (as torch.hann_window and scipy's 'hann' for spectral analysis)."""
    n = np.arange(window_samples)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / window_samples)).astype(np.float64)


class CausalPowerSpectrum:
    """Streaming stage: `step(window) -> (n_bins,) float32 power spectrum`."""

    def __init__(self, config: SpectrumConfig = SpectrumConfig()) -> None:
        self.config = config
        self._window = hann_window(config.window_samples)

    def start(self) -> None:
        """Nothing to open; present for the stage interface."""

    def stop(self) -> None:
        """Nothing to close; present for the stage interface."""

    def reset(self) -> None:
        """Nothing carried between frames (each window stands alone); present for the stage
        interface (streamav.stage.Stage)."""

    def step(self, samples: np.ndarray) -> np.ndarray:
        if samples.shape != (self.config.window_samples,):
            raise ValueError(
                f"expected {self.config.window_samples} samples, got shape {samples.shape}")
        spectrum = np.fft.rfft(samples.astype(np.float64) * self._window, n=self.config.n_fft)
        return (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)

    @staticmethod
    def level_dbfs(samples: np.ndarray) -> float:
        """RMS level of the window in dB full scale (for meters); -120 for silence."""
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        return 20.0 * np.log10(max(rms, 1e-6))


def offline_power_spectrogram(signal: np.ndarray, end_indices: np.ndarray,
                              config: SpectrumConfig = SpectrumConfig()) -> np.ndarray:
    """Reference: power spectra of whole-signal windows ending (exclusive) at each end index.

    The signal is zero-padded in front so that windows before its start read zeros, exactly as
    the streaming path does. Returns (len(end_indices), n_bins) float32.
    """
    n = config.window_samples
    padded = np.concatenate([np.zeros(n, dtype=np.float64), signal.astype(np.float64),
                             np.zeros(n, dtype=np.float64)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, n)
    starts = np.asarray(end_indices, dtype=np.int64)  # window [end - n, end) starts at `end` in padded
    spectra = np.fft.rfft(frames[starts] * hann_window(n), n=config.n_fft, axis=-1)
    return (np.abs(spectra) ** 2).astype(np.float32)
