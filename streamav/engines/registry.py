"""Open an engine by name: `open_engine(model, EngineSpec(...))`, or pick one with `auto`.

    eager     PyTorch as written (the reference); CPU or CUDA; fp32 (fp16 on CUDA)
    onnx      ONNX Runtime on the ONNX export of the step (cached in engines/); the CPU default;
              fp32, or int8 (dynamic int8 quantization of the matrix products' weights)
    compile   torch.compile (inductor; CUDA graphs on CUDA); compiled at start
    tensorrt  torch-tensorrt on the exported step (cached in engines/); CUDA only; fp32, fp16,
              int8 (NVIDIA ModelOpt, calibrated on calibration/)

Cached backends are built once per identity (weights, shapes, batch, precision, versions,
device; see cache.py) with a parity check against eager over real frames and a latency
measurement, both written to the manifest. Given the model folder's shipped step
(`shipped_onnx`, streamav.engines.shipped), the ONNX fp32 batch-1 CPU engine is that file
rather than a new export, and its sha256 joins the identity (the cache keys it by its hash).
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

import numpy as np
import torch

from streamav.engines.base import BACKEND_NAMES, EngineSpec, StepEngine
from streamav.engines.cache import CachedEngine, EngineCache
from streamav.engines.shipped import ShippedStep
from streamav.errors import DeviceError, InputError, MissingDependencyError, StreamavError
from streamav.host import cpu_name, package_version
from streamav.model.streaming import EXPORT_INPUT_NAMES, StreamingModel

log = logging.getLogger(__name__)

AUTO_ORDER = {"cpu": ("onnx", "eager"), "cuda": ("tensorrt", "compile", "onnx", "eager")}
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


def engine_identity(model: StreamingModel, spec: EngineSpec, weights_hash: str,
                    calibration_hash: str | None = None,
                    shipped_onnx: ShippedStep | None = None) -> dict:
    """Everything a cached engine depends on: the cache key is the hash of this."""
    cfg = model.cfg
    shipped = ({"shipped_onnx_sha256": shipped_onnx.sha256}
               if shipped_onnx is not None and uses_shipped(spec) else {})
    return {
        "backend": spec.backend, "device": spec.device, "precision": spec.precision,
        "batch": spec.batch, "weights_sha256": weights_hash, "preset": cfg.preset,
        "export_format": EXPORT_FORMAT,
        "inputs": {"spectrum": [spec.batch, cfg.audio.n_bins], "face": [spec.batch, 3, 64, 64],
                   **{n: list(t.shape) for n, t in zip(EXPORT_INPUT_NAMES[2:],
                                                       model.initial_state(spec.batch))}},
        "versions": {"streamav": package_version("streamav"), **library_versions(spec.backend)},
        **device_description(spec.device),
        "calibration_sha256": calibration_hash if uses_calibration(spec) else None,
        **shipped,
    }


def uses_shipped(spec: EngineSpec) -> bool:
    """The engines a shipped step.onnx (batch 1, float32, CPU) can be, as it is."""
    return (spec.backend, spec.device, spec.precision, spec.batch) == ("onnx", "cpu", "fp32", 1)


def uses_calibration(spec: EngineSpec) -> bool:
    """TensorRT INT8 calibrates activations on the calibration set; ONNX Runtime's CPU int8
    quantizes weights only (activations per step, dynamically) and needs none."""
    return spec.precision == "int8" and spec.backend == "tensorrt"


def check_backend(backend: str, device: str) -> None:
    """Raise MissingDependencyError / DeviceError if `backend` cannot run on `device` here."""
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

        check_available(device)


def resolve_backend(backend: str, device: str) -> tuple[str, str]:
    """'auto' → (the backend to use, why); a named backend → (it, 'asked for')."""
    if backend != "auto":
        if backend not in BACKEND_NAMES:
            raise InputError(f"unknown backend {backend!r}: choose from "
                             f"{', '.join(BACKEND_NAMES)} or auto")
        return backend, "asked for"
    if device not in AUTO_ORDER:
        raise InputError(f"unknown device {device!r}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA GPU is visible to PyTorch here")
    skipped = []
    for candidate in AUTO_ORDER[device]:
        try:
            check_backend(candidate, device)
        except StreamavError as error:
            skipped.append(f"{candidate}: {error}")
            continue
        why = f"fastest available on {device} (order {', '.join(AUTO_ORDER[device])})"
        if skipped:
            why += "; skipped " + "; ".join(skipped)
        return candidate, why
    raise MissingDependencyError(f"no backend can run on {device}: " + "; ".join(skipped))


def open_engine(model: StreamingModel, spec: EngineSpec, cache: EngineCache | None = None,
                calibration: Path | None = None, parity_frames: int = PARITY_FRAMES,
                weights_hash: str | None = None, threads: int | None = None,
                shipped_onnx: ShippedStep | None = None) -> StepEngine:
    """A ready engine for `spec` (built and cached first where the backend caches).

    `threads`: intra-op threads of ONNX Runtime (default: every core of the process); eager
    and compile use torch's setting (torch.set_num_threads). `shipped_onnx`: the model
    folder's current step.onnx, used as the onnx/cpu/fp32/b1 engine instead of an export."""
    check_backend(spec.backend, spec.device)
    model = model.float().eval()
    if spec.backend == "eager":
        from streamav.engines.backends.eager import EagerEngine

        return EagerEngine(spec, model)
    if spec.backend == "compile":
        from streamav.engines.backends.compiled import CompiledEngine

        return CompiledEngine(spec, model)
    cached = build_or_load(model, spec, cache, calibration, parity_frames, weights_hash,
                           shipped_onnx)
    return load_cached(model, spec, cached, threads)


def open_with_fallback(model: StreamingModel, backend: str, device: str, precision: str = "fp32",
                       batch: int = 1, cache: EngineCache | None = None,
                       threads: int | None = None,
                       shipped_onnx: ShippedStep | None = None) -> StepEngine:
    """`open_engine` for a named backend (its errors raised), or for `auto`: the first of
    AUTO_ORDER that opens, each one that fails said in one log line."""
    chosen, why = resolve_backend(backend, device)
    if backend != "auto":
        return open_engine(model, EngineSpec(chosen, device, precision, batch), cache,
                           threads=threads, shipped_onnx=shipped_onnx)
    log.info("backend auto: %s (%s)", chosen, why)
    order = AUTO_ORDER[device]
    candidates = order[order.index(chosen):]
    for i, name in enumerate(candidates):
        try:
            return open_engine(model, EngineSpec(name, device, precision, batch), cache,
                               threads=threads, shipped_onnx=shipped_onnx)
        except Exception as error:  # noqa: BLE001 - auto falls back on any failure, said once
            if i + 1 == len(candidates):
                raise
            log.warning("backend %s failed (%s: %s): falling back to %s", name,
                        type(error).__name__, error, candidates[i + 1])
    raise AssertionError("unreachable")


def load_cached(model: StreamingModel, spec: EngineSpec, cached: CachedEngine,
                threads: int | None = None) -> StepEngine:
    path = cached.file(ENGINE_FILE[spec.backend])
    if spec.backend == "onnx":
        from streamav.engines.backends.onnx import OnnxEngine

        return OnnxEngine(spec, model, path, threads)
    from streamav.engines.backends.tensorrt import TensorRTEngine

    return TensorRTEngine(spec, model, path)


def build_or_load(model: StreamingModel, spec: EngineSpec, cache: EngineCache | None = None,
                  calibration: Path | None = None, parity_frames: int = PARITY_FRAMES,
                  weights_hash: str | None = None,
                  shipped_onnx: ShippedStep | None = None) -> CachedEngine:
    """The cached engine for `spec`, built (export or the shipped step.onnx, compile, parity,
    latency) on a miss."""
    if spec.backend not in CACHED_BACKENDS:
        raise InputError(f"--backend {spec.backend} has nothing to build in engines/")
    cache = cache or EngineCache()
    calibration_set = None
    if uses_calibration(spec):
        from streamav.engines.calibration import load_calibration

        calibration_set = load_calibration(calibration)
    if shipped_onnx is not None and not uses_shipped(spec):
        shipped_onnx = None
    identity = engine_identity(model, spec, weights_hash or weights_sha256(model),
                               calibration_set.set_hash if calibration_set else None,
                               shipped_onnx)
    def build(folder: Path) -> dict:
        from streamav.engines import parity

        # Shown by default: the first run of a model on a machine pauses here (15-30 s on 2 cores).
        log.warning("engine %s: not built for this model and environment yet; building it once "
                    "into %s", spec.label, cache.root)
        path = folder / ENGINE_FILE[spec.backend]
        if shipped_onnx is not None:
            shutil.copyfile(shipped_onnx.path, path)
        elif spec.backend == "onnx":
            from streamav.engines.export import export_step, write_onnx

            program = export_step(model, spec.batch)
            if spec.precision == "int8":
                from streamav.engines.backends.onnx import quantize_weights_int8

                with tempfile.TemporaryDirectory() as scratch:
                    float_path = write_onnx(program, Path(scratch) / "step_fp32.onnx")
                    quantize_weights_int8(float_path, path)
            else:
                write_onnx(program, path)
        else:
            from streamav.engines.backends.tensorrt import build_tensorrt

            build_tensorrt(model, spec, path, calibration_set, cache.root)
        engine = load_cached(model, spec, CachedEngine(folder, {}, True))
        spectra, faces = reference_frames(cache.root, parity_frames)
        from streamav.engines.backends.eager import EagerEngine

        reference = parity.run_engine(EagerEngine(EngineSpec("eager", spec.device, "fp32",
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
                               within_tolerance=ok, frames_source=frames_source()),
                "latency_ms": parity.latency_summary(ran["step_ms"]),
                "eager_latency_ms": parity.latency_summary(reference["step_ms"]),
                "calibration": (None if calibration_set is None else
                                {"path": str(calibration_set.path),
                                 "sha256": calibration_set.set_hash})}

    built = cache.get_or_build(identity, build)
    if not built.built:
        log.info("engine %s: loaded from %s", spec.label, built.folder)
    return built


def frames_source() -> str:
    """Where `reference_frames` takes its real frames from."""
    from streamav.engines.calibration import default_calibration_file

    return ("calibration/calibration.json" if default_calibration_file().is_file()
            else "the demo clip, looped")


_FRAMES_MEMO: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def reference_frames(cache_root: Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Real model inputs for parity checks: the calibration set (the checkout's), else the
    bundled demo clip; looped to `frames`. Kept in memory once read."""
    key = str(cache_root)
    if key not in _FRAMES_MEMO:
        _FRAMES_MEMO[key] = _real_frames(cache_root)
    spectra, faces = _FRAMES_MEMO[key]
    reps = -(-frames // spectra.shape[0])
    return (np.ascontiguousarray(np.concatenate([spectra] * reps)[:frames]),
            np.ascontiguousarray(np.concatenate([faces] * reps)[:frames]))


def _real_frames(cache_root: Path) -> tuple[np.ndarray, np.ndarray]:
    from streamav.engines.calibration import CalibrationSet, load_calibration

    try:
        calibration: CalibrationSet = load_calibration()
        data = calibration.frames(cache_root / ".calibration")
        spectra, faces = data.spectra, data.faces
    except InputError:
        from streamav.cli import demo_clip_path
        from streamav.model.inputs import face_to_model
        from streamav.frontend.features import extract_clip_features

        features = extract_clip_features(demo_clip_path())
        keep = features.face_found
        spectra = features.spectrum[keep].astype(np.float32)
        faces = face_to_model(features.face_crop_rgb[keep]).astype(np.float32)
    return spectra, faces
