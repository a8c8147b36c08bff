"""The numbers the evaluation reports, as plain numpy functions: PSNR, log-spectral distance,
correlations (per latent dimension and cross-validated linear), mean and spread.

Conventions (docs/evaluation.md):
- Images are compared on a 0..1 scale (peak 1); PSNR is computed per frame and averaged over
  frames, and a frame whose images are identical counts as `PSNR_CAP_DB` (100 dB), so every
  reported PSNR is finite.
- Log-spectral distance (LSD) per frame is sqrt(mean over bins of (10 log10 P - 10 log10 P_hat)^2)
  in dB, after flooring both spectra at `LSD_RANGE_DB` below the clip's largest bin (quiet bins
  below that floor are noise the comparison should not weigh), averaged over frames.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

PSNR_CAP_DB = 100.0
LSD_RANGE_DB = 80.0


def psnr_db(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """(N, ...) images on a 0..1 scale → (N,) per-image PSNR in dB, capped at PSNR_CAP_DB."""
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    est = np.asarray(estimate, np.float64).reshape(len(estimate), -1)
    mse = np.mean((ref - est) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        value = -10.0 * np.log10(mse)
    return np.minimum(value, PSNR_CAP_DB)


def uint8_to_unit(crops: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 → float32 0..1, same layout."""
    return np.asarray(crops, np.float32) / 255.0


def model_face_to_unit(face: np.ndarray) -> np.ndarray:
    """(..., 3, H, W) model faces in -0.5..0.5 → (..., H, W, 3) float32 0..1."""
    return np.moveaxis(np.clip(np.asarray(face, np.float32) + 0.5, 0.0, 1.0), -3, -1)


def log_spectral_distance_db(reference: np.ndarray, estimate: np.ndarray,
                             range_db: float = LSD_RANGE_DB) -> np.ndarray:
    """(T, F) power spectra of one clip → (T,) per-frame LSD in dB (both floored alike)."""
    ref = np.asarray(reference, np.float64)
    est = np.asarray(estimate, np.float64)
    peak = max(float(ref.max(initial=0.0)), 1e-30)
    floor = peak * 10.0 ** (-range_db / 10.0)
    diff = 10.0 * (np.log10(np.maximum(ref, floor)) - np.log10(np.maximum(est, floor)))
    return np.sqrt(np.mean(diff ** 2, axis=-1))


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r of two (N,) series; None when either is constant or N < 3."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if len(x) < 3:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if denominator <= 1e-12 * max(1.0, len(x)):
        return None
    return float(np.clip(float(xc @ yc) / denominator, -1.0, 1.0))


def max_abs_pearson(latent: np.ndarray, trace: np.ndarray) -> tuple[float | None, int | None]:
    """The largest |r| between any latent dimension (N, D) and the trace (N,), and its dim."""
    best, best_dim = None, None
    for dim in range(latent.shape[1]):
        r = pearson(latent[:, dim], trace)
        if r is not None and (best is None or abs(r) > best):
            best, best_dim = abs(r), dim
    return best, best_dim


def linear_r_cv(latents: list[np.ndarray], traces: list[np.ndarray], folds: np.ndarray
                ) -> float | None:
    """Cross-validated linear correlation R between a trace and a latent's dimensions.

    latents[i] (T_i, D) and traces[i] (T_i,) per clip, `folds[i]` in {0, 1}. A least-squares
    map latent → trace (with intercept) is fitted on the frames of one fold's clips and applied
    to the other's; R is Pearson's r between all out-of-fold predictions and the trace (so more
    latent dimensions do not buy a higher R by overfitting). None if a fold is empty.
    """
    predictions, truths = [], []
    for held_out in (0, 1):
        train = [i for i in range(len(latents)) if folds[i] != held_out]
        test = [i for i in range(len(latents)) if folds[i] == held_out]
        if not train or not test:
            return None
        x = np.concatenate([latents[i] for i in train]).astype(np.float64)
        y = np.concatenate([traces[i] for i in train]).astype(np.float64)
        design = np.hstack([x, np.ones((len(x), 1))])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        for i in test:
            xt = np.hstack([latents[i].astype(np.float64), np.ones((len(latents[i]), 1))])
            predictions.append(xt @ coef)
            truths.append(traces[i].astype(np.float64))
    return pearson(np.concatenate(predictions), np.concatenate(truths))


def mean_std(values: Iterable[float]) -> dict[str, float | int | None]:
    """{"mean", "std", "n"} of the values (population std; None for no values)."""
    array = np.asarray(list(values), np.float64)
    if array.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(array.mean()), "std": float(array.std()), "n": int(array.size)}


def finite_or_none(value: float | None, digits: int = 4) -> float | None:
    """A JSON-safe rounded float, None for None, NaN or infinities."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)
