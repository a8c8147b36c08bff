"""Engines: the model step on every backend (eager, ONNX Runtime, torch.compile, TensorRT),
the engine cache under engines/, calibration, and parity against eager. See docs/engines.md.

`choice` (EngineChoice: backend, device, precision, batch), `inputs` (what a build reads, given
by the caller), `shipped` and `backends.onnx_numpy` (the exported step shipped in a model
folder, run by ONNX Runtime with numpy) import without PyTorch; the other modules need it. The
names below are imported on first use."""

from __future__ import annotations

import importlib

_NAMES = {"BACKEND_NAMES": "choice", "EngineChoice": "choice", "EngineInputs": "inputs",
          "StepEngine": "base",
          "EngineCache": "cache", "build_or_load": "registry", "open_engine": "registry",
          "resolve_backend": "registry"}


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'streamav.engines' has no attribute {name!r}")
    return getattr(importlib.import_module(f"streamav.engines.{module}"), name)


__all__ = list(_NAMES)
