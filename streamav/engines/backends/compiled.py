"""torch.compile of the step: inductor kernels; on CUDA with CUDA graphs ("reduce-overhead").

Nothing is stored in `engines/`: the compiled kernels live in inductor's own cache
(~/.cache or $TORCHINDUCTOR_CACHE_DIR), so the first start pays the compilation (measured as
the cold start by `streamav bench`) and later ones mostly reuse it. The state and the outputs
of a CUDA-graph step live in buffers the next replay overwrites, so the engine clones them
(the clone is part of the measured step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from streamav.engines.base import StepEngine
from streamav.engines.choice import EngineChoice
from streamav.errors import MissingDependencyError
from streamav.model.streaming import OUTPUT_NAMES, State, StepOutputs, StreamingModel


def check_available(device: str) -> None:
    if device == "cpu":
        import shutil

        if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++")):
            raise MissingDependencyError(
                "torch.compile on CPU needs a C/C++ compiler (apt install build-essential)")


class CompiledEngine(StepEngine):
    def __init__(self, spec: EngineChoice, model: StreamingModel) -> None:
        check_available(spec.device)
        super().__init__(spec, model)
        net = StreamingModel(model.cfg, model.snap_face_to_codebook)
        net.load_state_dict(model.state_dict())
        self.net = net.to(self.device).eval()
        # CUDA: CUDA graphs replay the whole step as one launch; CPU: inductor's C++ kernels.
        mode = "reduce-overhead" if spec.device == "cuda" else "default"
        self.mode = mode
        self.compiled = torch.compile(self.net, mode=mode, fullgraph=True, dynamic=False)

    @torch.inference_mode()
    def step(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        spectrum, face = self.inputs_to_device(spectrum, face)
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        results = self.compiled(spectrum, face, *state)
        if self.device.type == "cuda":
            results = tuple(r.clone() for r in results)
        n = len(OUTPUT_NAMES)
        return StepOutputs(*results[:n]), State(*results[n:])
