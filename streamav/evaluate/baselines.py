"""What a denoiser must beat, computed on the same frames: blur, blur + a causal temporal mean,
and the visual VQ-VAE alone.

The blur and the temporal mean are given their best settings after the fact (the sigma and the
time constant with the highest mean PSNR over all the clips of a corruption, from the grids
below): an oracle choice that favours the baselines, so a model that beats them beats any fixed
setting of them. The temporal mean is the same bias-corrected causal running mean as the model's
identity path (streamav/model/refine.py), over all frames of the clip from its first.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from streamav.corpus.dataset import face_to_model
from streamav.evaluate.metrics import model_face_to_unit

BLUR_SIGMAS_PX: tuple[float, ...] = (0.0, 0.6, 1.0, 1.5, 2.0, 3.0)  # 0: no blur
TEMPORAL_TAUS_S: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def blur(frames: np.ndarray, sigma_px: float) -> np.ndarray:
    """(T, H, W, 3) float32 0..1 → the same, each frame Gaussian-blurred (sigma 0: a copy)."""
    if sigma_px <= 0:
        return frames.copy()
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
                     for f in frames])


def causal_running_mean(frames: np.ndarray, tau_s: float, fps: float) -> np.ndarray:
    """(T, ...) → (T, ...): frame t is the mean of frames 0..t, exponentially forgotten with time
    constant `tau_s` (weight_t = rho weight_{t-1} + 1, mean_t += (x_t - mean_t-1) / weight_t)."""
    rho = float(np.exp(-1.0 / (tau_s * fps)))
    out = np.empty_like(frames)
    mean = np.zeros_like(frames[0])
    weight = 0.0
    for t, frame in enumerate(frames):
        weight = rho * weight + 1.0
        mean += (frame - mean) / weight
        out[t] = mean
    return out


def blur_temporal_grid(noisy: np.ndarray, fps: float) -> dict[tuple[float, float | None], np.ndarray]:
    """{(sigma, tau or None): (T, H, W, 3) estimate} over both grids (tau None: blur alone)."""
    estimates: dict[tuple[float, float | None], np.ndarray] = {}
    for sigma in BLUR_SIGMAS_PX:
        blurred = blur(noisy, sigma)
        estimates[(sigma, None)] = blurred
        for tau in TEMPORAL_TAUS_S:
            estimates[(sigma, tau)] = causal_running_mean(blurred, tau, fps)
    return estimates


@torch.no_grad()
def vqvae_alone(model, crops_u8: np.ndarray, batch: int = 256) -> np.ndarray:
    """(T, 64, 64, 3) uint8 → the visual VQ-VAE's reconstruction from its pre-quantisation
    features (what the MDVAE reads), (T, 64, 64, 3) float32 0..1."""
    faces = torch.from_numpy(face_to_model(crops_u8))
    out = [model.visual.decode(model.visual.encode(faces[i:i + batch])).clamp(-0.5, 0.5)
           for i in range(0, len(faces), batch)]
    return model_face_to_unit(torch.cat(out).numpy())
