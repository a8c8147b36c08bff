"""Per-frame emotion features: the face's geometry and the voice's prosody (numpy, no torch).

The emotion estimator reads three groups of features per frame with a face:

- `geometry` (936): the 468 FaceMesh points in crop pixels (`mesh_crop_xy`, the alignment's
  similarity already removed, so head position, size and roll are gone), divided by the crop
  size. What is left is the face's shape (identity), expression and out-of-plane pose; the
  person's own baseline (`PersonBaseline`) removes most of the shape.
- `prosody` (13): from the frame's 513-bin power spectrum (64 ms window, 16 kHz): log energy,
  the shares of 8 log-spaced bands (80 Hz - 8 kHz), the spectral centroid, the cepstral pitch
  (log f0 over 70-400 Hz), its voicing strength, and a voiced flag. A silent or absent spectrum
  gives zeros and voiced 0.
- `w` (the MDVAE's static latent, posterior mean, `w_dim`): read from the model's step.

`GROUPS` names them in the order the estimator concatenates them.
"""

from __future__ import annotations

import numpy as np

from streamav.frontend.face import N_MESH_POINTS

GROUPS = ("geometry", "prosody", "w")
GEOMETRY_DIM = 2 * N_MESH_POINTS
PROSODY_NAMES = ("log_energy", *(f"band_{i}" for i in range(8)), "centroid_khz", "log_f0",
                 "voicing", "voiced")
PROSODY_DIM = len(PROSODY_NAMES)

_SAMPLE_RATE_HZ = 16_000
_N_FFT = 1024
_BIN_HZ = _SAMPLE_RATE_HZ / _N_FFT
_BAND_EDGES_HZ = np.geomspace(80.0, 8000.0, 9)
_BAND_BINS = [(int(lo / _BIN_HZ), max(int(lo / _BIN_HZ) + 1, int(hi / _BIN_HZ)))
              for lo, hi in zip(_BAND_EDGES_HZ[:-1], _BAND_EDGES_HZ[1:])]
_PITCH_QUEFRENCY = (int(_SAMPLE_RATE_HZ / 400.0), int(_SAMPLE_RATE_HZ / 70.0))  # samples
_SILENCE_POWER = 1e-6  # summed power below this is no audio (a zeroed or absent spectrum)
_VOICED_CEPSTRUM = 0.1  # cepstral peak above this is voiced speech


def geometry_features(mesh_crop_xy: np.ndarray, crop_size_px: int = 64) -> np.ndarray:
    """(..., 468, 2) crop pixels → (..., 936) float32 in crop widths."""
    mesh = np.asarray(mesh_crop_xy, np.float32)
    return (mesh / float(crop_size_px)).reshape(*mesh.shape[:-2], GEOMETRY_DIM)


def prosody_features(spectrum: np.ndarray) -> np.ndarray:
    """(..., 513) power spectra → (..., 13) float32 prosody features (see the module doc)."""
    power = np.asarray(spectrum, np.float64)
    lead = power.shape[:-1]
    power = power.reshape(-1, power.shape[-1])
    out = np.zeros((power.shape[0], PROSODY_DIM), np.float64)
    total = power.sum(axis=1)
    live = total > _SILENCE_POWER
    if live.any():
        p = power[live]
        t = total[live]
        out[live, 0] = np.log10(t)
        bands = np.stack([p[:, lo:hi].sum(axis=1) for lo, hi in _BAND_BINS], axis=1)
        out[live, 1:9] = np.log10(bands / t[:, None] + 1e-9) / 9.0 + 1.0  # 0 .. 1
        freqs = np.arange(p.shape[1]) * _BIN_HZ
        out[live, 9] = (p @ freqs) / t / 1000.0
        cepstrum = np.fft.irfft(np.log(p + 1e-10 * t[:, None]), axis=1)
        lo, hi = _PITCH_QUEFRENCY
        window = cepstrum[:, lo:hi + 1]
        peak = window.argmax(axis=1)
        strength = window[np.arange(len(peak)), peak]
        voiced = strength > _VOICED_CEPSTRUM
        out[live, 10] = np.where(voiced, np.log2(_SAMPLE_RATE_HZ / (lo + peak) / 100.0), 0.0)
        out[live, 11] = strength
        out[live, 12] = voiced
    return out.reshape(*lead, PROSODY_DIM).astype(np.float32)


def frame_features(groups: tuple[str, ...], *, mesh_crop_xy: np.ndarray | None,
                   spectrum: np.ndarray | None, w: np.ndarray | None,
                   crop_size_px: int = 64) -> np.ndarray:
    """The concatenated features of `groups` for one frame or a (T, ...) run of frames."""
    parts = []
    for group in groups:
        if group == "geometry":
            parts.append(geometry_features(mesh_crop_xy, crop_size_px))
        elif group == "prosody":
            parts.append(prosody_features(spectrum))
        elif group == "w":
            parts.append(np.asarray(w, np.float32))
        else:
            raise ValueError(f"unknown feature group {group!r} (known: {', '.join(GROUPS)})")
    return np.concatenate(parts, axis=-1)
