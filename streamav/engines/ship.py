"""Make the step a model folder ships for the runtime without PyTorch: step.onnx + step.json.

`write_shipped_step(folder)` loads the folder's model, exports the batch-1 step with the
project's export (`export_step` → `write_onnx`, the `onnx` engine's file), rewrites its graph as
the `onnx` engines' build does (`streamav.engines.graph_rewrite.rewrite_step`), stores every float32
weight that float16 holds exactly as float16 followed by a Cast to float32 (`compact_weights`:
lossless, and a model saved with float16 weights, as the shipped one is, halves), checks the
file against eager over real frames with the state fed back (`parity.TOLERANCES["fp32"]`), and
writes step.onnx then step.json (streamav.engines.shipped documents it), each atomically. The
real frames of the parity check are the caller's (`inputs`, streamav.engines.inputs). Needs
torch, onnx and onnxscript (`streamav[train]`); `scripts/export_step.py` runs it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from streamav.engines.inputs import EngineInputs
from streamav.engines.shipped import (SHIPPED_ENGINE, STEP_FILE, STEP_FORMAT, STEP_MANIFEST,
                                      STEP_VERSION)
from streamav.host import file_sha256, package_version
from streamav.model.folder import read_model_config, weights_path

log = logging.getLogger(__name__)

PARITY_FRAMES = 120


def compact_weights(path: Path) -> dict[str, int]:
    """Rewrite the ONNX file at `path` with its float16-exact float32 initializers stored as
    float16, each behind a Cast to float32 (ONNX Runtime folds the casts when it loads the
    file, so the step computes in float32 on the same values). Returns counts."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts, kept, halved = [], [], 0
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values, equal_nan=True):
            kept.append(init)
            continue
        stored = numpy_helper.from_array(half, f"{init.name}__f16")
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name],
                                      to=onnx.TensorProto.FLOAT, name=f"{init.name}__cast"))
        halved += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path), save_as_external_data=False)
    return {"float16": halved, "float32": len(kept) - halved}


def write_shipped_step(folder: Path, inputs: EngineInputs,
                       parity_frames: int = PARITY_FRAMES) -> dict:
    """Export `folder`'s model to folder/step.onnx and describe it in folder/step.json, its
    parity against eager checked over `inputs`' real frames."""
    import torch

    from streamav.engines import parity
    from streamav.engines.backends.eager import EagerEngine
    from streamav.engines.backends.onnx import OnnxEngine
    from streamav.engines.choice import EngineChoice
    from streamav.engines.export import ONNX_OPSET, export_step, write_onnx
    from streamav.engines.graph_rewrite import REWRITE_RECIPE, rewrite_step
    from streamav.engines.registry import EXPORT_FORMAT
    from streamav.model.io import load_model
    from streamav.model.streaming import EXPORT_INPUT_NAMES, EXPORT_OUTPUT_NAMES

    folder = Path(folder)
    started = time.time()
    cfg, meta = read_model_config(folder)
    weights = weights_path(folder, meta)
    model = load_model(folder).float().eval()
    state = model.initial_state(1)
    fills = {}
    for name, tensor in zip(EXPORT_INPUT_NAMES[2:], state):
        if not bool((tensor == tensor.flatten()[0]).all()):
            raise ValueError(f"the initial {name} is not one value repeated: step.json "
                             "cannot describe it")
        fills[name] = float(tensor.flatten()[0])
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{STEP_FILE}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_onnx(export_step(model, 1), tmp)
        rewrites = rewrite_step(tmp, tmp)
        counts = compact_weights(tmp)
        spectra, faces = inputs.reference_frames(
            parity_frames, Path(tempfile.gettempdir()) / "streamav-export" / ".calibration")
        with torch.inference_mode():
            reference = parity.run_engine(EagerEngine(EngineChoice("eager"), model), spectra,
                                          faces, parity_frames)
            ran = parity.run_engine(OnnxEngine(SHIPPED_ENGINE, model, tmp, threads=1), spectra,
                                    faces, parity_frames)
        report = parity.compare(reference, ran)
        if not parity.within_tolerance(report, "fp32"):
            raise ValueError(f"the exported step is outside the fp32 tolerances against eager: "
                             f"{report['max_abs']}")
        tmp.chmod(0o644)
        os.replace(tmp, folder / STEP_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path = folder / STEP_FILE
    manifest = {
        "format": STEP_FORMAT, "version": STEP_VERSION, "file": STEP_FILE,
        "bytes": path.stat().st_size, "sha256": file_sha256(path),
        "source": {"weights_file": weights.name, "weights_sha256": file_sha256(weights),
                   "config_sha256": cfg.sha256()},
        "preset": cfg.preset, "labels": list(cfg.emotion.labels), "batch": 1,
        "compute": "float32", "weights_stored": counts,
        "opset": ONNX_OPSET, "export_format": EXPORT_FORMAT,
        "graph_rewrite": {"recipe": REWRITE_RECIPE, "rewritten": rewrites},
        "inputs": {name: list(t.shape) for name, t in zip(EXPORT_INPUT_NAMES,
                                                          model.example_inputs(1))},
        "outputs": list(EXPORT_OUTPUT_NAMES), "initial_state": fills,
        "parity": {"frames": parity_frames, "max_abs": report["max_abs"],
                   "tolerances": parity.TOLERANCES["fp32"], "state": "fed back"},
        "made_with": {name: package_version(name) for name in
                      ("streamav", "torch", "onnx", "onnxscript", "onnxruntime")},
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export_s": round(time.time() - started, 1),
    }
    _write_json(folder / STEP_MANIFEST, manifest)
    log.info("%s: %d bytes, parity face %.1e probs %.1e", path, manifest["bytes"],
             report["max_abs"]["face_hat"], report["max_abs"]["emotion_probs"])
    return manifest


def _write_json(path: Path, document: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)
