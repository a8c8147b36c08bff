"""What the model step reads, in one place and without torch: the face crop's size and scaling,
and the spectrum's bins. The live stage, the feature caches and the engines' parity frames all
convert with `face_to_model`."""

from __future__ import annotations

import numpy as np

FACE_SIZE_PX = 64  # the aligned RGB crop is FACE_SIZE_PX x FACE_SIZE_PX
FACE_SCALE = 1.0 / 255.0  # uint8 → 0..1, then minus FACE_OFFSET: -0.5..0.5
FACE_OFFSET = 0.5
SPECTRUM_BINS = 513  # power spectrum of a 1024-sample window (n_fft 1024)


def face_to_model(crop_rgb: np.ndarray) -> np.ndarray:
    """(..., 64, 64, 3) uint8 → (..., 3, 64, 64) float32 in -0.5..0.5."""
    scaled = crop_rgb.astype(np.float32) * FACE_SCALE - FACE_OFFSET
    return np.moveaxis(scaled, -1, -3)
