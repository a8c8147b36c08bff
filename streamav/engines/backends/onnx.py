"""ONNX Runtime: the CPU default (CUDA and TensorRT execution providers where installed).

fp32 runs the export as it is; int8 runs it with its matrix products in int8, each stream
quantized on its own (`streamav.engines.int8_per_stream`; docs/engines.md has the numbers).

The engine file is the ONNX export of the step (`streamav.engines.export.write_onnx`); this
module only runs it. Inputs and the state go in as numpy views of the torch tensors (no copy on
CPU) and the outputs come back as torch tensors sharing ONNX Runtime's buffers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamav.engines.backends.onnx_numpy import import_ort, session_options
from streamav.engines.base import StepEngine
from streamav.engines.choice import EngineChoice
from streamav.errors import InputError, MissingDependencyError
from streamav.model.streaming import (EXPORT_INPUT_NAMES, OUTPUT_NAMES, State, StepOutputs,
                                      StreamingModel)


def providers_for(device: str) -> list[str]:
    """The execution providers to ask for on `device`, best first, among those installed."""
    ort = import_ort()
    available = ort.get_available_providers()
    wanted = (["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device == "cuda"
              else []) + ["CPUExecutionProvider"]
    chosen = [p for p in wanted if p in available]
    if device == "cuda" and chosen == ["CPUExecutionProvider"]:
        raise MissingDependencyError(
            "this ONNX Runtime has no CUDA execution provider: pip install onnxruntime-gpu")
    return chosen


class OnnxEngine(StepEngine):
    def __init__(self, spec: EngineChoice, model: StreamingModel, onnx_path: Path,
                 threads: int | None = None, spinning: bool = False) -> None:
        super().__init__(spec, model)
        ort = import_ort()
        options = session_options(threads, spinning)
        self.spinning = spinning
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=providers_for(spec.device))
        names = [i.name for i in self.session.get_inputs()]
        if names != list(EXPORT_INPUT_NAMES):
            raise InputError(f"{self.path} is not a streamav step export (inputs {names})")
        self.threads = options.intra_op_num_threads

    def step(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        if self.device.type == "cuda":
            return self._step_cuda(spectrum, face, state)
        feeds = {name: _numpy(t) for name, t in zip(EXPORT_INPUT_NAMES, (spectrum, face, *state))}
        results = [torch.from_numpy(r) for r in self.session.run(None, feeds)]
        n = len(OUTPUT_NAMES)
        return StepOutputs(*results[:n]), State(*results[n:])

    def _step_cuda(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        # Bound inputs/outputs on the GPU: no round trip through the host for the state.
        spectrum, face = self.inputs_to_device(spectrum, face)
        binding = self.session.io_binding()
        for name, t in zip(EXPORT_INPUT_NAMES, (spectrum, face, *state)):
            t = t.contiguous()
            binding.bind_input(name, "cuda", self.device.index or 0, np.float32, tuple(t.shape),
                               t.data_ptr())
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        results = [torch.from_dlpack(v.to_dlpack()) if hasattr(v, "to_dlpack")
                   else torch.from_numpy(v.numpy()).to(self.device)
                   for v in binding.get_outputs()]
        n = len(OUTPUT_NAMES)
        return StepOutputs(*results[:n]), State(*results[n:])


def _numpy(t: Tensor) -> np.ndarray:
    if t.device.type != "cpu" or t.dtype != torch.float32:
        t = t.detach().to("cpu", torch.float32)
    return np.ascontiguousarray(t.detach().numpy())
