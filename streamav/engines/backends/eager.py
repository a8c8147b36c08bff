"""PyTorch eager: the reference every other backend is checked against (CPU or CUDA)."""

from __future__ import annotations

import torch
from torch import Tensor

from streamav.engines.base import StepEngine
from streamav.engines.choice import EngineChoice
from streamav.model.streaming import State, StepOutputs, StreamingModel


class EagerEngine(StepEngine):
    def __init__(self, spec: EngineChoice, model: StreamingModel) -> None:
        super().__init__(spec, model)  # the precisions eager runs: EngineChoice checked them
        self.dtype = torch.float16 if spec.precision == "fp16" else torch.float32
        # A copy on the engine's device: the caller's model stays where it is.
        self.net = StreamingModel(model.cfg, model.snap_face_to_codebook)
        self.net.load_state_dict(model.state_dict())
        self.net = self.net.to(self.device, self.dtype).eval()

    @torch.inference_mode()
    def step(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        spectrum, face = self.inputs_to_device(spectrum, face)
        if self.dtype == torch.float32:
            return self.net.step(spectrum, face, state)
        outputs, next_state = self.net.step(spectrum.to(self.dtype), face.to(self.dtype),
                                            State(*(s.to(self.dtype) for s in state)))
        return (StepOutputs(*(o.float() for o in outputs)),
                State(*(s.float() for s in next_state)))
