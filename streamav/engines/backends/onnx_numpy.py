"""ONNX Runtime on numpy arrays, without PyTorch: the step shipped in a model folder.

`NumpyOnnxStep(shipped)` runs `step.onnx` (streamav.engines.shipped) on the CPU with the same
inputs, outputs and state handling as the `onnx` engine, in numpy:

    step.step(spectrum, face, state) -> (outputs, next_state)

`spectrum` (1, 513) float32 power, `face` (1, 3, 64, 64) float32 in -0.5..0.5, `state` the
tuple of state arrays in the export's order (`initial_state()` makes a fresh one, from the
fills recorded in step.json); `outputs` maps each output name (face_hat, w_mean, ...,
emotion_probs) to its (1, ...) array. The session options are the `onnx` engine's
(`session_options`). This module imports no torch.
"""

from __future__ import annotations

import numpy as np

from streamav.engines.shipped import ShippedStep
from streamav.errors import InputError, MissingDependencyError
from streamav.host import process_cores

ORT_HINT = "ONNX Runtime is not installed: pip install onnxruntime"
STATE_IN, STATE_OUT = "state_", "next_"


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(ORT_HINT) from None
    return onnxruntime


def session_options(threads: int | None = None, spinning: bool = False):
    """ONNX Runtime session options of every streamav engine: `threads` intra-op threads
    (default: every core of the process), sequential, all graph optimizations, quiet."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or process_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle intra-op threads spin by default, burning the cores that decode video and track
    # faces between steps (measured: eager next to a spinning session went 5 -> 13 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


class NumpyOnnxStep:
    """The shipped step on ONNX Runtime's CPU provider, batch 1, numpy in and out."""

    label = "onnx/cpu/fp32/b1"

    def __init__(self, shipped: ShippedStep, threads: int | None = None) -> None:
        ort = import_ort()
        self.shipped = shipped
        options = session_options(threads)
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(shipped.path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        state_in = self.input_names[2:]
        if (self.input_names[:2] != ("spectrum", "face")
                or not all(n.startswith(STATE_IN) for n in state_in)):
            raise InputError(f"{shipped.path} is not a streamav step export (inputs "
                             f"{list(self.input_names)})")
        expected_out = tuple(STATE_OUT + n[len(STATE_IN):] for n in state_in)
        self.n_outputs = len(self.output_names) - len(state_in)
        if self.output_names[self.n_outputs:] != expected_out:
            raise InputError(f"{shipped.path}: its outputs {list(self.output_names)} do not end "
                             f"with the next state {list(expected_out)}")
        fills = shipped.manifest.get("initial_state") or {}
        if set(fills) != set(state_in):
            raise InputError(f"{shipped.path}: step.json gives the initial state of "
                             f"{sorted(fills)}, the step has {list(state_in)}")
        shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self._initial = tuple(np.full(shapes[n], float(fills[n]), np.float32) for n in state_in)

    def initial_state(self) -> tuple[np.ndarray, ...]:
        return tuple(s.copy() for s in self._initial)

    def step(self, spectrum: np.ndarray, face: np.ndarray, state: tuple[np.ndarray, ...]
             ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        feeds = {name: np.ascontiguousarray(value, np.float32)
                 for name, value in zip(self.input_names, (spectrum, face, *state))}
        results = self.session.run(None, feeds)
        n = self.n_outputs
        return dict(zip(self.output_names[:n], results[:n])), tuple(results[n:])
