"""The step benchmark: every backend's model step on the same real frames, interleaved.

1. Every engine is opened first and its cold start timed on its own: `load_s` (open_engine:
   export, build, parity check and cache write on a miss, or the cache load) and
   `first_step_ms` (the first step on a fresh state, where torch.compile compiles).
2. Each backend then takes `warmup` steps, and the measured loop runs `frames` frames: at frame
   t every backend steps once, in an order rotated by one each frame (no backend always runs
   first, after the others have warmed the caches or heated the CPU), each with its own state
   fed back. Interleaving puts every backend under the same load over the same seconds, which a
   shared machine (other jobs, thermal state) would otherwise bias.
3. One timed step is what the live path pays for a frame: the inputs start as numpy arrays on
   the host and become tensors (and are copied to the device), the step runs, the face and the
   emotion probabilities are copied back to the host (`.cpu()`), and the engine is
   synchronised before the clock stops.

The inputs are real model inputs: the front end's spectra and face crops of the calibration
recordings (`calibration/calibration.json`), else of the bundled demo clip
(streamav.offline_features.OfflineInputs); for B streams, stream b reads the same frames shifted
by 7 * b. Each backend is an EngineChoice (backend, device, precision, batch).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.bench import BUDGET_MS, FPS
from streamav.engines.choice import EngineChoice
from streamav.errors import DeviceError, InputError, MissingDependencyError, StreamavError

log = logging.getLogger(__name__)

DEFAULT_BACKENDS = {"cpu": ("eager", "onnx"), "cuda": ("eager", "compile", "onnx", "tensorrt")}
REFERENCE = "eager"
TENSORRT_HINT = ("--backend tensorrt needs torch-tensorrt (and an NVIDIA GPU): "
                 "pip install 'streamav[tensorrt]'")
MAX_INPUT_POOL = 1024  # distinct input frames kept in memory; longer runs loop over them


@dataclass(frozen=True)
class StepSettings:
    backends: tuple[EngineChoice, ...]  # as asked for (auto or named); empty: the default
    device: str = "cpu"  # of the default backends (the asked ones carry their own)
    batch: int = 1
    frames: int = 1000
    warmup: int = 50
    threads: int = 0  # 0: every core of the process
    model_folder: Path | None = None
    engine_dir: Path | None = None
    inputs_file: Path | None = None  # .npz of spectra and faces; None: the calibration set


@dataclass
class Planned:
    choice: EngineChoice  # the backend named (auto resolved)
    why: str

    @property
    def name(self) -> str:
        """'onnx', or 'onnx:int8' for a precision other than fp32 (the rows of the report)."""
        return self.choice.name


def parse_backends(text: str | None, device: str = "cpu", batch: int = 1
                   ) -> tuple[EngineChoice, ...]:
    """'eager, onnx:int8' → (EngineChoice('eager', ...), EngineChoice('onnx', ..., 'int8'));
    None → () (the device's default). A backend may carry a precision after a colon (fp32
    when none)."""
    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError("--backend is empty: give one or more of eager, onnx, compile, "
                         "tensorrt, auto (comma-separated)")
    return tuple(EngineChoice.parse(name, device, batch) for name in names)


def check_device(device: str) -> None:
    EngineChoice(device=device)  # a device name
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is visible to PyTorch here")


def check_backend_here(choice: EngineChoice) -> None:
    """check_backend, with the install hint for tensorrt first (it needs a package and a GPU)."""
    from streamav.engines.registry import check_backend

    if choice.backend == "tensorrt" and importlib.util.find_spec("torch_tensorrt") is None:
        raise MissingDependencyError(TENSORRT_HINT)
    check_backend(choice)


def plan_backends(asked: tuple[EngineChoice, ...], device: str, batch: int = 1
                  ) -> tuple[list[Planned], list[str]]:
    """The backends to run, eager first, each with why; and notes for the user (auto's choice,
    eager added, duplicates dropped). Raises the first backend's error that cannot run here."""
    from streamav.engines.registry import resolve_backend

    notes: list[str] = []
    planned: list[Planned] = []
    defaults = tuple(EngineChoice(name, device, "fp32", batch)
                     for name in DEFAULT_BACKENDS[device])
    for choice in asked or defaults:
        if choice.is_auto:
            chosen, why = resolve_backend(choice)
            notes.append(f"auto → {chosen.backend} ({why})")
            why = f"auto: {why}"
        elif asked:
            check_backend_here(choice)
            chosen, why = choice, "asked for"
        else:  # a default one that cannot run here is skipped, not fatal
            try:
                check_backend_here(choice)
            except StreamavError as error:
                notes.append(f"{choice.backend} skipped: {error}")
                continue
            chosen, why = choice, f"default on {device}"
        plan = Planned(chosen, why)
        if any(p.name == plan.name for p in planned):
            notes.append(f"{plan.name} listed twice: benchmarked once")
            continue
        planned.append(plan)
    if not any(p.name == REFERENCE for p in planned):
        planned.insert(0, Planned(EngineChoice(REFERENCE, device, "fp32", batch),
                                  "added: the reference of the speed-up ratios"))
        notes.append("eager added: it is the reference of the speed-up ratios")
    else:  # eager first: its numbers are the reference every other row is read against
        planned.sort(key=lambda p: p.name != REFERENCE)
    return planned, notes


def validate(settings: StepSettings) -> None:
    if settings.frames < 1:
        raise InputError(f"--frames must be at least 1, got {settings.frames}")
    if settings.warmup < 0:
        raise InputError(f"--warmup must be 0 or more, got {settings.warmup}")
    if settings.batch < 1:
        raise InputError(f"--batch must be at least 1, got {settings.batch}")
    if settings.threads < 0:
        raise InputError(f"--threads must be 0 (every core) or more, got {settings.threads}")


def latency_stats(ms: np.ndarray) -> dict:
    """Percentiles, max and mean of step times in ms (exact: every sample is kept)."""
    ms = np.asarray(ms, dtype=np.float64)
    q = np.percentile(ms, [50, 90, 99, 99.9])
    return {"p50": round(float(q[0]), 4), "p90": round(float(q[1]), 4),
            "p99": round(float(q[2]), 4), "p99.9": round(float(q[3]), 4),
            "max": round(float(ms.max()), 4), "min": round(float(ms.min()), 4),
            "mean": round(float(ms.mean()), 4), "std": round(float(ms.std()), 4),
            "steps": int(ms.size)}


def throughput(stats: dict, batch: int) -> dict:
    """Steps and stream-frames per second, and the 30 fps streams one engine sustains: on
    average (B * steps/s / 30) and with every step inside the frame budget at p99
    (B * floor(33.3 ms / p99))."""
    mean, p99 = stats["mean"], stats["p99"]
    steps_per_s = 1000.0 / mean if mean > 0 else math.inf
    return {"steps_per_s": round(steps_per_s, 2),
            "stream_frames_per_s": round(batch * steps_per_s, 2),
            "streams_at_30fps_mean": round(batch * steps_per_s / FPS, 2),
            "streams_at_30fps_p99": int(batch * math.floor(BUDGET_MS / p99)) if p99 > 0
            else None}


def _engine_folders(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def _open(model, spec, cache, threads: int, inputs):
    from streamav.engines.registry import open_engine

    return open_engine(model, spec, cache, inputs, threads=threads)


def _engine_facts(engine, threads: int) -> dict:
    facts = {"class": type(engine).__name__, "threads": getattr(engine, "threads", threads),
             "file": str(getattr(engine, "path", "")) or None}
    session = getattr(engine, "session", None)
    if session is not None:  # ONNX Runtime: does its thread pool spin between runs?
        options = session.get_session_options()
        try:
            spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
        except Exception:  # noqa: BLE001 - not set: ONNX Runtime's default, on
            spinning = "1"
        facts["ort_intra_op_spinning"] = spinning != "0"
        facts["ort_providers"] = session.get_providers()
    return facts


def _timed_step(engine, spectra: np.ndarray, faces: np.ndarray, t: int, state):
    """One frame as the live path pays it; returns (ms, probs on the host, next state)."""
    from streamav.engines.parity import batch_inputs

    started = time.perf_counter()
    spectrum, face = batch_inputs(spectra, faces, t, engine.spec.batch)
    outputs, state = engine.step(spectrum, face, state)
    outputs.face_hat.cpu()
    probs = outputs.emotion_probs.cpu()
    engine.synchronize()
    return (time.perf_counter() - started) * 1e3, probs, state


def _progress(console, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    disable=not enabled, transient=False)


def run_step_bench(settings: StepSettings, console, progress: bool = True
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    """Run the benchmark; returns the JSON document and every backend's step times (ms)."""
    import torch

    from streamav.bench.machine import envelope, load_average, model_info, process_cores
    from streamav.data import default_model_folder
    from streamav.engines.cache import EngineCache
    from streamav.model.io import load_model
    from streamav.offline_features import OfflineInputs

    validate(settings)
    load_start = load_average()
    check_device(settings.device)
    for choice in settings.backends:
        if (choice.device, choice.batch) != (settings.device, settings.batch):
            raise InputError(f"{choice.label}: every backend of one benchmark runs on "
                             f"--device {settings.device} with --batch {settings.batch}")
    planned, notes = plan_backends(settings.backends, settings.device, settings.batch)
    for note in notes:
        console.print(f"streamav bench: {note}")
        log.info("%s", note)
    threads = settings.threads or process_cores()
    torch.set_num_threads(threads)
    folder = Path(settings.model_folder) if settings.model_folder else default_model_folder()
    model = load_model(folder).float().eval()
    cache = EngineCache(settings.engine_dir)
    inputs = OfflineInputs(frames_file=settings.inputs_file)

    engines, results = [], []
    for plan in planned:
        spec = plan.choice
        console.print(f"streamav bench: opening {spec.label} ...")
        before = _engine_folders(cache.root)
        started = time.perf_counter()
        engine = _open(model, spec, cache, threads, inputs)
        load_s = time.perf_counter() - started
        new = sorted(_engine_folders(cache.root) - before)
        engines.append(engine)
        results.append({"backend": plan.name, "why": plan.why,
                        "spec": dict(spec.as_dict(), label=spec.label),
                        "engine": _engine_facts(engine, threads),
                        "cold_start": {"load_s": round(load_s, 4),
                                       "cache": ("none" if spec.backend not in ("onnx", "tensorrt")
                                                 else "built" if new else "loaded")}})

    pool = min(1 + settings.warmup + settings.frames, MAX_INPUT_POOL)
    spectra, faces = inputs.reference_frames(pool, cache.root / ".calibration")

    states = []
    for engine, result in zip(engines, results):  # cold: the first step on a fresh state
        ms, _, state = _timed_step(engine, spectra, faces, 0, engine.initial_state())
        states.append(state)
        result["cold_start"]["first_step_ms"] = round(ms, 4)

    k = len(engines)
    step_ms = np.zeros((k, settings.frames))
    probs = [np.zeros((settings.frames, settings.batch, len(model.labels)), np.float32)
             for _ in engines]
    nonfinite = [0] * k
    gc.collect()
    with _progress(console, progress) as bar:
        warm = bar.add_task("warm-up", total=settings.warmup)
        for i in range(settings.warmup):
            t = 1 + i
            for j in _rotation(k, t):
                _, _, states[j] = _timed_step(engines[j], spectra, faces, t, states[j])
            bar.advance(warm)
        task = bar.add_task(f"{settings.frames} frames x {k} backends", total=settings.frames)
        for i in range(settings.frames):
            t = 1 + settings.warmup + i
            for j in _rotation(k, t):
                ms, p, states[j] = _timed_step(engines[j], spectra, faces, t, states[j])
                step_ms[j, i] = ms
                p = p.detach().float().numpy()
                probs[j][i] = p
                nonfinite[j] += int(not np.isfinite(p).all())
            bar.advance(task)

    assert results[0]["backend"] == REFERENCE  # first, by plan_backends
    reference_stats = latency_stats(step_ms[0])
    for j, result in enumerate(results):
        stats = reference_stats if j == 0 else latency_stats(step_ms[j])
        result["frames"] = settings.frames
        result["latency_ms"] = stats
        result["over_budget_frames"] = int((step_ms[j] > BUDGET_MS).sum())
        result["throughput"] = throughput(stats, settings.batch)
        result["speedup_vs_eager"] = {
            "p50": round(reference_stats["p50"] / stats["p50"], 4),
            "mean": round(reference_stats["mean"] / stats["mean"], 4)}
        diff = float(np.abs(probs[j] - probs[0]).max())
        result["max_abs_probs_vs_eager"] = diff if math.isfinite(diff) else None
        result["nonfinite_steps"] = nonfinite[j]

    settings_doc = {"device": settings.device, "batch": settings.batch,
                    "frames": settings.frames, "warmup": settings.warmup, "threads": threads,
                    "torch_threads": torch.get_num_threads(), "budget_ms": round(BUDGET_MS, 4),
                    "interleaved": True, "engine_dir": str(cache.root),
                    "inputs": {"source": inputs.reference_source(),
                               "pool_frames": int(spectra.shape[0])},
                    "asked_backends": [c.name for c in settings.backends], "notes": notes}
    document = envelope("step", load_start, model_info(folder, model), settings_doc)
    document["backends"] = results
    return document, {r["spec"]["label"]: step_ms[j] for j, r in enumerate(results)}


def _rotation(k: int, t: int) -> list[int]:
    """Backend order at frame t: 0..k-1 rotated by t."""
    start = t % k
    return list(range(start, k)) + list(range(start))
