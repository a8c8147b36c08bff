"""MediaPipe on still images: the 478-point face mesh (with iris) and the person mask.

Used once per identity (never per rendered frame): the photographic and drawn portraits are
animated by moving these points. Coordinates are source pixels in OpenCV's convention
(x_px = x * W - 0.5); depth `z_px` is MediaPipe's relative depth scaled like x (x * W) and
negated, so that it grows toward the camera. MediaPipe is imported lazily.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from streamav.errors import MissingDependencyError
from streamav.frontend.face import _stderr_to_debug_log, landmarks_xy_normalised

N_MESH_WITH_IRIS = 478

_INSTALL_HINT = ("the synthetic corpus needs MediaPipe 0.10.14..0.10.21 (the last releases that "
                 "ship the face models): pip install 'mediapipe>=0.10.14,<0.10.22'")


def _solutions() -> Any:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from mediapipe.python import solutions
    except ImportError as exc:
        raise MissingDependencyError(_INSTALL_HINT) from exc
    return solutions


class StillFaceMesh:
    """FaceMesh in static-image mode with iris refinement: `detect(image_rgb)` → (478, 3) or None.

    A context manager; every call runs the detector afresh (no tracking state between images).
    """

    def __init__(self) -> None:
        self._mesh: Any = None

    def __enter__(self) -> "StillFaceMesh":
        with _stderr_to_debug_log(True):
            solutions = _solutions()
            self._mesh = solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=0.5)
            # The graph opens its calculators (and logs) asynchronously: a first frame waits
            # for that while stderr is still redirected.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def detect(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """(478, 3) float64 [x_px, y_px, z_px toward camera], or None when no face is found."""
        height, width = image_rgb.shape[:2]
        with _stderr_to_debug_log(True):
            output = self._mesh.process(np.ascontiguousarray(image_rgb))
        if not output.multi_face_landmarks:
            return None
        landmarks = output.multi_face_landmarks[0]
        xy = landmarks_xy_normalised(landmarks).astype(np.float64)  # (478, 2)
        z = np.array([p.z for p in landmarks.landmark], dtype=np.float64)  # (478,)
        mesh = np.empty((len(z), 3), dtype=np.float64)
        mesh[:, 0] = xy[:, 0] * width - 0.5
        mesh[:, 1] = xy[:, 1] * height - 0.5
        mesh[:, 2] = -z * width
        return mesh[:N_MESH_WITH_IRIS]


def person_mask(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 in 0..1: MediaPipe selfie segmentation of the person (head, hair, body)."""
    with _stderr_to_debug_log(True):
        solutions = _solutions()
        with solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
            output = segmenter.process(np.ascontiguousarray(image_rgb))
    return np.clip(output.segmentation_mask.astype(np.float32), 0.0, 1.0)
