"""What every backend of the model step provides, and the names they are chosen by.

An engine runs `StreamingModel.step` (both encoders, one MDVAE step with its recurrent state in
and out, the decoders and the emotion head) for a fixed batch of B streams:

    engine.step(spectrum, face, state) -> (StepOutputs, State)

with the same tensors as the eager model: `spectrum` (B, 513) float32 power and `face`
(B, 3, 64, 64) float32 in -0.5..0.5, given on the host (CPU) or already on the engine's device;
`state` and the outputs live on `engine.device` (`engine.initial_state()` makes a fresh one).
So an engine is a drop-in `step_fn` for `GuardedStream`, and the live stage, the parity checks
and the benchmark drive every backend through this one call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from streamav.errors import InputError
from streamav.model.streaming import State, StepOutputs, StreamingModel

BACKEND_NAMES: tuple[str, ...] = ("eager", "onnx", "compile", "tensorrt")
DEVICES: tuple[str, ...] = ("cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineSpec:
    """Which engine: backend, device, precision, and the static batch (streams per step)."""

    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise InputError(f"unknown backend {self.backend!r}: choose from "
                             f"{', '.join(BACKEND_NAMES)} or auto")
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r}: choose cpu or cuda")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}: choose fp32, fp16 or int8")
        if self.batch < 1:
            raise InputError(f"--batch must be at least 1, got {self.batch}")

    @property
    def label(self) -> str:
        """Short name for tables and logs, e.g. 'onnx/cpu/fp32/b1'."""
        return f"{self.backend}/{self.device}/{self.precision}/b{self.batch}"

    def as_dict(self) -> dict:
        return asdict(self)


class StepEngine(ABC):
    """One backend's compiled (or not) model step for `spec.batch` streams on `spec.device`."""

    def __init__(self, spec: EngineSpec, model: StreamingModel) -> None:
        self.spec = spec
        self.model = model  # the eager model: labels, config, initial and reset states
        self.device = torch.device(spec.device)

    @property
    def name(self) -> str:
        return self.spec.backend

    def initial_state(self) -> State:
        return self.model.initial_state(self.spec.batch, self.device)

    def inputs_to_device(self, spectrum: Tensor, face: Tensor) -> tuple[Tensor, Tensor]:
        """Host (or device) inputs as contiguous float32 on the engine's device."""
        return (spectrum.to(self.device, torch.float32, non_blocking=True).contiguous(),
                face.to(self.device, torch.float32, non_blocking=True).contiguous())

    @abstractmethod
    def step(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        """One frame for every stream: outputs and the next state, on `self.device`."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU); benchmarks call it after each step."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

