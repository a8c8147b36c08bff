"""Open an engine for an engine choice: `open_engine(model, EngineChoice(...))`, `auto` resolved.

    eager     PyTorch as written (the reference); CPU or CUDA; fp32 (fp16 on CUDA)
    onnx      ONNX Runtime on the ONNX export of the step (cached in engines/); the CPU default;
              fp32, or int8 (int8 matrix products, each stream quantized on its own:
              int8_per_stream.py)
    compile   torch.compile (inductor; CUDA graphs on CUDA); compiled at start
    tensorrt  torch-tensorrt on the exported step (cached in engines/); CUDA only; fp32, fp16,
              int8 (NVIDIA ModelOpt, calibrated on calibration/)

Cached backends are built once per identity (weights, shapes, batch, precision, versions,
device; see cache.py) with a parity check against eager over real frames and a latency
measurement, both written to the manifest. A damaged engine is rebuilt (cache.py), and so is a
cached one that passes its checks but does not load: a named backend never fails on a damaged
cache, and `auto` is never left on a slower backend by one. Given the model folder's shipped step
(`shipped_onnx`, streamav.engines.shipped), the ONNX fp32 batch-1 CPU engine is that file
rather than a new export, and its sha256 joins the identity (the cache keys it by its hash).
Every ONNX engine's graph is rewritten for ONNX Runtime's CPU kernels (graph_rewrite.py; int8:
after quantization), with the recipe in the identity.
A build's real frames (parity, INT8 calibration) come from the caller's `inputs`
(streamav.engines.inputs.EngineInputs): the engines never run the front end themselves.
`auto` picks, for the device, the first backend that can run here in the order measured
fastest (BENCHMARKS.md): CPU: onnx, eager; CUDA: tensorrt, compile, onnx, eager; it logs which
one and why.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from streamav.engines.base import StepEngine
from streamav.engines.cache import CachedEngine, EngineCache
from streamav.engines.choice import AUTO_ORDER, EngineChoice
from streamav.engines.inputs import EngineInputs
from streamav.engines.graph_rewrite import REWRITE_RECIPE
from streamav.engines.int8_per_stream import INT8_RECIPE
from streamav.engines.shipped import SHIPPED_ENGINE, ShippedStep
from streamav.errors import DeviceError, InputError, MissingDependencyError, StreamavError
from streamav.host import cpu_name, package_version
from streamav.model.streaming import EXPORT_INPUT_NAMES, StreamingModel

log = logging.getLogger(__name__)

CACHED_BACKENDS = ("onnx", "tensorrt")
ENGINE_FILE = {"onnx": "step.onnx", "tensorrt": "step.ep"}
EXPORT_FORMAT = 1  # bump when the exported step's signature or export path changes
PARITY_FRAMES = 300


def weights_sha256(model: StreamingModel) -> str:
    """sha256 over the model's tensors (names, shapes, float32 bytes), whatever folder it came
    from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def device_description(device: str) -> dict:
    """Name (and compute capability on CUDA) of the device an engine is built for."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is visible to PyTorch here")
        props = torch.cuda.get_device_properties(0)
        return {"device_name": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    return {"device_name": cpu_name(), "compute_capability": None}


def library_versions(backend: str) -> dict:
    names = {"onnx": ("torch", "onnx", "onnxscript", "onnxruntime"),
             "tensorrt": ("torch", "torch_tensorrt", "tensorrt", "nvidia-modelopt")}[backend]
    return {name: package_version(name) for name in names}


def engine_identity(model: StreamingModel, spec: EngineChoice, weights_hash: str,
                    calibration_hash: str | None = None,
                    shipped_onnx: ShippedStep | None = None) -> dict:
    """Everything a cached engine depends on: the cache key is the hash of this."""
    cfg = model.cfg
    shipped = ({"shipped_onnx_sha256": shipped_onnx.sha256}
               if shipped_onnx is not None and uses_shipped(spec) else {})
    return {
        "backend": spec.backend, "device": spec.device, "precision": spec.precision,
        "batch": spec.batch, "weights_sha256": weights_hash, "preset": cfg.preset,
        "config_sha256": cfg.sha256(),
        "export_format": EXPORT_FORMAT,
        "inputs": {"spectrum": [spec.batch, cfg.audio.n_bins], "face": [spec.batch, 3, 64, 64],
                   **{n: list(t.shape) for n, t in zip(EXPORT_INPUT_NAMES[2:],
                                                       model.initial_state(spec.batch))}},
        "versions": {"streamav": package_version("streamav"), **library_versions(spec.backend)},
        **device_description(spec.device),
        "calibration_sha256": calibration_hash if uses_calibration(spec) else None,
        **shipped,
        **({"int8_recipe": INT8_RECIPE} if spec.backend == "onnx" and spec.precision == "int8"
           else {}),
        **({"graph_rewrite": REWRITE_RECIPE} if spec.backend == "onnx" else {}),
    }


def uses_shipped(spec: EngineChoice) -> bool:
    """The engines a shipped step.onnx (batch 1, float32, CPU) can be, as it is."""
    return spec == SHIPPED_ENGINE


def uses_calibration(spec: EngineChoice) -> bool:
    """TensorRT INT8 calibrates activations on the calibration set; ONNX Runtime's CPU int8
    quantizes each stream's activations per step from their own range (int8_per_stream.py)
    and needs none."""
    return spec.precision == "int8" and spec.backend == "tensorrt"


def check_backend(spec: EngineChoice) -> None:
    """Raise MissingDependencyError / DeviceError if `spec`'s (named) backend cannot run on its
    device here."""
    backend, device = spec.backend, spec.device
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is visible to PyTorch here")
    if backend == "onnx":
        from streamav.engines.backends.onnx import providers_for

        providers_for(device)
        for name in ("onnx", "onnxscript"):
            if package_version(name) is None:
                raise MissingDependencyError(
                    f"--backend onnx exports with {name}: pip install 'streamav[train]'")
    elif backend == "compile":
        from streamav.engines.backends.compiled import check_available

        check_available(device)
    elif backend == "tensorrt":
        from streamav.engines.backends.tensorrt import check_available

        check_available(device, spec.precision)


def resolve_backend(choice: EngineChoice) -> tuple[EngineChoice, str]:
    """`auto` → (the choice with the backend to use, why); a named backend → (it, 'asked for')."""
    if not choice.is_auto:
        return choice, "asked for"
    device = choice.device
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is visible to PyTorch here")
    order = AUTO_ORDER[device]
    skipped = [f"{name}: does not build {choice.precision}" for name in order
               if name not in choice.auto_candidates()]
    for candidate in choice.auto_candidates():
        try:
            check_backend(choice.with_backend(candidate))
        except StreamavError as error:
            skipped.append(f"{candidate}: {error}")
            continue
        why = f"fastest available on {device} (order {', '.join(order)})"
        if skipped:
            why += "; skipped " + "; ".join(skipped)
        return choice.with_backend(candidate), why
    raise MissingDependencyError(f"no backend can run {choice.precision} on {device}: "
                                 + "; ".join(skipped))


def open_engine(model: StreamingModel, spec: EngineChoice, cache: EngineCache | None = None,
                inputs: EngineInputs | None = None, parity_frames: int = PARITY_FRAMES,
                weights_hash: str | None = None, threads: int | None = None,
                shipped_onnx: ShippedStep | None = None) -> StepEngine:
    """A ready engine for `spec` (a named backend; built and cached first where the backend
    caches).

    `inputs`: the real frames of a build (parity, INT8 calibration); needed only when the
    cached engine has to be built. `threads`: intra-op threads of ONNX Runtime (default: every
    core of the process); eager and compile use torch's setting (torch.set_num_threads).
    `shipped_onnx`: the model folder's current step.onnx, used as the onnx/cpu/fp32/b1 engine
    instead of an export."""
    check_backend(spec)
    model = model.float().eval()
    if spec.backend == "eager":
        from streamav.engines.backends.eager import EagerEngine

        return EagerEngine(spec, model)
    if spec.backend == "compile":
        from streamav.engines.backends.compiled import CompiledEngine

        return CompiledEngine(spec, model)
    cache = cache or EngineCache()
    cached = build_or_load(model, spec, cache, inputs, parity_frames, weights_hash, shipped_onnx)
    try:
        return load_cached(model, spec, cached, threads)
    except Exception as error:  # noqa: BLE001 - an engine that passed its checks yet fails
        if cached.built:
            raise
        log.warning("engine %s in %s does not load (%s: %s): rebuilding it", spec.label,
                    cached.folder, type(error).__name__, error)
        cache.discard(cached.folder)
    cached = build_or_load(model, spec, cache, inputs, parity_frames, weights_hash, shipped_onnx)
    return load_cached(model, spec, cached, threads)


def open_with_fallback(model: StreamingModel, choice: EngineChoice,
                       cache: EngineCache | None = None, threads: int | None = None,
                       shipped_onnx: ShippedStep | None = None,
                       inputs: EngineInputs | None = None) -> StepEngine:
    """`open_engine` for a named backend (its errors raised), or for `auto`: the first of
    AUTO_ORDER that opens, each one that fails said in one log line."""
    chosen, why = resolve_backend(choice)
    if not choice.is_auto:
        return open_engine(model, chosen, cache, inputs, threads=threads,
                           shipped_onnx=shipped_onnx)
    log.info("backend auto: %s (%s)", chosen.backend, why)
    order = choice.auto_candidates()
    candidates = order[order.index(chosen.backend):]
    for i, name in enumerate(candidates):
        try:
            return open_engine(model, choice.with_backend(name), cache, inputs, threads=threads,
                               shipped_onnx=shipped_onnx)
        except Exception as error:  # noqa: BLE001 - auto falls back on any failure, said once
            if i + 1 == len(candidates):
                raise
            log.warning("backend %s failed (%s: %s): falling back to %s", name,
                        type(error).__name__, error, candidates[i + 1])
    raise AssertionError("unreachable")


def load_cached(model: StreamingModel, spec: EngineChoice, cached: CachedEngine,
                threads: int | None = None) -> StepEngine:
    path = cached.file(ENGINE_FILE[spec.backend])
    if spec.backend == "onnx":
        from streamav.engines.backends.onnx import OnnxEngine

        return OnnxEngine(spec, model, path, threads)
    from streamav.engines.backends.tensorrt import TensorRTEngine

    return TensorRTEngine(spec, model, path)


def build_or_load(model: StreamingModel, spec: EngineChoice, cache: EngineCache | None = None,
                  inputs: EngineInputs | None = None, parity_frames: int = PARITY_FRAMES,
                  weights_hash: str | None = None,
                  shipped_onnx: ShippedStep | None = None) -> CachedEngine:
    """The cached engine for `spec`, built (export or the shipped step.onnx, compile, parity
    over `inputs`' real frames, latency) on a miss."""
    if spec.backend not in CACHED_BACKENDS:
        raise InputError(f"--backend {spec.backend} has nothing to build in engines/")
    cache = cache or EngineCache()
    calibration_set = None
    if uses_calibration(spec):
        if inputs is None:
            raise ValueError(f"engine {spec.label} calibrates on real frames: give `inputs`")
        calibration_set = inputs.calibration()
    if shipped_onnx is not None and not uses_shipped(spec):
        shipped_onnx = None
    identity = engine_identity(model, spec, weights_hash or weights_sha256(model),
                               calibration_set.set_hash if calibration_set else None,
                               shipped_onnx)

    def build(folder: Path) -> dict:
        from streamav.engines import parity

        if inputs is None:  # a caller's mistake: every command passes its real frames
            raise ValueError(f"engine {spec.label} is not in {cache.root}, and building it "
                             "needs real frames for its parity check: give `inputs`")
        # Shown by default: the first run of a model on a machine pauses here (15-30 s on 2 cores).
        log.warning("engine %s: not built for this model and environment yet; building it once "
                    "into %s", spec.label, cache.root)
        path = folder / ENGINE_FILE[spec.backend]
        rewrites = None
        if spec.backend == "onnx":
            from streamav.engines.graph_rewrite import rewrite_step

            with tempfile.TemporaryDirectory() as scratch:
                float_path = Path(scratch) / "step_fp32.onnx"
                if shipped_onnx is not None:
                    shutil.copyfile(shipped_onnx.path, float_path)
                else:
                    from streamav.engines.export import export_step, write_onnx

                    write_onnx(export_step(model, spec.batch), float_path)
                if spec.precision == "int8":  # quantized first: the rewrites add MatMuls
                    from streamav.engines.int8_per_stream import quantize_int8_per_stream

                    quantized = Path(scratch) / "step_int8.onnx"
                    quantize_int8_per_stream(float_path, quantized, spec.batch)
                    rewrites = rewrite_step(quantized, path)
                else:
                    rewrites = rewrite_step(float_path, path)
        else:
            from streamav.engines.backends.tensorrt import build_tensorrt

            build_tensorrt(model, spec, path, calibration_set, cache.root)
        engine = load_cached(model, spec, CachedEngine(folder, {}, True))
        spectra, faces = inputs.reference_frames(parity_frames, cache.root / ".calibration")
        from streamav.engines.backends.eager import EagerEngine

        reference = parity.run_engine(EagerEngine(EngineChoice("eager", spec.device, "fp32",
                                                               spec.batch), model),
                                      spectra, faces, parity_frames)
        ran = parity.run_engine(engine, spectra, faces, parity_frames)
        report = parity.compare(reference, ran)
        ok = parity.within_tolerance(report, spec.precision)
        if not ok:
            log.warning("engine %s: parity against eager outside tolerance: face %.2e, "
                        "probs %.2e", spec.label, report["max_abs"]["face_hat"],
                        report["max_abs"]["emotion_probs"])
        return {"parity": dict(report, tolerances=parity.TOLERANCES[spec.precision],
                               within_tolerance=ok,
                               frames_source=inputs.reference_source()),
                "latency_ms": parity.latency_summary(ran["step_ms"]),
                "eager_latency_ms": parity.latency_summary(reference["step_ms"]),
                "graph_rewrites": rewrites,
                "calibration": (None if calibration_set is None else
                                {"path": str(calibration_set.path),
                                 "sha256": calibration_set.set_hash})}

    built = cache.get_or_build(identity, build)
    if not built.built:
        log.info("engine %s: loaded from %s", spec.label, built.folder)
    return built
