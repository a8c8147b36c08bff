"""The files shipped inside the package: the demo clip and the default model folder."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEMO_CLIP = "1001_DFA_HAP_XX.flv"


def demo_clip_path() -> Path:
    """The bundled CREMA-D clip (see streamav/data/demo/ATTRIBUTION.md)."""
    return Path(str(files(__name__) / "demo" / DEMO_CLIP))


def default_model_folder() -> Path:
    """The model shipped inside the package (streamav/data/model), which may be absent."""
    return Path(str(files(__name__) / "model"))
