"""The worker's per-frame glue made cheaper (issue 13, "a cheaper frame") gives the same bytes as
the plain formulas it replaced: the face's fields and the `face` message's landmarks. (The
whole-run check, every message of offline runs on three clips before and after, is in
BENCHMARKS.md; these pin each part.)"""

from __future__ import annotations

from importlib import resources

import av
import cv2
import numpy as np
import pytest

from streamav.frontend.face import (FaceConfig, FaceFrontEnd, fit_similarity, template_px,
                                   warp_to_crop)
from streamav.pipeline import face_message
from streamav.ring import VideoFrame

DEMO_CLIP = resources.files("streamav.data") / "demo" / "1001_DFA_HAP_XX.flv"


def _demo_frames_rgb(count: int) -> list[np.ndarray]:
    with resources.as_file(DEMO_CLIP) as path, av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24")
                for _, frame in zip(range(count), container.decode(video=0))]


def _box_as_before(mesh_xy: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    low = np.clip(mesh_xy.min(axis=0), 0.0, (width - 1, height - 1))
    high = np.clip(mesh_xy.max(axis=0), 0.0, (width - 1, height - 1))
    return (float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1]))


@pytest.fixture(scope="module")
def faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB frame, its FaceMesh points in source pixels) for 20 demo frames."""
    with FaceFrontEnd(FaceConfig()) as front:
        out = []
        for image_rgb in _demo_frames_rgb(20):
            found = front.step(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
            assert found.found
            out.append((image_rgb, np.array(found.mesh_xy)))
        return out


def test_face_fields_are_the_reference_formulas(faces) -> None:
    front = FaceFrontEnd(FaceConfig())  # _aligned needs no MediaPipe graph
    template = template_px(64)
    height, width = faces[0][0].shape[:2]
    # the demo's meshes, and each moved half out of the frame on every side (the box clips)
    shifts = [(0.0, 0.0), (-0.6 * width, 0.0), (0.6 * width, 0.0), (0.0, -0.6 * height),
              (0.0, 0.6 * height)]
    for (image_rgb, mesh_xy), (dx, dy) in zip(faces, shifts * 4):
        mesh = (mesh_xy + np.float32([dx, dy])).astype(np.float32)
        result = front._aligned(image_rgb, mesh)
        matrix = fit_similarity(result.landmarks_xy, template)
        assert result.crop_from_source.tobytes() == matrix.tobytes()
        assert result.scale == float(np.hypot(matrix[0, 0], matrix[1, 0]))
        assert result.crop_rgb.tobytes() == warp_to_crop(image_rgb, matrix, 64).tobytes()
        assert result.box_xywh == _box_as_before(mesh, width, height)
        assert all(type(v) is float for v in result.box_xywh)


def test_face_message_landmarks_are_the_float_of_each_value(faces) -> None:
    with FaceFrontEnd(FaceConfig()) as front:
        image_rgb = faces[3][0]
        face = front.step(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    frame = VideoFrame(seq=3, t_capture_ns=0, t_media_ns=0, pts_s=0.1, decode_ns=0,
                       image_bgr=image_rgb)
    landmarks = face_message(face, frame).landmarks
    assert landmarks == tuple((float(x), float(y)) for x, y in face.landmarks_xy)
    assert all(type(v) is float for point in landmarks for v in point)
