"""A model folder's config.json, read and checked without torch.

A model folder holds `model.safetensors` (the weights), `config.json` (what they are; written
by `streamav.model.io.save_model`), optionally the emotion estimator (`emotion.json`,
`emotion.safetensors`) and the exported step for the runtime without PyTorch (`step.onnx`,
`step.json`: streamav.engines.shipped). `read_model_config` checks config.json and raises
`ModelFolderError` (an InputError: exit code 2) with one line naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamav.errors import InputError
from streamav.model.config import ModelConfig

FORMAT_NAME = "streamav-model"
FORMAT_VERSION = 2  # 2: the identity path (refine) joined the step
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFolderError(InputError):
    """A model folder that cannot be used (the message says why, in one line)."""


def read_model_config(folder: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Check a folder's config.json; returns the ModelConfig and the whole json."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} is not a directory")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelFolderError(f"model folder {folder} is incomplete: no {CONFIG_FILE}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFolderError(f"{path} is not a streamav model config (format is not "
                               f"{FORMAT_NAME!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{folder} has model format version {version}, this streamav "
                               f"reads version {FORMAT_VERSION}")
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{path} has a bad model config: {exc}") from None
    if list(cfg.emotion.labels) != meta.get("labels"):
        raise ModelFolderError(f"{path}: labels {meta.get('labels')} differ from the model "
                               f"config's {list(cfg.emotion.labels)}")
    return cfg, meta


def weights_path(folder: str | Path, meta: dict[str, Any]) -> Path:
    """The weights file a checked config.json names."""
    return Path(folder) / str(meta.get("weights_file", WEIGHTS_FILE))
