"""The MDVAE model in PyTorch: per-frame VQ-VAEs, the MDVAE with a causal w, the streaming step.

    config     ModelConfig tree, presets `paper` and `default`
    vqvae      AudioVQVAE, VisualVQVAE, VectorQuantizerEMA (stage 1)
    mdvae      MDVAE, its causal w filter and training loss (stage 2)
    streaming  StreamingModel.step / run_sequence, GuardedStream (non-finite guard)
    io         save_model / load_model of a model folder (safetensors + config.json)
    profile    MAC counts and eager latency of the step

docs/model.md describes the design choices. PyTorch is an optional dependency (`streamav[train]`).
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from streamav.errors import MissingDependencyError

    raise MissingDependencyError(
        "the model needs PyTorch: pip install 'streamav[train]'") from exc

from streamav.model.config import (EMOTION_LABELS, AudioVQVAEConfig, EmotionHeadConfig,
                                   MDVAEConfig, ModelConfig, VisualVQVAEConfig, preset)
from streamav.model.mdvae import MDVAE, MDVAEState, mdvae_loss
from streamav.model.streaming import (EXPORT_INPUT_NAMES, EXPORT_OUTPUT_NAMES, OUTPUT_NAMES,
                                      STATE_NAMES, EmotionHead, GuardedStream, State,
                                      StepOutputs, StreamingModel, face_rgb_from_tensor,
                                      face_tensor_from_rgb)
from streamav.model.vqvae import AudioVQVAE, VisualVQVAE, VectorQuantizerEMA, itakura_saito

__all__ = [
    "EMOTION_LABELS", "AudioVQVAEConfig", "VisualVQVAEConfig", "MDVAEConfig", "EmotionHeadConfig",
    "ModelConfig", "preset", "AudioVQVAE", "VisualVQVAE", "VectorQuantizerEMA", "itakura_saito",
    "MDVAE", "MDVAEState", "mdvae_loss", "StreamingModel", "State", "StepOutputs", "EmotionHead",
    "GuardedStream", "OUTPUT_NAMES", "STATE_NAMES", "EXPORT_INPUT_NAMES", "EXPORT_OUTPUT_NAMES",
    "face_tensor_from_rgb", "face_rgb_from_tensor",
]
