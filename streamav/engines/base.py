"""What every backend of the model step provides, for one engine choice
(`streamav.engines.choice.EngineChoice`, its backend named).

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

import torch
from torch import Tensor

from streamav.engines.choice import EngineChoice
from streamav.model.streaming import State, StepOutputs, StreamingModel


class StepEngine(ABC):
    """One backend's compiled (or not) model step for `spec.batch` streams on `spec.device`
    (`spec`: the engine choice with its backend named, never `auto`)."""

    def __init__(self, spec: EngineChoice, model: StreamingModel) -> None:
        if spec.is_auto:
            raise ValueError("an engine is opened for a named backend: resolve 'auto' first "
                             "(streamav.engines.registry.resolve_backend)")
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

