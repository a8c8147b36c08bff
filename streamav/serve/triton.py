"""`streamav export --triton DIR`: the model step as an NVIDIA Triton model repository, its
recurrent state kept by Triton's sequence batcher (implicit state). Not run here: Triton is
not installable on this project's machines (docs/scaling.md says what was checked and what
was not).

    DIR/streamav_step/config.pbtxt            platform onnxruntime_onnx, sequence_batching
    DIR/streamav_step/1/model.onnx            the model folder's shipped step (batch 1)
    DIR/streamav_step/initial_state/<input>   each state input's initial value, raw float32
    DIR/README.md                             how a client drives it

The step's state inputs (`state_*`) and outputs (`next_*`) become `state` entries of the
sequence batcher: Triton feeds a sequence's previous output state back as its next input,
and the initial state (from step.json) on a sequence's START. A stream is a sequence: its
correlation id is the stream, START on its first frame (and on a reset), END when it leaves.
The step exports with a static batch of 1 (its reshapes are fixed), so the model takes no
Triton batch dimension (`max_batch_size: 0`) and runs one sequence per execution; concurrent
streams run on `instance_group` copies (Triton's `direct` strategy gives each sequence a
slot). A dynamic-batch export would let the `oldest` strategy batch streams together.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from streamav.engines.backends.onnx_numpy import NumpyOnnxStep
from streamav.engines.shipped import find_shipped_step
from streamav.errors import InputError

MODEL_NAME = "streamav_step"
IDLE_US = 5_000_000  # a sequence idle this long is dropped by Triton (its state with it)


def _dims(shape) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def _tensor(name: str, shape) -> str:
    return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: {_dims(shape)} }}'


def triton_config(step: NumpyOnnxStep, instances: int, kind: str) -> str:
    """config.pbtxt for the step (see the module docstring)."""
    session = step.session
    shapes = {i.name: i.shape for i in session.get_inputs()}
    out_shapes = {o.name: o.shape for o in session.get_outputs()}
    state_in = step.input_names[2:]
    state_out = step.output_names[step.n_outputs:]
    inputs = ",\n".join(_tensor(n, shapes[n]) for n in step.input_names[:2])
    outputs = ",\n".join(_tensor(n, out_shapes[n]) for n in step.output_names[:step.n_outputs])
    states = ",\n".join(
        f'    {{\n      input_name: "{i}"\n      output_name: "{o}"\n'
        f'      data_type: TYPE_FP32\n      dims: {_dims(shapes[i])}\n'
        f'      initial_state: {{ name: "{i}" data_type: TYPE_FP32 dims: {_dims(shapes[i])} '
        f'data_file: "{i}" }}\n    }}'
        for i, o in zip(state_in, state_out))
    return (f'name: "{MODEL_NAME}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {IDLE_US}\n"
            f"  direct {{ }}\n  state [\n{states}\n  ]\n}}\n"
            f"instance_group [ {{ count: {instances} kind: KIND_{kind.upper()} }} ]\n")


def export_triton(folder: Path, out: Path, instances: int = 4, kind: str = "gpu") -> Path:
    """Write the repository (see the module docstring) into `out`; the model's folder in it."""
    if kind not in ("gpu", "cpu"):
        raise InputError(f"--kind is gpu or cpu, not {kind!r}")
    if instances < 1:
        raise InputError(f"--instances must be at least 1, got {instances}")
    shipped, why = find_shipped_step(Path(folder))
    if shipped is None:
        raise InputError(f"the model in {folder} has no usable step.onnx to export ({why})")
    step = NumpyOnnxStep(shipped, threads=1)
    model_dir = Path(out) / MODEL_NAME
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "initial_state").mkdir(exist_ok=True)
    shutil.copyfile(shipped.path, model_dir / "1" / "model.onnx")
    for name, value in zip(step.input_names[2:], step.initial_state()):
        (model_dir / "initial_state" / name).write_bytes(
            np.ascontiguousarray(value, "<f4").tobytes())
    (model_dir / "config.pbtxt").write_text(triton_config(step, instances, kind))
    (model_dir / "streamav.json").write_text(json.dumps(
        {"step_sha256": shipped.sha256, "labels": list(shipped.labels),
         "inputs": list(step.input_names[:2]),
         "outputs": list(step.output_names[:step.n_outputs]),
         "state": dict(zip(step.input_names[2:], step.output_names[step.n_outputs:]))},
        indent=2))
    (Path(out) / "README.md").write_text(README)
    return model_dir


README = """# streamav step for NVIDIA Triton (made by `streamav export --triton`)

`streamav_step` is the streamav model step on Triton's ONNX Runtime backend, its recurrent
state kept in Triton by the sequence batcher (implicit state). Not tested with a Triton server
by streamav (none can run on its machines); see docs/scaling.md in streamav.

Serve it: `tritonserver --model-repository THIS_FOLDER`.

Per frame of a stream, send `spectrum` (1, 513) float32 (the frame's power spectrum, zeros
without audio) and `face` (1, 3, 64, 64) float32 (the aligned crop scaled to -0.5..0.5), with
`sequence_id` = the stream (a number or, with string ids enabled, its id), `sequence_start`
on its first frame and after a reset (a new person), `sequence_end` on its last. The outputs
are the step's (`w_mean`, `emotion_probs`, `face_hat`, ...); streamav's emotion estimator and
messages run on the client side of them (streamav.model_stage).
"""
