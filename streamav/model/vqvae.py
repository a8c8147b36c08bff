"""Stage 1: the per-frame VQ-VAEs (audio spectrum, face crop) and their EMA vector quantiser.

The MDVAE reads the encoders' features *before* quantisation (`encode`); `quantize` and the
training `forward` are for stage-1 training and for snapping features to the codebook; `decode`
turns features (quantised or not, e.g. the MDVAE's reconstruction) back into a spectrum or a face.

Shapes: B frames (any leading dims are flattened), F = 513 bins, D = code_dim, P = positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamav.model.config import AudioVQVAEConfig, VisualVQVAEConfig


# ---------------------------------------------------------------------------------------------
# Vector quantiser with EMA codebook and dead-code restart
# ---------------------------------------------------------------------------------------------

class VQOutput(NamedTuple):
    quantized: Tensor  # same shape as the input, straight-through gradient to the input
    indices: Tensor  # (B, *positions) int64
    commitment_loss: Tensor  # () commitment * ||z - sg(q)||^2 (mean)
    perplexity: Tensor  # () exp(entropy of this batch's code use)
    n_restarted: Tensor  # () int64: dead codes restarted by this call (training only)


class VectorQuantizerEMA(nn.Module):
    """Nearest-code quantiser; the codebook is an EMA of the vectors assigned to each code.

    Inputs are channel-first, (B, D, *positions): each position's D-vector is one code.
    In training mode every call updates the EMA statistics and restarts "dead" codes (EMA use per
    batch below `dead_code_threshold`) on random vectors of the current batch. The first training
    call therefore initialises the whole codebook from data.
    """

    def __init__(self, n_codes: int, code_dim: int, decay: float, commitment: float,
                 dead_code_threshold: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_codes, self.code_dim = n_codes, code_dim
        self.decay, self.commitment = decay, commitment
        self.dead_code_threshold, self.eps = dead_code_threshold, eps
        self.register_buffer("codebook", torch.randn(n_codes, code_dim))  # (K, D)
        self.register_buffer("ema_count", torch.zeros(n_codes))  # (K,) vectors per batch
        self.register_buffer("ema_sum", torch.zeros(n_codes, code_dim))  # (K, D)

    def nearest(self, flat: Tensor) -> Tensor:
        """(N, D) → (N,) index of the nearest code (squared Euclidean)."""
        dist = (flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ self.codebook.t()
                + self.codebook.pow(2).sum(1))  # (N, K)
        return dist.argmin(dim=1)

    def lookup(self, indices: Tensor) -> Tensor:
        """(B, *positions) indices → (B, D, *positions) code vectors."""
        q = F.embedding(indices, self.codebook)  # (B, *positions, D)
        return q.movedim(-1, 1)

    def forward(self, z: Tensor) -> VQOutput:
        flat = z.movedim(1, -1).reshape(-1, self.code_dim)  # (N, D)
        idx = self.nearest(flat)  # (N,)
        q_flat = F.embedding(idx, self.codebook)  # (N, D), the codes as they were assigned
        n_restarted = torch.zeros((), dtype=torch.long, device=z.device)
        if self.training:
            n_restarted = self._ema_update(flat.detach(), idx)
        quantized = q_flat.reshape(z.movedim(1, -1).shape).movedim(-1, 1)
        commitment = self.commitment * F.mse_loss(z, quantized.detach())
        counts = torch.bincount(idx, minlength=self.n_codes).to(z.dtype)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        positions = (z.shape[0],) + tuple(z.shape[2:])
        return VQOutput(z + (quantized - z).detach(), idx.reshape(positions), commitment,
                        perplexity, n_restarted)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor) -> Tensor:
        onehot = F.one_hot(idx, self.n_codes).to(flat.dtype)  # (N, K)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.n_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.clamp_min(self.eps).unsqueeze(1))
        return self._restart_dead(flat)

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor) -> Tensor:
        dead = self.ema_count < self.dead_code_threshold  # (K,)
        picks = torch.randint(0, flat.shape[0], (self.n_codes,), device=flat.device)
        fresh = flat[picks]  # (K, D)
        count = torch.full_like(self.ema_count, max(self.dead_code_threshold, self.eps))
        self.codebook.copy_(torch.where(dead[:, None], fresh, self.codebook))
        self.ema_sum.copy_(torch.where(dead[:, None], fresh * count[:, None], self.ema_sum))
        self.ema_count.copy_(torch.where(dead, count, self.ema_count))
        return dead.sum()


# ---------------------------------------------------------------------------------------------
# Audio VQ-VAE (Conv1d over frequency, tanh, Itakura-Saito)
# ---------------------------------------------------------------------------------------------

def itakura_saito(target: Tensor, log_estimate: Tensor) -> Tensor:
    """IS divergence summed over the last dim: sum(x/y - log(x/y) - 1), y = exp(log_estimate).

    target (..., F) > 0, log_estimate (..., F) → (...). Computed from log y for stability.
    """
    ratio = target * torch.exp(-log_estimate)
    return (ratio - torch.log(target) + log_estimate - 1.0).sum(-1)


class _Residual1d(nn.Module):
    """x + conv1x1(tanh(conv3(tanh(x)))) (the paper's audio residual block, no biases)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv1d(channels, hidden, 3, padding=1, bias=False)
        self.conv1 = nn.Conv1d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(torch.tanh(self.conv3(torch.tanh(x))))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioVQVAEConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.conv1 = nn.Conv1d(1, c0, 4, stride=2, padding=1)  # 513 → 256
        self.conv2 = nn.Conv1d(c0, c1, 4, stride=2, padding=1)  # 256 → 128
        self.conv3 = nn.Conv1d(c1, c2, 3, stride=2, padding=1)  # 128 → 64
        self.res = nn.ModuleList(_Residual1d(c2, cfg.residual_hidden)
                                 for _ in range(cfg.residual_blocks))
        self.pre_vq = nn.Conv1d(c2, cfg.code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, 1, 513) log-compressed, gain-normalised spectrum
        h = torch.tanh(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        h = self.conv3(h)
        for block in self.res:
            h = block(h)
        return self.pre_vq(torch.tanh(h))  # (B, D, 64)


class AudioDecoder(nn.Module):
    def __init__(self, cfg: AudioVQVAEConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.conv_in = nn.Conv1d(cfg.code_dim, c2, 3, padding=1)
        self.res = nn.ModuleList(_Residual1d(c2, cfg.residual_hidden)
                                 for _ in range(cfg.residual_blocks))
        self.up1 = nn.ConvTranspose1d(c2, c1, 4, stride=2, padding=1)  # 64 → 128
        self.up2 = nn.ConvTranspose1d(c1, c0, 4, stride=2, padding=1)  # 128 → 256
        self.up3 = nn.ConvTranspose1d(c0, 1, 3, stride=2, padding=0)  # 256 → 513

    def forward(self, q: Tensor) -> Tensor:
        # q: (B, D, 64) → (B, 1, 513) log of the gain-normalised power (exp() is the caller's)
        h = self.conv_in(q)
        for block in self.res:
            h = block(h)
        h = torch.tanh(self.up1(torch.tanh(h)))
        h = torch.tanh(self.up2(h))
        return self.up3(h)


class AudioVQVAEOutput(NamedTuple):
    loss: Tensor  # () IS (mean per bin) + commitment
    is_loss: Tensor  # () mean IS divergence per bin
    vq: VQOutput
    log_power_hat: Tensor  # (B, 513) log of the gain-normalised reconstruction


class AudioVQVAE(nn.Module):
    """Per-frame VQ-VAE of a 513-bin power spectrum (see AudioVQVAEConfig for the scaling)."""

    def __init__(self, cfg: AudioVQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = AudioEncoder(cfg)
        self.quantizer = VectorQuantizerEMA(cfg.n_codes, cfg.code_dim, cfg.ema_decay,
                                            cfg.commitment, cfg.dead_code_threshold)
        self.decoder = AudioDecoder(cfg)

    def gain(self, spectrum: Tensor) -> Tensor:
        """(..., 513) power → (..., 1) the frame's gain g = mean power + silence_power."""
        return spectrum.mean(-1, keepdim=True) + self.cfg.silence_power

    def normalized_target(self, spectrum: Tensor) -> Tensor:
        """(..., 513) → P / g + floor: what the decoder's exp() predicts."""
        return spectrum / self.gain(spectrum) + self.cfg.relative_floor

    def encode(self, spectrum: Tensor) -> Tensor:
        """(..., 513) power → (..., D * 64) pre-quantisation features (what the MDVAE reads)."""
        lead = spectrum.shape[:-1]
        x = self.cfg.log_scale * torch.log(self.normalized_target(spectrum))
        z = self.encoder(x.reshape(-1, 1, self.cfg.n_bins))  # (N, D, 64)
        return z.reshape(*lead, self.cfg.feature_dim)

    def quantize(self, features: Tensor) -> VQOutput:
        """(B, D * 64) → VQOutput with quantized (B, D, 64); updates EMA in training mode."""
        return self.quantizer(features.reshape(-1, self.cfg.code_dim, self.cfg.n_positions))

    def snap(self, features: Tensor) -> Tensor:
        """(..., D * 64) → the same shape, each code vector replaced by its nearest code."""
        z = features.reshape(-1, self.cfg.code_dim, self.cfg.n_positions)
        idx = self.quantizer.nearest(z.movedim(1, -1).reshape(-1, self.cfg.code_dim))
        q = self.quantizer.lookup(idx.reshape(z.shape[0], self.cfg.n_positions))
        return q.reshape(features.shape)

    def decode_log(self, features: Tensor) -> Tensor:
        """(..., D * 64) → (..., 513) log of the gain-normalised power."""
        lead = features.shape[:-1]
        q = features.reshape(-1, self.cfg.code_dim, self.cfg.n_positions)
        return self.decoder(q).reshape(*lead, self.cfg.n_bins)

    def decode(self, features: Tensor, gain: Tensor) -> Tensor:
        """(..., D * 64), gain (..., 1) → (..., 513) power: g * exp(decoder)."""
        return gain * torch.exp(self.decode_log(features))

    def forward(self, spectrum: Tensor) -> AudioVQVAEOutput:
        """Stage-1 training pass: (B, 513) power → losses and reconstruction."""
        vq = self.quantize(self.encode(spectrum))
        log_hat = self.decode_log(vq.quantized.reshape(spectrum.shape[0], -1))
        is_loss = itakura_saito(self.normalized_target(spectrum), log_hat).mean() / self.cfg.n_bins
        return AudioVQVAEOutput(is_loss + vq.commitment_loss, is_loss, vq, log_hat)


# ---------------------------------------------------------------------------------------------
# Visual VQ-VAE (Conv2d, ReLU, MSE)
# ---------------------------------------------------------------------------------------------

class _Residual2d(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) (the VQ-VAE paper's block, no biases)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class VisualEncoder(nn.Module):
    def __init__(self, cfg: VisualVQVAEConfig) -> None:
        super().__init__()
        c0, c1, c2, c3 = cfg.channels
        self.conv1 = nn.Conv2d(3, c0, 4, stride=2, padding=1)  # 64 → 32
        self.conv2 = nn.Conv2d(c0, c1, 4, stride=2, padding=1)  # 32 → 16
        self.conv3 = nn.Conv2d(c1, c2, 4, stride=2, padding=1)  # 16 → 8
        self.conv4 = nn.Conv2d(c2, c3, 3, stride=1, padding=1)  # 8 → 8
        self.res = nn.ModuleList(_Residual2d(c3, cfg.residual_hidden)
                                 for _ in range(cfg.residual_blocks))
        self.pre_vq = nn.Conv2d(c3, cfg.code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, 3, 64, 64) in -0.5..0.5
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        h = self.conv4(h)
        for block in self.res:
            h = block(h)
        return self.pre_vq(F.relu(h))  # (B, D, 8, 8)


class VisualDecoder(nn.Module):
    def __init__(self, cfg: VisualVQVAEConfig) -> None:
        super().__init__()
        c0, c1, c2, c3 = cfg.channels
        self.conv_in = nn.Conv2d(cfg.code_dim, c3, 3, padding=1)
        self.res = nn.ModuleList(_Residual2d(c3, cfg.residual_hidden)
                                 for _ in range(cfg.residual_blocks))
        # mirror of the encoder: c1 channels at 16x16, c0 at 32x32, RGB at 64x64
        self.up1 = nn.ConvTranspose2d(c3, c1, 4, stride=2, padding=1)  # 8 → 16
        self.up2 = nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1)  # 16 → 32
        self.up3 = nn.ConvTranspose2d(c0, 3, 4, stride=2, padding=1)  # 32 → 64
        del c2

    def forward(self, q: Tensor) -> Tensor:
        # q: (B, D, 8, 8) → (B, 3, 64, 64), unbounded (about -0.5..0.5 once trained)
        h = self.conv_in(q)
        for block in self.res:
            h = block(h)
        h = F.relu(self.up1(F.relu(h)))
        h = F.relu(self.up2(h))
        return self.up3(h)


class VisualVQVAEOutput(NamedTuple):
    loss: Tensor  # () MSE + commitment
    mse: Tensor  # () mean squared error per pixel and channel
    vq: VQOutput
    face_hat: Tensor  # (B, 3, 64, 64)


class VisualVQVAE(nn.Module):
    """Per-frame VQ-VAE of a 64x64 RGB face crop in -0.5..0.5."""

    def __init__(self, cfg: VisualVQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VisualEncoder(cfg)
        self.quantizer = VectorQuantizerEMA(cfg.n_codes, cfg.code_dim, cfg.ema_decay,
                                            cfg.commitment, cfg.dead_code_threshold)
        self.decoder = VisualDecoder(cfg)

    @property
    def _grid_shape(self) -> tuple[int, int, int]:
        return (self.cfg.code_dim, self.cfg.grid, self.cfg.grid)

    def encode(self, face: Tensor) -> Tensor:
        """(..., 3, 64, 64) → (..., D * 8 * 8) pre-quantisation features."""
        lead = face.shape[:-3]
        z = self.encoder(face.reshape(-1, 3, self.cfg.image_size, self.cfg.image_size))
        return z.reshape(*lead, self.cfg.feature_dim)

    def quantize(self, features: Tensor) -> VQOutput:
        """(B, D * 64) → VQOutput with quantized (B, D, 8, 8); updates EMA in training mode."""
        return self.quantizer(features.reshape(-1, *self._grid_shape))

    def snap(self, features: Tensor) -> Tensor:
        """(..., D * 64) → the same shape, each code vector replaced by its nearest code."""
        z = features.reshape(-1, *self._grid_shape)
        idx = self.quantizer.nearest(z.movedim(1, -1).reshape(-1, self.cfg.code_dim))
        q = self.quantizer.lookup(idx.reshape(z.shape[0], self.cfg.grid, self.cfg.grid))
        return q.reshape(features.shape)

    def decode(self, features: Tensor) -> Tensor:
        """(..., D * 64) → (..., 3, 64, 64)."""
        lead = features.shape[:-1]
        face = self.decoder(features.reshape(-1, *self._grid_shape))
        return face.reshape(*lead, 3, self.cfg.image_size, self.cfg.image_size)

    def forward(self, face: Tensor) -> VisualVQVAEOutput:
        """Stage-1 training pass: (B, 3, 64, 64) → losses and reconstruction."""
        vq = self.quantize(self.encode(face))
        face_hat = self.decoder(vq.quantized)
        mse = F.mse_loss(face_hat, face)
        return VisualVQVAEOutput(mse + vq.commitment_loss, mse, vq, face_hat)
