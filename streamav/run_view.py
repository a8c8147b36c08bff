"""What a person is shown of a running pipeline, behind one narrow interface.

The preview window, `--write-video` and the terminal's status line read a run through
`RunView` (the pipeline implements it): the newest processed frame as a `FrameView` (the image,
the face box, the crop the model saw, the denoised face, the audio level and the frame's
`emotion` message as the wire types it) and the run's numbers as `RunNumbers`. They never
touch the pipeline's stages, stats or queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streamav.wire.messages import Emotion


@dataclass(frozen=True)
class FrameView:
    """One processed frame as shown."""

    seq: int  # the video frame's sequence number
    image_bgr: np.ndarray  # the source frame
    face_found: bool
    box_xywh: tuple[float, float, float, float] | None  # source pixels; None without a face
    crop_rgb: np.ndarray | None  # the crop the model saw (corrupted under --noise), else the
    #                              front end's aligned crop; None without a face
    denoised_rgb: np.ndarray | None  # the model's denoised face (the `video.denoised` pixels)
    audio_level_dbfs: float | None  # the frame's audio window; None without audio
    emotion: Emotion | None  # the frame's `emotion` message; None when the model did not read it


@dataclass(frozen=True)
class RunNumbers:
    """The run's numbers now."""

    elapsed_s: float  # since capture started
    fps: float | None  # over the last 30 frames; None before two frames
    face_latency_ms: float | None  # p50 so far, capture -> the frame's `face` message sent
    emotion_latency_ms: float | None  # p50 so far, capture -> its `emotion` message sent
    model_running: bool  # a model reads the faces (there are `emotion` messages to wait for)


class RunView(Protocol):
    """The narrow interface a display reads a run through."""

    @property
    def stopping(self) -> bool:
        """The run was asked to stop (the display should close)."""
        ...

    def newest_frame(self) -> FrameView | None:
        """The newest processed frame (None before the first)."""
        ...

    def run_numbers(self) -> RunNumbers:
        ...

    def request_stop(self, reason: str) -> None:
        """Ask the run to end (e.g. `q` in the preview)."""
        ...
