"""`streamav build-engines`: build (or find) the engines for a model, and say what they are.

For each backend x precision x batch asked for (one EngineChoice each, all checked before any
work): the engine is looked up in the cache and built on a miss (export, compile, parity against
eager over real frames with the state fed back, latency), then listed with its folder, parity
and latency from its manifest. The real frames come from streamav.offline_features (the
calibration set, else the demo clip). `--force` removes
a matching engine first. `--calibration` takes a calibration.json or a folder of clips (whose
description is written to FOLDER/calibration.json); INT8 engines report their accuracy change
against fp32 eager: top-emotion agreement and face PSNR.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamav.engines.cache import EngineCache
from streamav.engines.choice import EngineChoice
from streamav.errors import InputError


def split_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"--{what} is empty")
    return items


def engine_choices(backend: str, device: str, precision: str, batch: str) -> list[EngineChoice]:
    """Every backend x precision x batch of the comma-separated options, each checked now."""
    try:
        batches = [int(b) for b in split_list(batch, "batch")]
    except ValueError:
        raise InputError(f"--batch {batch!r}: expected integers like 1 or 1,64") from None
    return [EngineChoice(name, device, p, b) for name in split_list(backend, "backend")
            for p in split_list(precision, "precision") for b in batches]


def calibration_path(path: Path | None) -> Path | None:
    """A calibration.json as given, or the one of a folder of clips (described if missing)."""
    if path is None:
        return None
    from streamav.offline_features import describe_recordings, recordings_in

    if path.is_dir() and not (path / "calibration.json").is_file():
        clips = recordings_in(path)
        if not clips:
            raise InputError(f"--calibration {path}: no video clips in it")
        describe_recordings(clips, path / "calibration.json")
    if not path.exists():
        raise InputError(f"--calibration {path} does not exist")
    return path


def build_engines(model_folder: Path | None, choices: list[EngineChoice],
                  engine_dir: Path | None, calibration: Path | None, force: bool,
                  console: Console) -> list[dict]:
    """Build or load the engine of every choice (`auto` resolved); returns their manifests."""
    from streamav.data import default_model_folder
    from streamav.engines.registry import (CACHED_BACKENDS, build_or_load, check_backend,
                                           engine_identity, resolve_backend, uses_calibration,
                                           weights_sha256)
    from streamav.engines.shipped import find_shipped_step
    from streamav.model.io import load_model
    from streamav.offline_features import OfflineInputs

    folder = model_folder or default_model_folder()
    model = load_model(folder).float().eval()
    shipped, _ = find_shipped_step(folder)  # the onnx/cpu/fp32/b1 engine, as live uses it
    cache = EngineCache(engine_dir)
    inputs = OfflineInputs(calibration_path(calibration))
    weights = weights_sha256(model)
    manifests = []
    for choice in choices:
        spec, why = resolve_backend(choice)
        if choice.is_auto:
            console.print(f"auto: {spec.backend} ({why})")
        if spec.backend not in CACHED_BACKENDS:
            raise InputError(f"--backend {spec.backend} builds nothing to keep (it compiles at "
                             f"start); choose from {', '.join(CACHED_BACKENDS)}")
        check_backend(spec)
        if force:
            calibration_hash = inputs.calibration().set_hash if uses_calibration(spec) else None
            stale = cache.folder_for(engine_identity(model, spec, weights, calibration_hash,
                                                     shipped))
            shutil.rmtree(stale, ignore_errors=True)
        with console.status(f"engine {spec.label}: building or loading"):
            cached = build_or_load(model, spec, cache, inputs, weights_hash=weights,
                                   shipped_onnx=shipped)
        manifests.append(dict(cached.manifest, folder=str(cached.folder),
                              built_now=cached.built))
    print_engines(manifests, console)
    return manifests


def print_engines(manifests: list[dict], console: Console) -> None:
    table = Table(title="engines: parity against eager fp32 and step latency")
    for column in ("engine", "", "build s", "face err", "probs err", "top agree", "face dB",
                   "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("engine", "") else "right")
    for m in manifests:
        identity, parity, latency = m["identity"], m.get("parity", {}), m.get("latency_ms", {})
        label = (f"{identity['backend']}/{identity['device']}/{identity['precision']}"
                 f"/b{identity['batch']}")
        state = "built" if m.get("built_now") else "cached"
        if not parity.get("within_tolerance"):
            state += " OUTSIDE TOLERANCE"
        table.add_row(
            label, state, f"{m.get('build_s', 0):.1f}",
            f"{parity['max_abs']['face_hat']:.1e}", f"{parity['max_abs']['emotion_probs']:.1e}",
            f"{parity.get('emotion_agreement', float('nan')):.3f}",
            f"{parity.get('face_psnr_db_vs_reference', float('nan')):.1f}",
            f"{latency.get('p50', float('nan')):.2f}", f"{latency.get('p99', float('nan')):.2f}")
    console.print(table)
    for m in manifests:
        console.print(f"  {m['folder']}")
