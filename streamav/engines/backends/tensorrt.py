"""TensorRT through torch-tensorrt: the exported step compiled to TensorRT engines, on NVIDIA GPUs.

Build (`build_tensorrt`, once per identity; registry.py caches the result in engines/):

    fp32, fp16  export_step(model on CUDA) → torch_tensorrt.dynamo.compile → torch_tensorrt.save
    int8        NVIDIA ModelOpt post-training quantization (`quantize_int8`: mtq.quantize with
                INT8_DEFAULT_CFG, calibrated by stepping the calibration recordings frame by
                frame with the recurrent state fed back, `calibration_loop`), then the same
                export (under ModelOpt's `export_torch_mode`), compile and save

The engine file (`step.ep`) is the compiled program saved as an ExportedProgram; it holds the
serialized TensorRT engines, so loading it rebuilds nothing. `TensorRTEngine` loads it with
`torch_tensorrt.load(path).module()` and runs it under CUDA graphs
(`torch_tensorrt.runtime.enable_cudagraphs`), cloning the outputs out of the graph's buffers.

Precision, across torch-tensorrt releases (the compile keywords are chosen by
`compile_kwargs` from the installed `dynamo.compile` signature):

* Releases with Torch-TensorRT Autocast (`enable_autocast`, strong typing by default, where
  `enabled_precisions` is deprecated): fp32 is the float32 graph with TF32 off; fp16 is
  `use_explicit_typing=True, enable_autocast=True, autocast_low_precision_type=torch.float16`
  (the graph stays float32 at its inputs and outputs; Autocast keeps numerically sensitive
  nodes in FP32); int8 is the strongly typed graph of the ModelOpt Q/DQ model (INT8 where
  ModelOpt put quantize/dequantize nodes, FP32 elsewhere).
* Older releases (weak typing): `enabled_precisions={float32, float16}` or `{float32, int8}`.

Docs followed (torch-tensorrt 2.12 docs and the main-branch docs at docs.pytorch.org/TensorRT,
for torch-tensorrt 2.13 that matches torch 2.13; NVIDIA ModelOpt 0.4x docs):

* "Compiling Exported Programs with Torch-TensorRT"
  https://docs.pytorch.org/TensorRT/user_guide/compilation/dynamo_export.html
* "CompilationSettings Reference" (disable_tf32, min_block_size, enable_autocast,
  autocast_low_precision_type, timing_cache_path)
  https://docs.pytorch.org/TensorRT/user_guide/compilation/compilation_settings.html
  (source: pytorch/TensorRT docsrc/user_guide/compilation/compilation_settings.rst)
* "Compile Mixed Precision models with Torch-TensorRT" (explicit typing vs autocast)
  https://docs.pytorch.org/TensorRT/user_guide/mixed_precision.html
* "Quantization (INT8 / FP8 / FP4)" (mtq.quantize, export under export_torch_mode, compile)
  https://docs.pytorch.org/TensorRT/user_guide/shapes_precision/quantization.html
  and the examples "Deploy Quantized Models using Torch-TensorRT" (examples/dynamo/vgg16_ptq.py)
  and examples/dynamo/simple_int8_ptq.py
* "Saving models compiled with Torch-TensorRT" (torch_tensorrt.save(..., output_format=
  "exported_program", arg_inputs=...), torch_tensorrt.load(path).module())
  https://docs.pytorch.org/TensorRT/user_guide/runtime_performance/saving_models.html
* "Runtime API" / "CUDAGraphs and the Output Allocator" (enable_cudagraphs(module) as a context
  manager returning the module to call)
  https://docs.pytorch.org/TensorRT/user_guide/runtime_performance/runtime_api.html
  https://docs.pytorch.org/TensorRT/tutorials/runtime_opt/cuda_graphs.html
* ModelOpt "PyTorch Quantization" and "Quantization Configuration (quant_cfg)" (ordered list
  of entries in current releases, a dict of wildcards in older ones)
  https://nvidia.github.io/Model-Optimizer/guides/_pytorch_quantization.html
  https://nvidia.github.io/Model-Optimizer/guides/_quant_cfg.html

Nothing here was run against a real GPU in the session that wrote it (see docs/tensorrt.md).
torch_tensorrt and modelopt are imported inside functions only: importing this module needs
neither, so the CPU-only install can name the backend and get a clear error.
"""

from __future__ import annotations

import copy
import inspect
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection

import torch
from torch import Tensor

from streamav.engines.base import StepEngine
from streamav.engines.choice import EngineChoice
from streamav.errors import DeviceError, InputError, MissingDependencyError
from streamav.model.streaming import OUTPUT_NAMES, STATE_NAMES, State, StepOutputs, StreamingModel

if TYPE_CHECKING:
    from streamav.engines.inputs import Calibration, CalibrationFrames

log = logging.getLogger(__name__)

TRT_HINT = ("--backend tensorrt needs torch-tensorrt and NVIDIA's TensorRT libraries: "
            "pip install 'streamav[tensorrt]' --extra-index-url https://pypi.nvidia.com "
            f"(a torch-tensorrt release built for torch {torch.__version__.split('+')[0]}; "
            "the TensorRT wheels come from NVIDIA's index)")
MODELOPT_HINT = ("--precision int8 quantizes with NVIDIA ModelOpt: "
                 "pip install 'nvidia-modelopt[torch]'")

# Quantizers left off by `int8_quant_config` (fnmatch patterns over ModelOpt quantizer names,
# which are module paths like "mdvae.gru_av.x2h.input_quantizer"). The MDVAE is the recurrent
# part: its errors feed the state and compound frame after frame, and its matmuls are small
# (H = 128) at the batch sizes served, so INT8 saves nothing there. The emotion head is one
# tiny Linear whose output is judged directly. INT8 goes to the VQ-VAE encoders and decoders
# (the convolutions, where the step's arithmetic is).
INT8_FLOAT_MODULES: tuple[str, ...] = ("*mdvae.*", "*emotion.*")


# -- availability ------------------------------------------------------------------------------

def import_torch_tensorrt():
    """torch_tensorrt, or MissingDependencyError with the install hint."""
    try:
        import torch_tensorrt
    except ImportError as error:
        raise MissingDependencyError(f"{TRT_HINT} [import failed: {error}]") from None
    except (OSError, RuntimeError) as error:  # a wheel whose TensorRT/CUDA libraries don't load
        raise MissingDependencyError(f"torch-tensorrt is installed but does not load ({error}); "
                                     f"{TRT_HINT}") from None
    return torch_tensorrt


def import_modelopt():
    """modelopt.torch.quantization (as mtq), or MissingDependencyError with the install hint."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as error:
        raise MissingDependencyError(f"{MODELOPT_HINT} [import failed: {error}]") from None
    return mtq


def check_available(device: str, precision: str = "fp32") -> None:
    """Raise DeviceError / MissingDependencyError unless TensorRT runs `precision` on `device`."""
    if device != "cuda":
        raise DeviceError(f"--backend tensorrt: TensorRT runs on NVIDIA GPUs only; use "
                          f"--device cuda (got --device {device}), or --backend onnx on a CPU")
    if not torch.cuda.is_available():
        build = ("this PyTorch is a CPU-only build" if torch.version.cuda is None
                 else "no CUDA GPU is visible to PyTorch here")
        raise DeviceError(f"--backend tensorrt: TensorRT runs on NVIDIA GPUs only, and {build}")
    import_torch_tensorrt()
    if precision == "int8":
        import_modelopt()


# -- building ----------------------------------------------------------------------------------

def compile_kwargs(precision: str, accepted: Collection[str], timing_cache: Path | None = None
                   ) -> dict[str, Any]:
    """Keywords for `torch_tensorrt.dynamo.compile` for `precision`, given the names its
    installed signature accepts (so one code path serves releases before and after Autocast)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise InputError(f"unknown precision {precision!r}: choose fp32, fp16 or int8")
    strong = "enable_autocast" in accepted  # releases with Autocast: strong typing, no weak mode
    kwargs: dict[str, Any] = {
        # Every op TensorRT can take goes to TensorRT (the quantization docs use 1 too): the
        # step is small, so a PyTorch island between engines costs more than it saves.
        "min_block_size": 1,
        # The C++ runtime: the one that serializes to an ExportedProgram and has CUDA graphs.
        "use_python_runtime": False,
    }
    if precision == "fp32":
        # TF32 matmuls/convs are ~1e-3 relative: the fp32 parity tolerance (1e-4) needs IEEE FP32.
        kwargs["disable_tf32"] = True
    if strong:
        kwargs["use_explicit_typing"] = True
        if precision == "fp16":
            kwargs.update(enable_autocast=True, autocast_low_precision_type=torch.float16)
        # int8: the Q/DQ nodes ModelOpt inserted set the INT8 layers; fp32 elsewhere.
    else:
        kwargs["use_explicit_typing"] = False
        kwargs["enabled_precisions"] = {"fp32": {torch.float32},
                                        "fp16": {torch.float32, torch.float16},
                                        "int8": {torch.float32, torch.int8}}[precision]
    if timing_cache is not None:
        kwargs["timing_cache_path"] = str(timing_cache)
    return {k: v for k, v in kwargs.items() if k in accepted}


def _accepted_names(function) -> set[str]:
    return set(inspect.signature(function).parameters)


def _cuda_copy(model: StreamingModel) -> StreamingModel:
    """A float32 eval copy of `model` on CUDA (the caller's model stays where it is)."""
    net = StreamingModel(model.cfg, model.snap_face_to_codebook)
    net.load_state_dict(model.state_dict())
    return net.to("cuda", torch.float32).eval()


def calibration_loop(model: StreamingModel, frames: "CalibrationFrames",
                     device: torch.device | str | None = None) -> int:
    """Step `model` (its `forward`, the exported signature) over every calibration frame, one
    stream, with the next state fed back as the input state and a fresh state at each
    recording's first frame; returns the number of frames stepped. Pure PyTorch: this is
    ModelOpt's `forward_loop`, and runs as well on a CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    starts = set(int(s) for s in frames.recording_starts) | {0}
    n_out = len(OUTPUT_NAMES)
    state: State | None = None
    with torch.no_grad():
        for t in range(frames.n_frames):
            if t in starts or state is None:
                state = model.initial_state(1, device)
            spectrum = torch.from_numpy(frames.spectra[t:t + 1]).to(device, torch.float32)
            face = torch.from_numpy(frames.faces[t:t + 1]).to(device, torch.float32)
            results = model(spectrum, face, *state)
            state = State(*results[n_out:])
    return frames.n_frames


def int8_quant_config(base: dict) -> dict:
    """ModelOpt's INT8_DEFAULT_CFG (a deep copy of `base`) with the quantizers of
    INT8_FLOAT_MODULES off; handles both quant_cfg formats (ordered list, or dict)."""
    config = copy.deepcopy(base)
    quant_cfg = config["quant_cfg"]
    if isinstance(quant_cfg, list):  # current ModelOpt: later entries override earlier ones
        quant_cfg.extend({"quantizer_name": pattern, "enable": False}
                         for pattern in INT8_FLOAT_MODULES)
    elif isinstance(quant_cfg, dict):  # older ModelOpt: wildcard → attributes
        for pattern in INT8_FLOAT_MODULES:
            quant_cfg[pattern] = {"enable": False}
    else:
        raise TypeError(f"unexpected ModelOpt quant_cfg of type {type(quant_cfg).__name__}")
    return config


def quantize_int8(model: StreamingModel, frames: "CalibrationFrames",
                  device: torch.device | str = "cuda") -> StreamingModel:
    """A copy of `model` on `device` with ModelOpt INT8 fake-quantization (Q/DQ) inserted and
    calibrated (max calibration, per-tensor activations, per-channel weights) by
    `calibration_loop` over `frames`."""
    mtq = import_modelopt()
    if frames.n_frames == 0:
        raise InputError("the calibration set has no frame with a face: nothing to calibrate on")
    net = StreamingModel(model.cfg, model.snap_face_to_codebook)
    net.load_state_dict(model.state_dict())
    net = net.to(device, torch.float32).eval()
    config = int8_quant_config(mtq.INT8_DEFAULT_CFG)
    mtq.quantize(net, config, forward_loop=lambda m: calibration_loop(m, frames, device))
    log.info("int8: calibrated on %d frames (%d recordings), state fed back",
             frames.n_frames, len(frames.recording_starts))
    return net.eval()


def build_tensorrt(model: StreamingModel, spec: EngineChoice, path: Path,
                   calibration_set: "Calibration | None" = None,
                   cache_root: Path | None = None) -> Path:
    """Compile the step for `spec` with torch-tensorrt and save it (ExportedProgram) at `path`."""
    from streamav.engines.export import export_step

    check_available(spec.device, spec.precision)
    trt = import_torch_tensorrt()  # before ModelOpt: registers the quantize op ModelOpt exports to
    path = Path(path)
    quantized = spec.precision == "int8"
    if quantized:
        if calibration_set is None:
            raise InputError("--precision int8 needs a calibration set (--calibration PATH)")
        frames = calibration_set.frames(Path(cache_root) / ".calibration" if cache_root else None)
        net = quantize_int8(model, frames)
        from modelopt.torch.quantization.utils import export_torch_mode

        export_mode = export_torch_mode
    else:
        net = _cuda_copy(model)
        export_mode = nullcontext
    timing_cache = (Path(cache_root) / ".tensorrt" / "timing_cache.bin" if cache_root
                    else None)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
    kwargs = compile_kwargs(spec.precision, _accepted_names(trt.dynamo.compile), timing_cache)
    with torch.no_grad(), export_mode():
        program = export_step(net, spec.batch)
        inputs = [t.to("cuda", torch.float32).contiguous()
                  for t in net.example_inputs(spec.batch)]
        input_key = ("arg_inputs" if "arg_inputs" in _accepted_names(trt.dynamo.compile)
                     else "inputs")
        log.info("tensorrt %s: compiling with %s", spec.label,
                 ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items(), key=lambda kv: kv[0])))
        compiled = trt.dynamo.compile(program, **{input_key: inputs}, **kwargs)
        save_key = "arg_inputs" if "arg_inputs" in _accepted_names(trt.save) else "inputs"
        trt.save(compiled, str(path), output_format="exported_program", **{save_key: inputs})
    if not path.is_file():
        raise InputError(f"torch_tensorrt.save wrote no file at {path}")
    return path


# -- running -----------------------------------------------------------------------------------

class TensorRTEngine(StepEngine):
    """The saved TensorRT program of the step, run on CUDA (under CUDA graphs by default)."""

    def __init__(self, spec: EngineChoice, model: StreamingModel, path: Path,
                 cuda_graphs: bool = True) -> None:
        check_available(spec.device)
        super().__init__(spec, model)
        trt = import_torch_tensorrt()
        if spec.precision == "int8":
            try:  # registers ModelOpt's ops, should any have stayed outside the TensorRT engines
                import_modelopt()
            except MissingDependencyError:
                pass
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no TensorRT engine at {self.path}")
        try:
            loaded = trt.load(str(self.path))
        except Exception as error:  # torch.export / TensorRT deserialization errors vary
            raise InputError(f"{self.path} does not load as a TensorRT step ({error}); built by "
                             "another torch-tensorrt/TensorRT or GPU? rebuild it with "
                             "`streamav build-engines --backend tensorrt --force`") from None
        module = loaded.module() if isinstance(loaded, torch.export.ExportedProgram) else loaded
        self.program = module
        self.cuda_graphs = cuda_graphs
        self._cudagraphs_context = None
        self.run = module
        if cuda_graphs:
            self.run = self._enter_cudagraphs(trt, module)

    def _enter_cudagraphs(self, trt, module):
        """torch_tensorrt.runtime.enable_cudagraphs, entered for the engine's lifetime: the first
        call records each TensorRT engine's graph, later calls replay it. The mode is process-
        wide in torch-tensorrt; `close()` restores the previous one."""
        enable = trt.runtime.enable_cudagraphs
        try:
            context = enable(module)
        except TypeError:  # releases before 2.6 took no module
            context = enable()
        entered = context.__enter__()
        self._cudagraphs_context = context
        return entered if callable(entered) else module

    def close(self) -> None:
        """Leave CUDA-graph mode (restores torch-tensorrt's previous mode)."""
        if self._cudagraphs_context is not None:
            self._cudagraphs_context.__exit__(None, None, None)
            self._cudagraphs_context = None
            self.run = self.program

    @torch.inference_mode()
    def step(self, spectrum: Tensor, face: Tensor, state: State) -> tuple[StepOutputs, State]:
        spectrum, face = self.inputs_to_device(spectrum, face)
        state_in = [s.to(self.device, torch.float32).contiguous() for s in state]
        results = self.run(spectrum, face, *state_in)
        if isinstance(results, Tensor):
            results = (results,)
        n = len(OUTPUT_NAMES)
        if len(results) != n + len(STATE_NAMES):
            raise InputError(f"{self.path} returned {len(results)} tensors, expected "
                             f"{n + len(STATE_NAMES)}: not a streamav step engine")
        # float32 out whatever the engine's internal precision; under CUDA graphs the outputs may
        # be views of buffers the next replay overwrites, so they are copied out (as `compile`).
        results = tuple(r.float() if r.dtype != torch.float32
                        else (r.clone() if self._cudagraphs_context is not None else r)
                        for r in results)
        return StepOutputs(*results[:n]), State(*results[n:])
