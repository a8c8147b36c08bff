"""The model step behind the live stage, with or without PyTorch, behind one numpy interface.

    runner = open_runner(folder, EngineChoice(...), threads=1, engine_dir=None, inputs=...)
    outputs = runner.step(spectrum, face)  # (1, 513), (1, 3, 64, 64) float32 → {name: (1, ...)}
    runner.reset()                         # a new person: the initial state

`step` returns None for a frame with a non-finite value anywhere (inputs, outputs or next
state): it is counted in `nonfinite_count` and the state is reset, as `GuardedStream` does.

- With PyTorch: `TorchRunner`, the model on the engine asked for (`--backend`, `auto`: ONNX
  Runtime on a CPU), through the engine cache; the ONNX engine for batch 1, fp32, CPU is the
  model folder's shipped step.onnx when it is current (its cache entry keyed by its sha256).
  An engine built on first use checks its parity over the caller's real frames (`inputs`,
  streamav.engines.inputs.EngineInputs).
- Without PyTorch: `OnnxRuntimeRunner`, the folder's shipped step.onnx on ONNX Runtime with
  numpy (batch 1, CPU, fp32), when it was made from the folder's weights; other engine choices
  need PyTorch and say so. Nothing on this path imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from streamav.engines.choice import EngineChoice
from streamav.engines.inputs import EngineInputs
from streamav.engines.shipped import SHIPPED_ENGINE, STEP_FILE, ShippedStep, find_shipped_step
from streamav.errors import MissingDependencyError

log = logging.getLogger(__name__)

TORCH_HINT = ("pip install 'streamav[train]' (torch==2.13.0; elsewhere add --extra-index-url "
              "https://download.pytorch.org/whl/cpu)")


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


def shipped_can_run(choice: EngineChoice) -> bool:
    """Whether the shipped step (onnx, cpu, fp32, batch 1) is this engine choice."""
    return choice.backend in ("auto", "onnx") and choice.with_backend("onnx") == SHIPPED_ENGINE


def needs_torch_problem(choice: EngineChoice) -> str | None:
    """Why `choice` cannot run without PyTorch (None: the shipped step can be it)."""
    if shipped_can_run(choice):
        return None
    return (f"--backend {choice.backend} --device {choice.device} --precision "
            f"{choice.precision} needs PyTorch (without it the model runs on the shipped "
            f"{STEP_FILE}: onnx, cpu, fp32): {TORCH_HINT}")


def check_choice_here(choice: EngineChoice) -> None:
    """Before anything is opened or bound: MissingDependencyError when PyTorch is not installed
    and `choice` needs it (a cheap check: torch is looked up, not imported)."""
    if importlib.util.find_spec("torch") is None:
        problem = needs_torch_problem(choice)
        if problem:
            raise MissingDependencyError(problem)


def open_runner(folder: Path, choice: EngineChoice, threads: int = 1,
                engine_dir: Path | None = None,
                inputs: EngineInputs | None = None) -> StepRunner:
    """The step of `folder`'s model on `choice` (batch 1). `threads`: intra-op threads of the
    step; `engine_dir`: the engine cache (None: its default); `inputs`: real frames for an
    engine that has to be built first (streamav.engines.inputs)."""
    folder = Path(folder)
    shipped, why = find_shipped_step(folder)
    if not torch_importable():
        if shipped is None:
            raise MissingDependencyError(
                f"the model in {folder} has no usable {STEP_FILE} ({why}) and needs PyTorch "
                f"otherwise: {TORCH_HINT}")
        problem = needs_torch_problem(choice)
        if problem:
            raise MissingDependencyError(problem)
        log.info("PyTorch is not installed: the model runs on %s with ONNX Runtime",
                 shipped.path)
        return OnnxRuntimeRunner(shipped, threads)
    if shipped is None and (folder / STEP_FILE).exists():
        log.warning("%s not used (%s): the engine is exported from the weights instead",
                    folder / STEP_FILE, why)
    return TorchRunner(folder, choice, threads, engine_dir, inputs, shipped)


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

    def __init__(self, folder: Path, choice: EngineChoice, threads: int = 1,
                 engine_dir: Path | None = None, inputs: EngineInputs | None = None,
                 shipped: ShippedStep | None = None) -> None:
        import torch

        from streamav.engines import EngineCache
        from streamav.engines.registry import open_with_fallback
        from streamav.model.io import load_model
        from streamav.model.streaming import GuardedStream

        if choice.batch != 1:
            raise ValueError(f"the live step runs one stream, not batch {choice.batch}")
        torch.set_num_threads(threads)  # by default one: the others decode and track
        self._torch = torch
        self.model = load_model(folder)
        engine = open_with_fallback(self.model, choice, cache=EngineCache(engine_dir),
                                    threads=threads, shipped_onnx=shipped, inputs=inputs)
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
