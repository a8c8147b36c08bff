"""The preview window: the frame, the face box, the 64x64 crop, the denoised face, an audio
meter, the emotion bars, fps and latency.

`render_preview` composes one image (a pure function, tested headless); `compose` makes it of a
`FrameView` (streamav/run_view.py: one processed frame, its `emotion` message typed as on the
wire); `PreviewWindow` shows it in an OpenCV window on the main thread, reading the run through
the narrow `RunView` interface, until the run ends or the user presses `q` (or Esc);
`live --write-video` encodes the same image for every frame (streamav/run_outputs.py).
`display_available` decides whether a window can be opened at all.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import cv2
import numpy as np

from streamav.run_view import FrameView, RunView
from streamav.wire.messages import Emotion

log = logging.getLogger(__name__)

_PANEL_PX = 160  # width of the side panel: the crop and the denoised face 2x, meter, numbers
_PANEL_HEIGHT_PX = 504
_BARS_TOP_PX = 306  # the emotion bars, one row per class (at most _BAR_ROWS)
_BAR_ROWS = 8
_BAR_ROW_PX = 13
_TEXT_TOP_PX = _BARS_TOP_PX + _BAR_ROWS * _BAR_ROW_PX + 18
_GREEN = (80, 220, 80)
_WHITE = (235, 235, 235)
_GREY = (150, 150, 150)


def display_available() -> tuple[bool, str]:
    """(True, "") when a window can be shown here, else (False, why not)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display ($DISPLAY and $WAYLAND_DISPLAY are not set)"
    return True, ""


def emotion_line(emotion: Emotion) -> str:
    """The preview's emotion text (the panel fits ~18 characters): the top class and its
    probability, or `unsure: <top>`, or `learning face` in a person's first seconds."""
    if not emotion.uncertain:
        return f"{emotion.top} {emotion.confidence:.2f}"
    seen_s = emotion.baseline_s
    if seen_s is not None and seen_s < 3.0:
        return f"learning face {seen_s:.0f}s"
    return f"unsure: {emotion.top}"


def render_preview(image_bgr: np.ndarray, box_xywh=None, crop_rgb: np.ndarray | None = None,
                   audio_level_dbfs: float | None = None, fps: float | None = None,
                   latency_ms: float | None = None, denoised_rgb: np.ndarray | None = None,
                   emotion: str | None = None, emotion_probs=None,
                   hint: str | None = "q: quit") -> np.ndarray:
    """The preview image: the frame with the face box, and a side panel (the crop the model
    sees, the model's denoised face, the audio meter, one bar per emotion class, the emotion
    line, fps, latency, `hint`). `emotion_probs`: (labels, probabilities) or None. BGR uint8,
    max(frame height, 504) tall and frame width + 160 wide."""
    height = max(image_bgr.shape[0], _PANEL_HEIGHT_PX)
    canvas = np.zeros((height, image_bgr.shape[1] + _PANEL_PX, 3), np.uint8)
    canvas[:image_bgr.shape[0], :image_bgr.shape[1]] = image_bgr
    if box_xywh is not None:
        x, y, w, h = (int(round(v)) for v in box_xywh)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), _GREEN, 2)
    x0 = image_bgr.shape[1] + 16
    for top, face in ((8, crop_rgb), (144, denoised_rgb)):
        if face is not None:
            canvas[top:top + 128, x0:x0 + 128] = cv2.resize(
                cv2.cvtColor(face, cv2.COLOR_RGB2BGR), (128, 128), interpolation=cv2.INTER_NEAREST)
    _draw_meter(canvas, x0, 282, audio_level_dbfs)
    if emotion_probs is not None:
        _draw_bars(canvas, x0, _BARS_TOP_PX, *emotion_probs)
    lines = [emotion or "",
             f"{fps:5.1f} fps" if fps is not None else "-- fps",
             f"{latency_ms:5.1f} ms lat" if latency_ms is not None else "-- ms lat", hint or ""]
    for i, text in enumerate(lines):
        cv2.putText(canvas, text, (x0, _TEXT_TOP_PX + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    _WHITE, 1, cv2.LINE_AA)
    return canvas


def _draw_bars(canvas: np.ndarray, x0: int, y0: int, labels, probs) -> None:
    """One row per class (the first `_BAR_ROWS`): its name (7 letters) and a bar 0..1, the top
    class in green."""
    probs = [float(p) for p in probs]
    top = int(np.argmax(probs)) if probs else -1
    for i, (label, p) in enumerate(list(zip(labels, probs))[:_BAR_ROWS]):
        y = y0 + i * _BAR_ROW_PX
        color = _GREEN if i == top else _GREY
        cv2.putText(canvas, str(label)[:7], (x0, y + 9), cv2.FONT_HERSHEY_SIMPLEX, 0.32, color,
                    1, cv2.LINE_AA)
        cv2.rectangle(canvas, (x0 + 52, y + 1), (x0 + 128, y + 10), _GREY, 1)
        fill = int(round(76 * min(max(p, 0.0), 1.0)))
        if fill > 0:
            cv2.rectangle(canvas, (x0 + 52, y + 1), (x0 + 52 + fill, y + 10), color, -1)


def compose(frame: FrameView, fps: float | None, latency_ms: float | None,
            hint: str | None = "q: quit") -> np.ndarray:
    """`render_preview` of one processed frame (the window and --write-video)."""
    emotion = frame.emotion
    return render_preview(
        frame.image_bgr, frame.box_xywh, frame.crop_rgb, frame.audio_level_dbfs, fps,
        latency_ms, denoised_rgb=frame.denoised_rgb,
        emotion=None if emotion is None else emotion_line(emotion),
        emotion_probs=None if emotion is None else (emotion.labels, emotion.probs),
        hint=hint)


def _draw_meter(canvas: np.ndarray, x0: int, y0: int, level_dbfs: float | None) -> None:
    """A horizontal bar from -60 dBFS (empty) to 0 dBFS (full)."""
    cv2.rectangle(canvas, (x0, y0), (x0 + 128, y0 + 14), _WHITE, 1)
    if level_dbfs is None:
        return
    fill = int(128 * np.clip((level_dbfs + 60.0) / 60.0, 0.0, 1.0))
    color = _GREEN if level_dbfs < -6 else (60, 60, 230)
    if fill > 0:
        cv2.rectangle(canvas, (x0, y0), (x0 + fill, y0 + 14), color, -1)


class PreviewWindow:
    """Shows the run's newest frame in an OpenCV window until the run ends or `q`."""

    def __init__(self, title: str = "streamav") -> None:
        self.title = title

    def run(self, view: RunView, worker: threading.Thread) -> None:
        """Main thread: show `view`'s frames while `worker` runs and no stop was asked."""
        shown_seq = -1
        try:
            while worker.is_alive() and not view.stopping:
                frame = view.newest_frame()
                if frame is not None and frame.seq != shown_seq:
                    shown_seq = frame.seq
                    numbers = view.run_numbers()
                    cv2.imshow(self.title, compose(frame, numbers.fps, numbers.face_latency_ms))
                key = cv2.waitKey(15) & 0xFF
                if key in (ord("q"), 27):
                    view.request_stop("quit from the preview")
        except cv2.error as exc:
            log.warning("preview window failed (%s); running headless", exc)
        finally:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
