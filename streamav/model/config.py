"""The model's typed config tree (frozen dataclasses) and its two presets, `paper` and `default`.

One `ModelConfig` describes everything that fixes the weights' shapes and the per-frame
computation: the audio VQ-VAE, the visual VQ-VAE, the MDVAE (with its causal estimate of w) and
the emotion head. It round-trips through plain dicts (`to_dict` / `from_dict`) so that a model
folder's config.json says exactly what its weights are.

`paper` has the sizes of DESIGN section 1 (the MDVAE paper); `default` is the smaller CPU preset,
see docs/model.md for the MAC counts and the reasons.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# The canonical emotion labels, in index order (the same tuple as streamav.corpus.labels.EMOTIONS;
# kept here so that the model package does not depend on the corpus package).
EMOTION_LABELS: tuple[str, ...] = (
    "angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")


def conv_out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution (PyTorch's arithmetic, no dilation)."""
    return (length + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class AudioVQVAEConfig:
    """Per-frame audio VQ-VAE on one 513-bin power spectrum (no time axis).

    Encoder: Conv1d 1→c0 (k4 s2 p1) → c0→c1 (k4 s2 p1) → c1→c2 (k3 s2 p1), tanh between, residual
    blocks, 1x1 conv to `code_dim` channels. 513 bins → 256 → 128 → 64 positions, so the
    pre-quantisation feature is code_dim x 64 (= 512 for code_dim 8). The decoder mirrors it with
    transposed convs (64 → 128 → 256 → 513, the last one k3 s2 p0) and ends in exp().

    Input scaling (the front end does no peak normalisation: it is not causal): each frame is
    divided by its own gain g = mean power over bins + `silence_power`, then log-compressed,
    x = log_scale * log(P / g + relative_floor). The decoder predicts P / g (+ floor); the
    reconstructed power is g * exp(decoder). The Itakura-Saito divergence is scale invariant, so
    the loss is the same in either domain.
    """

    n_bins: int = 513
    channels: tuple[int, int, int] = (16, 32, 32)
    residual_blocks: int = 1
    residual_hidden: int = 16
    code_dim: int = 8  # channels of the 1x1 pre-quantisation conv = code vector size
    n_codes: int = 64
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1.0  # EMA uses per batch below this → restart from the batch
    relative_floor: float = 1e-5  # -50 dB below the frame's mean power
    # Gain floor: mean bin power of white noise at -80 dBFS through the 1024 Hann window
    # (sigma^2 * sum(w^2) = 1e-8 * 384), so digital silence is not blown up to full scale.
    silence_power: float = 4e-6
    log_scale: float = 0.25

    @property
    def n_positions(self) -> int:
        n = conv_out_len(self.n_bins, 4, 2, 1)
        n = conv_out_len(n, 4, 2, 1)
        return conv_out_len(n, 3, 2, 1)

    @property
    def feature_dim(self) -> int:
        return self.code_dim * self.n_positions

    def validate(self) -> None:
        _check(self.n_bins == 513, "audio n_bins must be 513 (1024-point FFT)")
        _check(self.n_positions == 64, "audio encoder must give 64 positions")
        _common_vq_checks(self)


@dataclass(frozen=True)
class VisualVQVAEConfig:
    """Per-frame visual VQ-VAE on a 64x64 RGB face crop in -0.5..0.5.

    Encoder: Conv2d 3→c0 (k4 s2 p1) → c0→c1 (k4 s2 p1) → c1→c2 (k4 s2 p1) → c2→c3 (k3 s1 p1),
    residual blocks, 1x1 conv to `code_dim` channels: code_dim x 8 x 8 (= 2048 for 32).
    Decoder: k3 conv, residual blocks, three transposed convs (k4 s2 p1) back to 3 x 64 x 64.
    """

    image_size: int = 64
    channels: tuple[int, int, int, int] = (64, 128, 128, 128)
    residual_blocks: int = 2
    residual_hidden: int = 32
    code_dim: int = 32
    n_codes: int = 512
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 1.0

    @property
    def grid(self) -> int:
        return self.image_size // 8

    @property
    def feature_dim(self) -> int:
        return self.code_dim * self.grid * self.grid

    def validate(self) -> None:
        _check(self.image_size == 64, "visual image_size must be 64")
        _common_vq_checks(self)


@dataclass(frozen=True)
class MDVAEConfig:
    """The multimodal dynamical VAE on the VQ-VAE encoders' pre-quantisation features.

    Latents per frame: w (static), z_av (shared dynamics), z_a (audio), z_v (visual). One GRU
    per dynamical latent (hidden `gru_hidden`) is shared by its prior and its posterior.

    Causal w: a precision-weighted product of per-frame Gaussian "evidence" terms, exponentially
    forgotten with time constant `w_time_constant_s` (see mdvae.py and docs/model.md).
    """

    audio_dim: int = 512
    visual_dim: int = 2048
    w_dim: int = 84
    z_av_dim: int = 16
    z_a_dim: int = 8
    z_v_dim: int = 4
    gru_hidden: int = 128
    visual_feature_hidden: tuple[int, ...] = (1024, 512)  # 2048 → 1024 → 512 (ReLU)
    posterior_hidden: tuple[int, int] = (256, 128)  # q(z_t | ...) MLPs (tanh)
    prior_hidden: int = 64  # p(z_t | h_{t-1}) MLP (tanh)
    audio_decoder_hidden: tuple[int, ...] = (128, 256)  # [z_a, w, z_av] → 128 → 256 → 512 (tanh)
    visual_decoder_hidden: tuple[int, ...] = (512, 1024)  # [z_v, w, z_av] → 512 → 1024 → 2048 (ReLU)
    w_evidence_hidden: int = 256  # [x_a, v] → 256 (tanh) → per-frame mean and precision of w
    w_time_constant_s: float = 2.0
    frame_rate_hz: float = 30.0
    w_precision_min: float = 1e-3  # one frame's precision, per dimension
    w_precision_max: float = 100.0
    w_mean_bound: float = 8.0  # |per-frame mean| < bound (soft, tanh): w's prior is N(0, I)

    @property
    def visual_feature_dim(self) -> int:
        return self.visual_feature_hidden[-1]

    @property
    def w_decay(self) -> float:
        """rho: the weight of the evidence one frame older (exp(-1 / (tau * fps)))."""
        return math.exp(-1.0 / (self.w_time_constant_s * self.frame_rate_hz))

    def validate(self) -> None:
        for name in ("audio_dim", "visual_dim", "w_dim", "z_av_dim", "z_a_dim", "z_v_dim",
                     "gru_hidden", "prior_hidden", "w_evidence_hidden"):
            _check(getattr(self, name) > 0, f"mdvae {name} must be positive")
        _check(len(self.visual_feature_hidden) >= 1, "mdvae visual_feature_hidden is empty")
        _check(len(self.posterior_hidden) == 2, "mdvae posterior_hidden must have 2 sizes")
        _check(self.w_time_constant_s > 0 and self.frame_rate_hz > 0,
               "mdvae w_time_constant_s and frame_rate_hz must be positive")
        _check(0 < self.w_precision_min < self.w_precision_max,
               "mdvae needs 0 < w_precision_min < w_precision_max")
        _check(self.w_mean_bound > 0, "mdvae w_mean_bound must be positive")


@dataclass(frozen=True)
class EmotionHeadConfig:
    """A small head on the mean of w: logistic regression (hidden 0) or a one-hidden-layer MLP."""

    labels: tuple[str, ...] = EMOTION_LABELS
    hidden: int = 0

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    def validate(self) -> None:
        _check(len(self.labels) >= 2, "emotion head needs at least 2 labels")
        _check(len(set(self.labels)) == len(self.labels), "emotion labels must be unique")
        _check(self.hidden >= 0, "emotion head hidden must be >= 0")


@dataclass(frozen=True)
class RefineConfig:
    """The identity path (streamav/model/refine.py): causal running means of the input crop and a
    gated fusion of the candidate faces (input, its blur, the means, VQ-VAE and MDVAE faces)."""

    time_constants_s: tuple[float, ...] = (0.1, 0.4, 1.5)  # from following the head to averaging
    blur_sigma_px: float = 1.2
    width: int = 32  # channels of the 32x32 gate network
    body_layers: int = 3
    up_width: int = 16  # channels brought back to 64x64
    residual_scale: float = 0.2  # the residual is residual_scale * tanh(.)
    # A motion-adaptive temporal filter of the running means (refine.py) blended in; off in
    # folders made before it
    motion_filter: bool = False
    motion_filter_sigma_px: float = 0.8  # blur of the means it blends
    motion_threshold: float = 0.04  # mean |difference| of blurred means at which a pixel moves
    motion_blur_px: float = 2.0  # spatial smoothing of that difference
    # Noise-adaptive filter (off in folders made before it): the threshold becomes
    # motion_threshold + motion_threshold_per_noise x the frame's estimated noise (Immerkaer's
    # 3x3 estimate on the channel mean, in the crop's 0..1 units), the means are blurred
    # (motion_filter_sigma_px) only as much as that noise asks (fully from
    # motion_noise_full_blur up, not at all on a clean frame), and the input frame is kept
    # where it differs from the filtered face by more than motion_threshold +
    # motion_input_threshold_per_noise x the noise. A fixed threshold set for sigma 0.2
    # averaged too little at 0.3 and blurred clean and lightly noisy faces (docs/model.md, "v2.5")
    motion_noise_adaptive: bool = False
    motion_threshold_per_noise: float = 0.45
    motion_input_threshold_per_noise: float = 0.5
    motion_noise_full_blur: float = 0.06
    # With the filter: the learned residual is scaled from 0 at this noise (Immerkaer's estimate,
    # as above) to 1 at this one, and never below the MDVAE face's gate (occluders, dark frames).
    # Learned on mostly corrupted windows, it costs 6-8 dB on a clean face and gains ~1 dB at
    # sigma 0.2 (docs/model.md, "v2.5"). (): always whole
    residual_noise_range: tuple[float, ...] = ()
    # The filter's share of the weight the learned gates give to every candidate but the MDVAE's
    # face (where the gates trust the voice-driven face, e.g. an occluded mouth, it takes nothing)
    motion_share: float = 0.8
    # With the filter: the MDVAE face keeps its gate g only where g >= 2 t (an occluded mouth,
    # ~0.75), none of it where g <= t, linearly between; the rest goes to the filter. On faces
    # unlike the training ones the voice can drive the MDVAE face far off (0: keep g as is)
    mdvae_gate_threshold: float = 0.0
    # With the filter: the MDVAE face is used only inside this ellipse of the crop (centre x, y,
    # radius x, y, in crop widths; it covers the eyes and the mouth). Outside it, hair, shoulders
    # and background are a training identity's in the MDVAE face, never the new person's (a
    # real speaker's grey hair drew its gate to 1). (): everywhere
    mdvae_region: tuple[float, ...] = ()
    # With the filter: where the MDVAE face keeps its gate, the blend takes this share of the
    # MDVAE face and the rest of the VQ-VAE's face of the input. Inside an occluded box on new
    # faces the VQ-VAE's inpainting beat the MDVAE face (which paints a training identity's
    # lips and eyes); half of each beats both (docs/model.md). 1: the MDVAE face alone
    mdvae_face_weight: float = 1.0
    # With the filter: where the MDVAE face keeps its gate, its low spatial frequencies (a
    # Gaussian of this sigma, px of the 64-px crop) are replaced by the VQ-VAE face's of the
    # input: the MDVAE keeps the lips' and eyes' shape and motion, the colour and shading come
    # from the person in front of the camera (the MDVAE paints a training identity's; docs/model.md,
    # "v2.6"). 0: the MDVAE face as decoded
    mdvae_low_pass_from_vq_px: float = 0.0

    def validate(self) -> None:
        _check(len(self.time_constants_s) >= 1 and all(t > 0 for t in self.time_constants_s),
               "refine time_constants_s must be one or more positive times")
        _check(self.blur_sigma_px > 0, "refine blur_sigma_px must be positive")
        _check(self.width >= 1 and self.up_width >= 1 and self.body_layers >= 0,
               "refine width, up_width must be >= 1 and body_layers >= 0")
        _check(self.residual_scale >= 0, "refine residual_scale must be >= 0")
        _check(self.motion_filter_sigma_px > 0 and self.motion_threshold > 0
               and self.motion_blur_px > 0, "refine motion filter settings must be positive")
        _check(self.motion_threshold_per_noise >= 0 and self.motion_input_threshold_per_noise >= 0
               and self.motion_noise_full_blur > 0,
               "refine motion noise settings must be >= 0 (per noise) and > 0 (full blur)")
        _check(len(self.residual_noise_range) in (0, 2) and (
            not self.residual_noise_range
            or 0 <= self.residual_noise_range[0] < self.residual_noise_range[1]),
               "refine residual_noise_range must be () or (low, high) with 0 <= low < high")
        _check(0.0 < self.motion_share <= 1.0, "refine motion_share must be in (0, 1]")
        _check(0.0 <= self.mdvae_gate_threshold <= 0.5,
               "refine mdvae_gate_threshold must be in 0..0.5")
        _check(0.0 <= self.mdvae_face_weight <= 1.0,
               "refine mdvae_face_weight must be in 0..1")
        _check(self.mdvae_low_pass_from_vq_px >= 0,
               "refine mdvae_low_pass_from_vq_px must be >= 0")
        _check(len(self.mdvae_region) in (0, 4) and all(v > 0 for v in self.mdvae_region),
               "refine mdvae_region must be () or (centre x, centre y, radius x, radius y) > 0")
        _check(not self.motion_filter or len(self.time_constants_s) >= 2,
               "refine motion_filter needs two or more time constants")


@dataclass(frozen=True)
class ModelConfig:
    """The whole model: both VQ-VAEs, the MDVAE and the emotion head."""

    preset: str = "paper"  # the field defaults are the paper's sizes
    audio: AudioVQVAEConfig = field(default_factory=AudioVQVAEConfig)
    visual: VisualVQVAEConfig = field(default_factory=VisualVQVAEConfig)
    mdvae: MDVAEConfig = field(default_factory=MDVAEConfig)
    emotion: EmotionHeadConfig = field(default_factory=EmotionHeadConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        self.refine.validate()
        self.audio.validate()
        self.visual.validate()
        self.mdvae.validate()
        self.emotion.validate()
        _check(self.mdvae.audio_dim == self.audio.feature_dim,
               f"mdvae audio_dim {self.mdvae.audio_dim} != audio feature_dim "
               f"{self.audio.feature_dim}")
        _check(self.mdvae.visual_dim == self.visual.feature_dim,
               f"mdvae visual_dim {self.mdvae.visual_dim} != visual feature_dim "
               f"{self.visual.feature_dim}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return asdict(self)

    def sha256(self) -> str:
        """A hash of everything the config sets: with the weights' hash it names what a step
        computes (settings change without the weights, e.g. the identity path's filter)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`. Unknown or missing keys raise ValueError naming them."""
        return _from_dict(cls, data, "model")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    # keys added after a folder was written take their defaults, which keep its behaviour
    missing = sorted(set(names) - set(data) - _OPTIONAL_KEYS.get(cls, set()))
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    kwargs = {}
    defaults = cls() if cls is not ModelConfig else None
    for name, f in names.items():
        default = getattr(defaults, name) if defaults is not None else None
        if name not in data:
            kwargs[name] = default
            continue
        value = data[name]
        sub = _SECTIONS.get(name) if cls is ModelConfig else None
        if sub is not None:
            value = _from_dict(sub, value, f"{where}.{name}")
        elif isinstance(default, tuple) or isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_OPTIONAL_KEYS: dict[type, set[str]] = {
    RefineConfig: {"motion_filter", "motion_filter_sigma_px", "motion_threshold",
                     "motion_blur_px", "motion_noise_adaptive", "motion_threshold_per_noise",
                     "motion_input_threshold_per_noise", "motion_noise_full_blur",
                     "residual_noise_range", "motion_share", "mdvae_gate_threshold", "mdvae_region",
                     "mdvae_face_weight", "mdvae_low_pass_from_vq_px"},
}
_SECTIONS: dict[str, type] = {"audio": AudioVQVAEConfig, "visual": VisualVQVAEConfig,
                              "mdvae": MDVAEConfig, "emotion": EmotionHeadConfig,
                              "refine": RefineConfig}


def _common_vq_checks(cfg: Any) -> None:
    _check(cfg.n_codes >= 2 and cfg.code_dim >= 1, "VQ-VAE needs n_codes >= 2 and code_dim >= 1")
    _check(0.0 < cfg.ema_decay < 1.0, "VQ-VAE ema_decay must be in (0, 1)")
    _check(cfg.commitment >= 0.0, "VQ-VAE commitment must be >= 0")
    _check(cfg.residual_blocks >= 0 and cfg.residual_hidden >= 1, "bad VQ-VAE residual sizes")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def paper_config() -> ModelConfig:
    """The sizes of DESIGN section 1 (the MDVAE paper and its authors' code)."""
    return ModelConfig(preset="paper")


def default_config() -> ModelConfig:
    """The CPU preset: the paper's stage 2 and audio path, a narrower visual VQ-VAE.

    Everything the MDVAE sees and produces keeps the paper's sizes (the 32 x 8 x 8 visual code
    grid, the 8 x 64 audio features, w 84, z_av 16, z_a 8, z_v 4, every MLP and GRU), so the two
    presets differ in one place only: the visual VQ-VAE's conv widths are halved
    (64-128-128-128 → 32-64-64-64) with one residual block instead of two. That conv stack is
    94% of the paper preset's MACs (137.6 M → 42.7 M per frame); docs/model.md has the numbers.
    """
    return ModelConfig(
        preset="default",
        visual=VisualVQVAEConfig(channels=(32, 64, 64, 64), residual_blocks=1,
                                 residual_hidden=32),
    )


PRESETS = {"paper": paper_config, "default": default_config}


def preset(name: str) -> ModelConfig:
    """The named preset's config; ValueError lists the known names."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


def with_overrides(cfg: ModelConfig, **sections: Any) -> ModelConfig:
    """A copy with whole sections replaced (e.g. `emotion=EmotionHeadConfig(labels=...)`)."""
    return replace(cfg, **sections)


__all__ = ["AudioVQVAEConfig", "VisualVQVAEConfig", "MDVAEConfig", "EmotionHeadConfig", "RefineConfig",
           "ModelConfig", "EMOTION_LABELS", "PRESETS", "preset", "paper_config",
           "default_config", "with_overrides", "conv_out_len"]
