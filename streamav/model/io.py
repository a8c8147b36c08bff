"""A model folder on disk: `model.safetensors` (weights) + `config.json` (what they are).

config.json holds the format name and version, the preset, the whole ModelConfig tree, the
emotion label names, the weights' dtype and sha256, and the streamav version that wrote it.
Loading checks all of it and raises `ModelFolderError` (an InputError: exit code 2) with one
line naming the problem: a missing or incomplete folder, another format version, a config that
does not parse, weights whose hash, names or shapes do not match. Never pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from streamav.errors import MissingDependencyError
from streamav.host import file_sha256 as _sha256
from streamav.model.folder import (CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION,  # noqa: F401
                                   WEIGHTS_FILE, ModelFolderError, read_model_config,
                                   weights_path)
from streamav.model.streaming import StreamingModel


def _safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "safetensors is not installed: pip install safetensors (or 'streamav[train]')"
        ) from None
    return st




def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: StreamingModel, folder: str | Path, half: bool = False,
               extra: dict[str, Any] | None = None) -> Path:
    """Write `model` to `folder` (created if needed); returns the folder.

    half=True stores floating-point tensors as float16 (half the size; loading casts back to
    float32). `extra` is stored under "extra" in config.json (training notes, data hashes...).
    The weights are written first and config.json last, each atomically, so a folder with a
    config.json is complete.
    """
    st = _safetensors()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {name: (t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu())
               .contiguous() for name, t in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    _atomic_write(weights, st.save(tensors, metadata={"format": FORMAT_NAME}))
    from streamav import __version__

    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "preset": model.cfg.preset,
        "model": model.cfg.to_dict(),
        "labels": list(model.labels),
        "weights_file": WEIGHTS_FILE,
        "weights_dtype": "float16" if half else "float32",
        "weights_sha256": _sha256(weights),
        "streamav_version": __version__,
        "extra": extra or {},
    }
    _atomic_write(folder / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def load_model(folder: str | Path, device: torch.device | str = "cpu",
               verify_hash: bool = True) -> StreamingModel:
    """Load a model folder written by `save_model`, in eval mode, float32, on `device`."""
    st = _safetensors()
    folder = Path(folder)
    cfg, meta = read_model_config(folder)
    weights = weights_path(folder, meta)
    if not weights.is_file():
        raise ModelFolderError(f"model folder {folder} is incomplete: no {weights.name}")
    if verify_hash and _sha256(weights) != meta.get("weights_sha256"):
        raise ModelFolderError(f"{weights} does not match the sha256 in {CONFIG_FILE} "
                               "(incomplete copy or modified weights)")
    try:
        tensors = st.load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFolderError(f"{weights} is not a readable safetensors file: {exc}") from None
    model = StreamingModel(cfg)
    _check_tensors(model.state_dict(), tensors, weights)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                           for k, v in tensors.items()})
    return model.to(device).eval()


def _check_tensors(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                   weights: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ModelFolderError(f"{weights} does not fit its config: {_few(missing)} missing, "
                               f"{_few(unexpected)} unexpected")
    wrong = [f"{k} {tuple(found[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if found[k].shape != v.shape]
    if wrong:
        raise ModelFolderError(f"{weights} has mismatched shapes (found != config): "
                               f"{_few(wrong)}")


def _few(items: list[str], n: int = 3) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
