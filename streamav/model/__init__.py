"""The MDVAE model in PyTorch: per-frame VQ-VAEs, the MDVAE with a causal w, the streaming step.

    config     ModelConfig tree, presets `paper` and `default` (no torch)
    folder     a model folder's config.json: read and checked (no torch)
    inputs     the model's input contract: face scaling, spectrum bins (no torch)
    vqvae      AudioVQVAE, VisualVQVAE, VectorQuantizerEMA (stage 1)
    mdvae      MDVAE, its causal w filter and training loss (stage 2)
    streaming  StreamingModel.step / run_sequence, GuardedStream (non-finite guard)
    io         save_model / load_model of a model folder (safetensors + config.json)
    profile    MAC counts and eager latency of the step

docs/model.md describes the design choices. PyTorch is an optional dependency (`streamav[train]`):
the modules marked "no torch" import without it (the runtime without PyTorch reads the model
folder through them); the PyTorch names below are imported on first use and raise
MissingDependencyError, with the install hint, where torch is missing.
"""

from __future__ import annotations

import importlib

from streamav.model.config import (EMOTION_LABELS, AudioVQVAEConfig, EmotionHeadConfig,
                                   MDVAEConfig, ModelConfig, VisualVQVAEConfig, preset)

_TORCH_NAMES = {
    "MDVAE": "mdvae", "MDVAEState": "mdvae", "mdvae_loss": "mdvae",
    "EXPORT_INPUT_NAMES": "streaming", "EXPORT_OUTPUT_NAMES": "streaming",
    "OUTPUT_NAMES": "streaming", "STATE_NAMES": "streaming", "EmotionHead": "streaming",
    "GuardedStream": "streaming", "State": "streaming", "StepOutputs": "streaming",
    "StreamingModel": "streaming", "face_rgb_from_tensor": "streaming",
    "face_tensor_from_rgb": "streaming",
    "AudioVQVAE": "vqvae", "VisualVQVAE": "vqvae", "VectorQuantizerEMA": "vqvae",
    "itakura_saito": "vqvae",
}


def __getattr__(name: str):
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'streamav.model' has no attribute {name!r}")
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        from streamav.errors import MissingDependencyError

        raise MissingDependencyError(
            "the model needs PyTorch: pip install 'streamav[train]'") from exc
    return getattr(importlib.import_module(f"streamav.model.{module}"), name)


__all__ = [
    "EMOTION_LABELS", "AudioVQVAEConfig", "VisualVQVAEConfig", "MDVAEConfig", "EmotionHeadConfig",
    "ModelConfig", "preset", *_TORCH_NAMES,
]
