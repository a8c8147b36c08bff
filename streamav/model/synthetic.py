"""Small smooth synthetic inputs for tests and smoke runs (not a corpus: no speech, no faces).

Faces are low-frequency random RGB fields in -0.5..0.5; spectra are smooth random log-envelopes
with a per-frame gain; sequences interpolate smoothly between random key frames so that the
MDVAE has dynamics to model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_faces(n: int, seed: int = 0, size: int = 64) -> Tensor:
    """(n, 3, size, size) float32 in -0.5..0.5: 4x4 random colours, bicubically upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) - 0.5
    return F.interpolate(coarse, size=(size, size), mode="bicubic",
                         align_corners=False).clamp(-0.5, 0.5)


def smooth_spectra(n: int, seed: int = 0, n_bins: int = 513) -> Tensor:
    """(n, n_bins) float32 power: exp(smooth random envelope) times a random gain (±20 dB)."""
    g = torch.Generator().manual_seed(seed)
    knots = torch.randn(n, 1, 12, generator=g) * 2.0  # log-power at 12 knots
    envelope = F.interpolate(knots, size=n_bins, mode="linear", align_corners=True)[:, 0]
    tilt = -torch.linspace(0.0, 6.0, n_bins)  # speech-like fall towards high frequencies
    gain_db = (torch.rand(n, 1, generator=g) - 0.5) * 40.0
    return torch.exp(envelope + tilt) * 10.0 ** (gain_db / 10.0)


def smooth_sequences(batch: int, frames: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(spectra (B, T, 513), faces (B, T, 3, 64, 64)): per stream, a cosine blend of 3 key frames."""
    keys_s = smooth_spectra(batch * 3, seed).reshape(batch, 3, -1).log()
    keys_f = smooth_faces(batch * 3, seed + 1).reshape(batch, 3, 3, 64, 64)
    t = torch.linspace(0.0, 2.0, frames)
    weights = torch.stack([torch.cos(torch.pi * (t - k).clamp(-1, 1) / 2).pow(2) for k in range(3)]
                          , 1)  # (T, 3) partition-of-unity bumps
    weights = weights / weights.sum(1, keepdim=True)
    spectra = torch.einsum("tk,bkf->btf", weights, keys_s).exp()
    faces = torch.einsum("tk,bkchw->btchw", weights, keys_f)
    return spectra, faces
