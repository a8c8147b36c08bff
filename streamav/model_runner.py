"""The model step behind the live stage, with or without PyTorch, behind one numpy interface.

    runner = open_runner(folder, EngineChoice(...), threads=1, engine_dir=None, inputs=...)
    outputs = runner.step(spectrum, face)  # (1, 513), (1, 3, 64, 64) float32 → {name: (1, ...)}
    runner.reset()                         # a new person: the initial state

`step` returns None for a frame with a non-finite value anywhere (inputs, outputs or next
state): it is counted in `nonfinite_count` and the state is reset, as `GuardedStream` does.

The runner is one slot of a `streamav.stream_slots.SlotRunner`, which holds the recurrent
state of its streams and steps them together: `open_runner` is a runner of one slot on a
batch-1 engine, `open_slots(folder, choice, capacity)` the slots of a many-stream run
(`streamav live` with several inputs) on the engine built for batch `capacity`. Engines
(`BatchEngine`: a static batch, numpy in and out):

- With PyTorch: `TorchBatchEngine`, the model on the engine asked for (`--backend`, `auto`:
  ONNX Runtime on a CPU), through the engine cache (but see the next item for the CPU
  default). An engine built on first use checks its parity over the caller's real frames
  (`inputs`, streamav.engines.inputs.EngineInputs).
- `ShippedBatchEngine`, the folder's shipped step.onnx on ONNX Runtime with numpy (batch 1,
  CPU, fp32), when it was made from the folder's weights: the engine of `auto` or `onnx` on
  the CPU for one stream, with or without PyTorch installed; without PyTorch also that of
  several streams (they then run one after the other in a tick); other engine choices need
  PyTorch and say so. Nothing on this path imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from streamav.engines.choice import EngineChoice
from streamav.engines.inputs import EngineInputs
from streamav.engines.shipped import SHIPPED_ENGINE, STEP_FILE, ShippedStep, find_shipped_step
from streamav.errors import MissingDependencyError
from streamav.stream_slots import BatchEngine, SlotRunner

log = logging.getLogger(__name__)

TORCH_HINT = ("pip install 'streamav[train]' (torch==2.13.0; elsewhere add --extra-index-url "
              "https://download.pytorch.org/whl/cpu)")


class StepRunner(Protocol):
    label: str  # the engine, e.g. "onnx/cpu/fp32/b1"
    labels: tuple[str, ...]  # the step's emotion head's classes
    nonfinite_count: int

    def step(self, spectrum: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray] | None: ...
    def reset(self) -> None: ...
    def idle(self) -> None: ...  # no face this frame: the state is held
    def leave(self) -> None: ...  # the stream is done: its slot is freed (idempotent)


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
    """The step of `folder`'s model on `choice`, for one stream: a slot of a one-slot
    `SlotRunner` (the single-stream path is the many-stream path with one stream). `threads`:
    intra-op threads of the step; `engine_dir`: the engine cache (None: its default); `inputs`:
    real frames for an engine that has to be built first (streamav.engines.inputs)."""
    return SlotRunner(open_batch_engine(folder, choice, threads, engine_dir, inputs), 1).join()


def open_slots(folder: Path, choice: EngineChoice, capacity: int, threads: int = 1,
               engine_dir: Path | None = None, inputs: EngineInputs | None = None,
               gather_s: float = 0.005) -> SlotRunner:
    """`capacity` stream slots stepped together on `choice`'s engine built for that batch
    (with PyTorch; without it, the shipped batch-1 step once per stream of a tick), and on the
    shipped batch-1 step for the ticks of one face when `choice` is the CPU default."""
    engine = open_batch_engine(folder, dataclasses.replace(choice, batch=capacity), threads,
                               engine_dir, inputs)
    smaller: tuple[BatchEngine, ...] = ()
    single = dataclasses.replace(choice, batch=1)
    if capacity > 1 and engine.batch > 1 and shipped_can_run(single):
        # the shipped batch-1 step beside it (no build): a tick of one face costs one row
        shipped, _ = find_shipped_step(Path(folder))
        if shipped is not None and importlib.util.find_spec("onnxruntime") is not None:
            smaller = (ShippedBatchEngine(shipped, threads),)
    return SlotRunner(engine, capacity, gather_s, smaller)


def open_batch_engine(folder: Path, choice: EngineChoice, threads: int = 1,
                      engine_dir: Path | None = None,
                      inputs: EngineInputs | None = None) -> BatchEngine:
    """The step of `folder`'s model on `choice` (its static batch) behind numpy: with PyTorch
    any engine (through the engine cache); without, the shipped step.onnx (batch 1)."""
    folder = Path(folder)
    shipped, why = find_shipped_step(folder)
    if (shipped is not None and shipped_can_run(choice)
            and importlib.util.find_spec("onnxruntime") is not None):
        # the CPU default: the shipped step with numpy, whether or not PyTorch is installed
        # (importing torch and loading the weights through it cost start-up time and memory,
        # and its tensors a little on every frame)
        return ShippedBatchEngine(shipped, threads)
    if not torch_importable():
        if shipped is None:
            raise MissingDependencyError(
                f"the model in {folder} has no usable {STEP_FILE} ({why}) and needs PyTorch "
                f"otherwise: {TORCH_HINT}")
        problem = needs_torch_problem(dataclasses.replace(choice, batch=1))
        if problem:
            raise MissingDependencyError(problem)
        log.info("PyTorch is not installed: the model runs on %s with ONNX Runtime",
                 shipped.path)
        if choice.batch > 1:
            log.warning("without PyTorch there is no batch-%d engine: the %d streams of a tick "
                        "run one after the other on the shipped batch-1 step", choice.batch,
                        choice.batch)
        return ShippedBatchEngine(shipped, threads)
    if shipped is None and (folder / STEP_FILE).exists():
        log.warning("%s not used (%s): the engine is exported from the weights instead",
                    folder / STEP_FILE, why)
    return TorchBatchEngine(folder, choice, threads, engine_dir, inputs, shipped)


class ShippedBatchEngine:
    """The shipped step on ONNX Runtime with numpy (batch 1, no torch)."""

    batch = 1

    def __init__(self, shipped: ShippedStep, threads: int | None = 1) -> None:
        from streamav.engines.backends.onnx_numpy import NumpyOnnxStep

        self._step = NumpyOnnxStep(shipped, threads)
        self.label = self._step.label
        self.labels = shipped.labels

    def initial_state(self) -> tuple[np.ndarray, ...]:
        return self._step.initial_state()

    def run(self, spectrum: np.ndarray, face: np.ndarray, state: tuple[np.ndarray, ...]
            ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        return self._step.step(spectrum, face, state)


class TorchBatchEngine:
    """The model on a PyTorch-side engine (any backend) for `choice.batch` rows, numpy in and
    out (on the CPU the ONNX engine's outputs share ONNX Runtime's buffers: no copy)."""

    def __init__(self, folder: Path, choice: EngineChoice, threads: int = 1,
                 engine_dir: Path | None = None, inputs: EngineInputs | None = None,
                 shipped: ShippedStep | None = None) -> None:
        import torch

        from streamav.engines import EngineCache
        from streamav.engines.registry import open_with_fallback
        from streamav.model.io import load_model

        torch.set_num_threads(threads)  # by default one: the others decode and track
        self._torch = torch
        self.model = load_model(folder)
        self.engine = open_with_fallback(self.model, choice, cache=EngineCache(engine_dir),
                                         threads=threads, shipped_onnx=shipped, inputs=inputs)
        self.label = self.engine.spec.label
        self.labels = tuple(self.model.labels)
        self.batch = self.engine.spec.batch
        from streamav.model.streaming import State

        self._state_type = State
        # the last next state, on the device and as the host arrays handed out: when the
        # runner passes those same arrays back (a tick of every slot, nothing reset), the
        # device copy is used as it is instead of sending the state to the device again
        self._last_host: tuple[np.ndarray, ...] = ()
        self._last_device = None

    def initial_state(self) -> tuple[np.ndarray, ...]:
        return tuple(t.detach().cpu().numpy().copy() for t in self.engine.initial_state())

    def run(self, spectrum: np.ndarray, face: np.ndarray, state: tuple[np.ndarray, ...]
            ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        torch = self._torch
        device = self.engine.device
        if len(state) == len(self._last_host) and all(
                a is b for a, b in zip(state, self._last_host)):
            device_state = self._last_device
        else:
            device_state = self._state_type(*(
                torch.from_numpy(np.ascontiguousarray(s)).to(device) for s in state))
        with torch.inference_mode():
            outputs, next_state = self.engine.step(torch.from_numpy(spectrum),
                                                   torch.from_numpy(face), device_state)
        host = tuple(_to_numpy(s) for s in next_state)
        self._last_host, self._last_device = host, next_state
        return {name: _to_numpy(v) for name, v in outputs._asdict().items()}, host


def _to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()
