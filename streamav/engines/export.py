"""The model step exported once with torch.export; every backend starts from this export.

`export_step(model, batch)` is `torch.export.export` of `StreamingModel.forward` (the step with
flat tensors: spectrum, face and the five state tensors in; the eight outputs and the five next
state tensors out) at a static batch, in eval mode, float32. `write_onnx` turns that same
ExportedProgram into an ONNX file (`torch.onnx.export(..., dynamo=True)`, which needs the
`onnx` and `onnxscript` packages of the `train` extra); the TensorRT backend compiles it with
torch-tensorrt; torch.compile and eager run the module the export was taken from.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from streamav.errors import MissingDependencyError
from streamav.model.streaming import EXPORT_INPUT_NAMES, EXPORT_OUTPUT_NAMES, StreamingModel

log = logging.getLogger(__name__)

ONNX_OPSET = 18


def export_step(model: StreamingModel, batch: int) -> torch.export.ExportedProgram:
    """torch.export of the float32 step for `batch` streams (static shapes)."""
    model = model.float().eval()
    with torch.no_grad():
        return torch.export.export(model, model.example_inputs(batch), strict=False)


def write_onnx(program: torch.export.ExportedProgram, path: Path) -> Path:
    """The exported step as an ONNX model at `path` (inputs/outputs named as in the export)."""
    try:
        import onnx  # noqa: F401  (the exporter imports it; fail here with the install hint)
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "exporting to ONNX needs onnx and onnxscript: pip install 'streamav[train]'") from None
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        onnx_program = torch.onnx.export(
            program, (), input_names=list(EXPORT_INPUT_NAMES),
            output_names=list(EXPORT_OUTPUT_NAMES), opset_version=ONNX_OPSET, dynamo=True,
            verbose=False)
    onnx_program.save(str(path))
    return path
