"""Engines: the model step on every backend (eager, ONNX Runtime, torch.compile, TensorRT),
the engine cache under engines/, calibration, and parity against eager. See docs/engines.md."""

from streamav.engines.base import BACKEND_NAMES, EngineSpec, StepEngine
from streamav.engines.cache import EngineCache
from streamav.engines.registry import build_or_load, open_engine, resolve_backend

__all__ = ["BACKEND_NAMES", "EngineCache", "EngineSpec", "StepEngine", "build_or_load",
           "open_engine", "resolve_backend"]
