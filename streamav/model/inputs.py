"""The model's input contract, in one place and without torch: what the step reads per frame.

    face      the aligned RGB crop, FACE_SIZE_PX x FACE_SIZE_PX uint8, scaled by FACE_SCALE and
              shifted by -FACE_OFFSET to -0.5..0.5, channels first (`face_to_model`)
    spectrum  the power spectrum of a 1024-sample window (N_FFT) of audio at SAMPLE_RATE_HZ:
              SPECTRUM_BINS bins

The live stage, the feature caches, the engines' parity frames and the training batches all
convert with `face_to_model`. The front end produces these inputs under its own config ([face]
crop_size_px, [spectrum] sample_rate_hz and n_fft): `check_frontend` compares the two when a run
with the model starts, so a front end configured for other inputs fails at once with the reason
instead of feeding the model what it was not trained on.
"""

from __future__ import annotations

import numpy as np

from streamav.errors import InputError

FACE_SIZE_PX = 64  # the aligned RGB crop is FACE_SIZE_PX x FACE_SIZE_PX
FACE_SCALE = 1.0 / 255.0  # uint8 → 0..1, then minus FACE_OFFSET: -0.5..0.5
FACE_OFFSET = 0.5
SAMPLE_RATE_HZ = 16_000  # the audio the spectra are computed on
N_FFT = 1024  # 64 ms at 16 kHz
SPECTRUM_BINS = N_FFT // 2 + 1  # 513: the power spectrum of one real FFT


def face_to_model(crop_rgb: np.ndarray) -> np.ndarray:
    """(..., 64, 64, 3) uint8 → (..., 3, 64, 64) float32 in -0.5..0.5."""
    scaled = crop_rgb.astype(np.float32) * FACE_SCALE - FACE_OFFSET
    return np.moveaxis(scaled, -1, -3)


def frontend_mismatches(crop_size_px: int, sample_rate_hz: int, n_fft: int) -> list[str]:
    """What a front end with these settings makes that the model does not read (empty: none)."""
    problems = []
    if crop_size_px != FACE_SIZE_PX:
        problems.append(f"[face] crop_size_px is {crop_size_px}, the model reads "
                        f"{FACE_SIZE_PX} x {FACE_SIZE_PX} faces")
    if sample_rate_hz != SAMPLE_RATE_HZ:
        problems.append(f"[spectrum] sample_rate_hz is {sample_rate_hz}, the model reads spectra "
                        f"of {SAMPLE_RATE_HZ} Hz audio")
    if n_fft // 2 + 1 != SPECTRUM_BINS:
        problems.append(f"[spectrum] n_fft is {n_fft} ({n_fft // 2 + 1} bins), the model reads "
                        f"{SPECTRUM_BINS}-bin spectra (n_fft {N_FFT})")
    return problems


def check_frontend(crop_size_px: int, sample_rate_hz: int, n_fft: int) -> None:
    """InputError naming every setting of the front end that the model cannot read."""
    problems = frontend_mismatches(crop_size_px, sample_rate_hz, n_fft)
    if problems:
        raise InputError("the front end does not make what the model reads: "
                         + "; ".join(problems) + " (keep those settings, or use --no-model)")
