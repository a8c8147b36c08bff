"""The identity path: the person's own causal running images, fused with the decoded faces.

The MDVAE decodes a face from (z_v, w, z_av) through the VQ-VAE decoder. On a person it never
saw, w lands near a training identity and the decoder paints that identity's skin, hair and
background (measured: ~16-17 dB PSNR whatever the input). The pixels of the person in front of
the camera are in the input itself, so the step keeps causal running means of the input crop
(the "identity path", O(1) per frame, state in and out):

    weight_t = rho * weight_{t-1} + 1
    mean_t   = mean_{t-1} + (x_t - mean_{t-1}) / weight_t      rho = exp(-1 / (tau * fps))

(the exact mean of the frames so far while weight_t is small, an exponential moving average of
time constant tau after that), from a short one that follows the head to a long one that
averages the noise of many frames away.

`Refiner` then predicts, per pixel, a convex blend of candidate images plus a small residual:

    candidates: x_t and each running mean, each also blurred; the VQ-VAE's own reconstruction
                of x_t; the MDVAE's decoded face (the only one that knows the mouth from the voice)
    face_hat = sum_k softmax(gates)_k * candidate_k + residual_scale * tanh(residual)

A clean input is passed through (x_t wins), noise is averaged away where the face is still (the
running means) and smoothed where it moves (the blurs), and an occluded mouth or eyes are filled
from the MDVAE's face (the audio drives its lips through z_av). The gates are computed at 32x32
by 3x3 convolutions and brought back to 64x64 by a transposed convolution; the blend and the
residual are full resolution (docs/model.md has the measurements that chose this design).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from streamav.model.config import RefineConfig



class RefineState(NamedTuple):
    """The identity path's state per stream."""

    face_means: Tensor  # (B, 3 * n_means, 64, 64) running means of the input crop, -0.5..0.5
    face_weights: Tensor  # (B, n_means) their accumulated weights (0: no frame yet)


def gaussian_kernel(sigma_px: float) -> Tensor:
    """(3, 1, k, k) depthwise Gaussian kernel, k = 2 * ceil(2 sigma) + 1, sums to 1."""
    radius = max(1, math.ceil(2.0 * sigma_px))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma_px) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, -1, -1).contiguous()


def ellipse_mask(region: tuple[float, ...], size_px: int) -> Tensor:
    """(1, 1, size, size): 1 inside the ellipse (centre x, y, radius x, y in image widths),
    falling to 0 over ~2 px at its edge."""
    cx, cy, rx, ry = (v * size_px for v in region)
    centres = torch.arange(size_px, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    radius = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)  # 1 on the edge
    return torch.clamp((1.0 - radius) * min(rx, ry) / 2.0 + 0.5, 0.0, 1.0)[None, None]


# The MDVAE face takes the VQ-VAE face's low frequencies only while both are exposed alike: their
# mean brightness within this ratio, none of it from EXPOSURE_DIFFER (linearly in log between).
# Measured md / vq ratio: 0.71-1.40 on clean, noisy and occluded faces, 3.0-6.8 in low light,
# where the VQ-VAE reproduces the dark frame that the MDVAE face brightens (docs/model.md, "v2.6").
EXPOSURE_AGREE = 1.5
EXPOSURE_DIFFER = 2.5


def exposure_agreement(vq_face: Tensor, mdvae_face: Tensor) -> Tensor:
    """(N, 3, H, W) each (-0.5..0.5) → (N, 1, 1, 1): 1 where their mean brightness agrees within
    `EXPOSURE_AGREE`, 0 from `EXPOSURE_DIFFER` (log-linear between)."""
    md = (mdvae_face + 0.5).mean((1, 2, 3), keepdim=True).clamp_min(1e-3)
    vq = (vq_face + 0.5).mean((1, 2, 3), keepdim=True).clamp_min(1e-3)
    agree, differ = math.log(EXPOSURE_AGREE), math.log(EXPOSURE_DIFFER)
    return torch.clamp((differ - torch.log(md / vq).abs()) / (differ - agree), 0.0, 1.0)


class Refiner(nn.Module):
    """Running means of the input (state) + a gated fusion of the candidate faces."""

    def __init__(self, cfg: RefineConfig, frame_rate_hz: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_means = len(cfg.time_constants_s)
        decays = [math.exp(-1.0 / (tau * frame_rate_hz)) for tau in cfg.time_constants_s]
        self.register_buffer("decays", torch.tensor(decays, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("blur_kernel", gaussian_kernel(cfg.blur_sigma_px), persistent=False)
        if cfg.motion_filter:
            self.register_buffer("motion_kernel", gaussian_kernel(cfg.motion_filter_sigma_px),
                                 persistent=False)
            self.register_buffer("motion_blur_kernel", gaussian_kernel(cfg.motion_blur_px)[:1],
                                 persistent=False)
            # Immerkaer (1996): a 3x3 kernel blind to planes and ramps; the mean |response| of
            # white noise of std s is 6 s sqrt(2 / pi)
            self.register_buffer("noise_kernel", torch.tensor(
                [[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None, None]
                * (math.sqrt(math.pi / 2.0) / 6.0), persistent=False)
        if cfg.mdvae_low_pass_from_vq_px:
            self.register_buffer("colour_kernel", gaussian_kernel(cfg.mdvae_low_pass_from_vq_px),
                                 persistent=False)
        if cfg.mdvae_region:
            self.register_buffer("mdvae_region", ellipse_mask(cfg.mdvae_region, 64),
                                 persistent=False)
        width, up = cfg.width, cfg.up_width
        # candidates: x and the means, each also blurred, VQ-VAE face, MDVAE face; the gate
        # network reads x, the means and both decoded faces (the blurs are fixed filters of them)
        self.n_candidates = 2 * (1 + self.n_means) + 2  # the MDVAE face last
        n_in = 3 * (3 + self.n_means)
        self.down = nn.Conv2d(n_in, width, 3, stride=2, padding=1)  # 64 → 32
        self.body = nn.Sequential(*(layer for _ in range(cfg.body_layers) for layer in
                                    (nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))))
        self.up = nn.ConvTranspose2d(width, up, 4, stride=2, padding=1)  # 32 → 64
        self.head = nn.Conv2d(up + n_in, self.n_candidates + 3, 3, padding=1)
        with torch.no_grad():  # start near a uniform blend with no residual
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    # -- state ------------------------------------------------------------------------------------

    def initial_state(self, batch: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> RefineState:
        means = torch.zeros(batch, 3 * self.n_means, 64, 64, device=device, dtype=dtype)
        return RefineState(means, torch.zeros(batch, self.n_means, device=device, dtype=dtype))

    def advance(self, face: Tensor, state: RefineState) -> RefineState:
        """face (B, 3, 64, 64) → the state after this frame (the running means include it)."""
        weights = state.face_weights * self.decays + 1.0  # (B, n)
        gain = (1.0 / weights).repeat_interleave(3, dim=1)[:, :, None, None]  # (B, 3n, 1, 1)
        means = state.face_means + (face.repeat(1, self.n_means, 1, 1) - state.face_means) * gain
        return RefineState(means, weights)

    def scan(self, faces: Tensor, state: RefineState) -> tuple[Tensor, RefineState]:
        """faces (B, T, 3, 64, 64) → the running means after each frame (B, T, 3n, 64, 64)."""
        means = []
        for t in range(faces.shape[1]):
            state = self.advance(faces[:, t], state)
            means.append(state.face_means)
        return torch.stack(means, 1), state

    # -- the fusion -------------------------------------------------------------------------------

    def blur(self, images: Tensor, kernel: Tensor | None = None) -> Tensor:
        """(N, k m, H, W) → each k-channel image blurred (replicated borders) by `kernel`
        ((k, 1, s, s); default: the candidates' RGB blur)."""
        kernel = self.blur_kernel if kernel is None else kernel
        pad = kernel.shape[-1] // 2
        kernel = kernel.repeat(images.shape[1] // kernel.shape[0], 1, 1, 1)
        return F.conv2d(F.pad(images, (pad,) * 4, mode="replicate"), kernel,
                        groups=images.shape[1])

    def noise_level(self, face: Tensor) -> Tensor:
        """(N, 3, H, W) → (N, 1, 1, 1): the frame's noise, Immerkaer's estimate on the channel
        mean (0..1 units; a sigma-s gaussian noise reads ~s / sqrt(3), a clean face ~0.004)."""
        response = F.conv2d(face.mean(1, keepdim=True), self.noise_kernel).abs()
        return response.mean((1, 2, 3), keepdim=True)

    def motion_filtered(self, means: Tensor, face: Tensor | None = None,
                        noise: Tensor | None = None) -> Tensor:
        """(N, 3n, 64, 64) running means → (N, 3, 64, 64): per pixel, the longest-averaging
        blurred mean that still agrees with the shortest one.

        A classic motion-adaptive temporal filter: where the blurred shortest mean and a longer
        one differ by less than `motion_threshold` (channel mean of |difference|, smoothed over
        `motion_blur_px`) the face is still there and the longer one is used; where they differ,
        the face moved and the shorter one is kept. Measured alone at gaussian 0.2: 29.9 dB on
        held-out GRID faces (blur + temporal mean at its best: 29.2) and 28.2 dB on fresh
        synthetic speakers (27.3-27.4); docs/model.md. With `motion_noise_adaptive` (needs
        `face`, the input frame) the thresholds and the blur follow the frame's noise
        (`noise_level`), and the frame itself is kept where it differs from the filtered one by
        more than its noise explains (a clean frame comes back as it is)."""
        threshold: Tensor | float = self.cfg.motion_threshold
        if self.cfg.motion_noise_adaptive:
            assert face is not None, "the noise-adaptive filter reads the input frame"
            noise = self.noise_level(face) if noise is None else noise  # (N, 1, 1, 1)
            threshold = threshold + self.cfg.motion_threshold_per_noise * noise
            blur_share = torch.clamp(noise / self.cfg.motion_noise_full_blur, 0.0, 1.0)
            candidates = means + blur_share * (self.blur(means, self.motion_kernel) - means)
        else:
            candidates = self.blur(means, self.motion_kernel)
        blurred = candidates.reshape(means.shape[0], -1, 3, *means.shape[-2:])
        shortest, filtered = blurred[:, 0], blurred[:, 0]
        for k in range(1, blurred.shape[1]):  # from the shortest to the longest mean
            filtered = self._where_still(blurred[:, k], shortest, filtered, threshold)
        if self.cfg.motion_noise_adaptive:  # the frame itself where it differs more than noise
            input_threshold = (self.cfg.motion_threshold
                               + self.cfg.motion_input_threshold_per_noise * noise)
            # signed difference smoothed before its magnitude: noise averages out, motion and
            # detail do not; all of the frame from twice the threshold, none under it
            difference = self.blur((face - filtered).mean(1, keepdim=True),
                                   self.motion_blur_kernel).abs()
            moved = torch.clamp(difference / input_threshold - 1.0, 0.0, 1.0)
            filtered = filtered + moved * (face - filtered)
        return filtered

    def _where_still(self, longer: Tensor, reference: Tensor, otherwise: Tensor,
                     threshold: Tensor | float) -> Tensor:
        """Per pixel: `longer` where it agrees with `reference` (channel mean of |difference|,
        smoothed over `motion_blur_px`, under `threshold`), `otherwise` where it does not,
        linearly between."""
        difference = (longer - reference).abs().mean(1, keepdim=True)
        still = torch.clamp(1.0 - self.blur(difference, self.motion_blur_kernel) / threshold,
                            0.0, 1.0)
        return still * longer + (1.0 - still) * otherwise

    def fuse(self, face: Tensor, means: Tensor, vq_face: Tensor, mdvae_face: Tensor) -> Tensor:
        """Each (N, 3, 64, 64) (means (N, 3n, 64, 64)) → the refined face (N, 3, 64, 64)."""
        inputs = torch.cat([face, means, vq_face, mdvae_face], 1)  # (N, 3 (3 + n), 64, 64)
        hidden = self.up(F.relu(self.body(F.relu(self.down(inputs)))))  # (N, up, 64, 64)
        head = self.head(torch.cat([F.relu(hidden), inputs], 1))  # (N, K + 3, 64, 64)
        gates = torch.softmax(head[:, :self.n_candidates], dim=1)  # (N, K, 64, 64)
        sharp = torch.cat([face, means], 1)  # (N, 3 (1 + n), 64, 64)
        others = torch.cat([sharp, self.blur(sharp), vq_face], 1)  # every candidate but the last
        others = others.reshape(-1, self.n_candidates - 1, 3, *face.shape[-2:])  # (N, K-1, 3, H, W)
        others_blend = (gates[:, :-1, None] * others).sum(1)
        mdvae_gate = gates[:, -1:]  # (N, 1, H, W)
        noise = (self.noise_level(face) if self.cfg.motion_filter and (
            self.cfg.motion_noise_adaptive or self.cfg.residual_noise_range) else None)
        if self.cfg.motion_filter:
            blend = self._share_with_filter(others_blend, mdvae_gate, mdvae_face, means,
                                            vq_face, face, noise)
        else:
            blend = others_blend + mdvae_gate * mdvae_face
        residual = self.cfg.residual_scale * torch.tanh(head[:, self.n_candidates:])
        if noise is not None and self.cfg.residual_noise_range:
            # trained on mostly corrupted windows, it blurs clean faces: all of it on noise and
            # where the gates call for the MDVAE face (an occluder, a dark frame), none elsewhere
            low, high = self.cfg.residual_noise_range
            residual = residual * torch.maximum(
                torch.clamp((noise - low) / (high - low), 0.0, 1.0), mdvae_gate)
        return (blend + residual).clamp(-0.5, 0.5)

    def _share_with_filter(self, others_blend: Tensor, mdvae_gate: Tensor, mdvae_face: Tensor,
                           means: Tensor, vq_face: Tensor | None = None,
                           face: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """The learned blend of every candidate but the MDVAE face (its gates sum to
        1 - mdvae_gate) → the filter takes `motion_share` of it, and the MDVAE face keeps only a
        confident gate (`mdvae_gate_threshold`) inside `mdvae_region`; the rest goes to the
        filter too. The kept gate goes to `mdvae_face_weight` x the MDVAE face + the rest x the
        VQ-VAE's face (default 1: the MDVAE face alone; docs/model.md, "v2.4 candidate"), with
        `mdvae_low_pass_from_vq_px` the MDVAE face's low frequencies replaced by the VQ-VAE
        face's (docs/model.md, "v2.6")."""
        share, threshold = self.cfg.motion_share, self.cfg.mdvae_gate_threshold
        keep = mdvae_gate if threshold == 0 else mdvae_gate * torch.clamp(
            (mdvae_gate - threshold) / threshold, 0.0, 1.0)  # (N, 1, H, W)
        if self.cfg.mdvae_region:
            keep = keep * self.mdvae_region
        to_filter = share * (1.0 - mdvae_gate) + (mdvae_gate - keep)
        weight = self.cfg.mdvae_face_weight
        decoded = mdvae_face
        if self.cfg.mdvae_low_pass_from_vq_px:
            assert vq_face is not None, "the MDVAE face's low frequencies come from the VQ-VAE's"
            decoded = mdvae_face + exposure_agreement(vq_face, mdvae_face) * self.blur(
                vq_face - mdvae_face, self.colour_kernel)
        if weight != 1.0:
            assert vq_face is not None, "mdvae_face_weight < 1 blends in the VQ-VAE's face"
            decoded = weight * decoded + (1.0 - weight) * vq_face
        return ((1.0 - share) * others_blend + to_filter * self.motion_filtered(means, face, noise)
                + keep * decoded)

    def forward(self, face: Tensor, state: RefineState, vq_face: Tensor, mdvae_face: Tensor
                ) -> tuple[Tensor, RefineState]:
        """One frame: (B, 3, 64, 64) each → (refined face, next state)."""
        state = self.advance(face, state)
        return self.fuse(face, state.face_means, vq_face, mdvae_face), state
