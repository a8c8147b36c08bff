"""The real model inputs an engine build reads, handed in by its caller.

A build checks the new engine against eager over real frames (parity), and a TensorRT INT8
build calibrates on the calibration set. Both come from the front end run over real clips,
which sits above the engines: the caller passes an `EngineInputs`
(`streamav.offline_features.OfflineInputs` makes them from the checkout's calibration set, else
from the bundled demo clip), and nothing here runs the front end or the live pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class CalibrationFrames:
    """Model inputs of a whole calibration set, recordings one after the other (the state
    carries across frames; it is reset at each recording's first frame)."""

    spectra: np.ndarray  # (T, 513) float32 power
    faces: np.ndarray  # (T, 3, 64, 64) float32, -0.5..0.5 (frames with a face only)
    recording_starts: tuple[int, ...]  # index of each recording's first frame

    @property
    def n_frames(self) -> int:
        return int(self.spectra.shape[0])


class Calibration(Protocol):
    """A calibration set: where it is described, its hash (an INT8 engine's identity holds it),
    and its frames (`cache_dir`: where they may be kept by `set_hash`)."""

    path: Path
    set_hash: str

    def frames(self, cache_dir: Path | None = None) -> CalibrationFrames: ...


class EngineInputs(Protocol):
    """Where the engines' real inputs come from; everything is read on first use only (a cache
    hit needs no frames)."""

    def reference_frames(self, frames: int, cache_dir: Path | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(frames, 513) spectra and (frames, 3, 64, 64) faces, float32, real frames looped."""
        ...

    def reference_source(self) -> str:
        """Where `reference_frames` come from, for the manifest (e.g. 'the demo clip, looped')."""
        ...

    def calibration(self) -> Calibration:
        """The INT8 calibration set (InputError when there is none)."""
        ...
