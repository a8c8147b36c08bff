"""The model step behind the live stage, with or without PyTorch, behind one numpy interface.

    runner = open_runner(folder, EngineOptions(...))
    outputs = runner.step(spectrum, face)  # (1, 513), (1, 3, 64, 64) float32 → {name: (1, ...)}
    runner.reset()                         # a new person: the initial state

`step` returns None for a frame with a non-finite value anywhere (inputs, outputs or next
state): it is counted in `nonfinite_count` and the state is reset, as `GuardedStream` does.

- With PyTorch: `TorchRunner`, the model on the engine asked for (`--backend`, `auto`: ONNX
  Runtime on a CPU), through the engine cache; the ONNX engine for batch 1, fp32, CPU is the
  model folder's shipped step.onnx when it is current (its cache entry keyed by its sha256).
- Without PyTorch: `OnnxRuntimeRunner`, the folder's shipped step.onnx on ONNX Runtime with
  numpy (batch 1, CPU, fp32), when it was made from the folder's weights; other engine choices
  need PyTorch and say so. Nothing on this path imports torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from streamav.engines.shipped import STEP_FILE, ShippedStep, find_shipped_step
from streamav.errors import MissingDependencyError

log = logging.getLogger(__name__)

TORCH_HINT = ("pip install 'streamav[train]' (torch==2.13.0; elsewhere add --extra-index-url "
              "https://download.pytorch.org/whl/cpu)")


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs the step (docs/engines.md); `auto` is ONNX Runtime on a CPU."""

    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    engine_dir: Path | None = None


class StepRunner(Protocol):
    label: str  # the engine, e.g. "onnx/cpu/fp32/b1"
    labels: tuple[str, ...]  # the step's emotion head's classes
    nonfinite_count: int

    def step(self, spectrum: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray] | None: ...
    def reset(self) -> None: ...


def torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def runnable_without_torch(folder: Path) -> tuple[bool, str]:
    """Whether the folder's model can run here without PyTorch, and why not."""
    shipped, why = find_shipped_step(folder)
    return shipped is not None, why


def open_runner(folder: Path, options: EngineOptions) -> StepRunner:
    folder = Path(folder)
    shipped, why = find_shipped_step(folder)
    if not torch_importable():
        if shipped is None:
            raise MissingDependencyError(
                f"the model in {folder} has no usable {STEP_FILE} ({why}) and needs PyTorch "
                f"otherwise: {TORCH_HINT}")
        asked = (options.backend, options.device, options.precision)
        if options.backend not in ("auto", "onnx") or asked[1:] != ("cpu", "fp32"):
            raise MissingDependencyError(
                f"--backend {options.backend} --device {options.device} --precision "
                f"{options.precision} needs PyTorch (without it the model runs on the shipped "
                f"{STEP_FILE}: onnx, cpu, fp32): {TORCH_HINT}")
        log.info("PyTorch is not installed: the model runs on %s with ONNX Runtime",
                 shipped.path)
        return OnnxRuntimeRunner(shipped, options.threads)
    if shipped is None and (folder / STEP_FILE).exists():
        log.warning("%s not used (%s): the engine is exported from the weights instead",
                    folder / STEP_FILE, why)
    return TorchRunner(folder, options, shipped)


def _all_finite(arrays) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


class OnnxRuntimeRunner:
    """The shipped step on ONNX Runtime with numpy, with the non-finite guard."""

    def __init__(self, shipped: ShippedStep, threads: int | None = 1) -> None:
        from streamav.engines.backends.onnx_numpy import NumpyOnnxStep

        self._step = NumpyOnnxStep(shipped, threads)
        self.label = self._step.label
        self.labels = shipped.labels
        self.nonfinite_count = 0
        self._state = self._step.initial_state()

    def step(self, spectrum: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray] | None:
        outputs, state = self._step.step(spectrum, face, self._state)
        if _all_finite((spectrum, face, *outputs.values(), *state)):
            self._state = state
            return outputs
        self.nonfinite_count += 1
        self._state = self._step.initial_state()
        return None

    def reset(self) -> None:
        self._state = self._step.initial_state()


class TorchRunner:
    """The model on a PyTorch-side engine (any backend), through `GuardedStream`."""

    def __init__(self, folder: Path, options: EngineOptions,
                 shipped: ShippedStep | None = None) -> None:
        import torch

        from streamav.engines import EngineCache
        from streamav.engines.registry import open_with_fallback
        from streamav.model.io import load_model
        from streamav.model.streaming import GuardedStream

        torch.set_num_threads(options.threads)  # by default one: the others decode and track
        self._torch = torch
        self.model = load_model(folder)
        engine = open_with_fallback(self.model, options.backend, options.device,
                                    options.precision, batch=1,
                                    cache=EngineCache(options.engine_dir), threads=options.threads,
                                    shipped_onnx=shipped)
        self.label = engine.spec.label
        self.labels = tuple(self.model.labels)
        self._stream = GuardedStream(self.model, batch=1, step_fn=engine.step,
                                     device=engine.device)

    @property
    def nonfinite_count(self) -> int:
        return self._stream.nonfinite_count

    def step(self, spectrum: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray] | None:
        torch = self._torch
        out = self._stream.step(torch.from_numpy(np.ascontiguousarray(spectrum)),
                                torch.from_numpy(np.ascontiguousarray(face)))
        if out is None:
            return None
        return {name: value.detach().cpu().numpy() for name, value in out._asdict().items()}

    def reset(self) -> None:
        self._stream.reset()
