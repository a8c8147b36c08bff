"""The model step shipped inside a model folder as ONNX, for the runtime without PyTorch.

A model folder may hold `step.onnx`, the exported step (batch 1, float32 compute; the export
of `streamav.engines.export`, with the weights stored as float16 where that is exact), and
`step.json`, its manifest:

    {"format": "streamav-step", "version": 1, "file": "step.onnx", "bytes": ..., "sha256": ...,
     "source": {"weights_file": "model.safetensors", "weights_sha256": ...},
     "batch": 1, "inputs": {"spectrum": [1, 513], ...}, "outputs": [...],
     "initial_state": {"state_h_av": 0.0, "state_w_var": 1.0, ...}, "parity": {...}, ...}

`find_shipped_step(folder)` returns it only when it is intact (size and sha256) and was made
from the weights the folder holds now (the sha256 of model.safetensors): otherwise None and the
reason, so that a step left stale by retraining is never run. `scripts/export_step.py`
(`streamav.engines.ship.write_shipped_step`) makes both files. This module imports no torch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from streamav.engines.choice import EngineChoice
from streamav.host import file_sha256
from streamav.model.config import ModelConfig
from streamav.model.folder import CONFIG_FILE, WEIGHTS_FILE

STEP_FILE = "step.onnx"
STEP_MANIFEST = "step.json"
STEP_FORMAT = "streamav-step"
STEP_VERSION = 1
# The one engine the shipped file is, as it is: ONNX Runtime, CPU, float32, one stream.
SHIPPED_ENGINE = EngineChoice("onnx", "cpu", "fp32", 1)
REGENERATE_HINT = "regenerate it: python scripts/export_step.py (needs 'streamav[train]')"


@dataclass(frozen=True)
class ShippedStep:
    path: Path  # step.onnx
    manifest: dict  # step.json

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])


def read_step_manifest(folder: Path) -> dict:
    """step.json of `folder` (ValueError with the reason when absent or unreadable)."""
    path = Path(folder) / STEP_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no {STEP_MANIFEST}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{STEP_MANIFEST} is not readable JSON ({exc})") from None
    if (not isinstance(manifest, dict) or manifest.get("format") != STEP_FORMAT
            or manifest.get("version") != STEP_VERSION):
        raise ValueError(f"{STEP_MANIFEST} is not a {STEP_FORMAT} v{STEP_VERSION} manifest")
    return manifest


def _sha256(path: Path) -> str:
    """file_sha256, remembered while the file's size and modification time stay the same (a
    start-up checks the same 14 MB files from live's torch-free check and from the runner)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def find_shipped_step(folder: Path) -> tuple[ShippedStep | None, str]:
    """The folder's step.onnx when it is intact and made from the folder's weights; else None
    and why not (one phrase, for a log line)."""
    folder = Path(folder)
    try:
        manifest = read_step_manifest(folder)
    except ValueError as exc:
        return None, str(exc)
    path = folder / str(manifest.get("file", STEP_FILE))
    if not path.is_file():
        return None, f"{path.name} is missing"
    if path.stat().st_size != manifest.get("bytes") or _sha256(path) != manifest.get("sha256"):
        return None, f"{path.name} does not match the size and sha256 in {STEP_MANIFEST}"
    source = manifest.get("source") or {}
    weights = folder / str(source.get("weights_file", WEIGHTS_FILE))
    if not weights.is_file():
        return None, f"no {weights.name} to check {path.name} against"
    if _sha256(weights) != source.get("weights_sha256"):
        return None, (f"{path.name} was made from other weights than {weights.name} "
                      f"(stale: {REGENERATE_HINT})")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = {}
    labels = config.get("labels")
    if labels is not None and labels != manifest.get("labels"):
        return None, f"{STEP_MANIFEST} labels differ from {CONFIG_FILE}'s"
    if "config_sha256" in source and "model" in config:
        try:
            config_hash = ModelConfig.from_dict(config["model"]).sha256()
        except (TypeError, ValueError):
            config_hash = None
        if config_hash != source["config_sha256"]:
            return None, (f"{path.name} was made with other settings than {CONFIG_FILE}'s "
                          f"(stale: {REGENERATE_HINT})")
    return ShippedStep(path, manifest), "ok"
