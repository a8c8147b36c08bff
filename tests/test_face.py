"""Tests of the face front end (streamav.frontend.face) on real clips with the real MediaPipe model.

The CREMA-D and Obama clips are read from ../shared/data (override with STREAMAV_SHARED_DATA);
tests that need them are skipped when they are absent. The demo clip shipped in the package
(streamav/data/demo) is always there and carries the tracking and determinism tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from streamav.errors import InputError
from streamav.frontend.face import (
    LANDMARK_NAMES,
    NOT_FOUND,
    FaceConfig,
    FaceFrontEnd,
    FaceResult,
    apply_affine,
    fit_similarity,
    landmarks_xy_normalised,
    template_px,
    warp_to_crop,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STREAMAV_SHARED_DATA", REPO.parent / "shared" / "data"))
CREMA_D_CLIPS = sorted((SHARED_DATA / "crema-d").glob("*.flv"))
OBAMA_CLIP = SHARED_DATA / "talking-head" / "uncrop_Obama.mp4"
DEMO_CLIP = resources.files("streamav.data") / "demo" / "1001_DFA_HAP_XX.flv"
CROP_PX = 64
TEMPLATE = template_px(CROP_PX)  # (5, 2)
MIN_FOUND_FRACTION = 0.95
MAX_TEMPLATE_ERROR_PX = 3.5  # per landmark, crop pixels


@lru_cache(maxsize=None)
def decode_bgr(path: str, every: int = 1) -> tuple[np.ndarray, ...]:
    """Every `every`-th video frame of `path` as (H, W, 3) uint8 BGR, decoded once per session."""
    with av.open(path) as container:
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    return tuple(frames[::every])


def demo_frames() -> tuple[np.ndarray, ...]:
    with resources.as_file(DEMO_CLIP) as path:
        return decode_bgr(str(path))


@pytest.fixture(scope="module")
def front_end() -> FaceFrontEnd:
    """One tracking front end for the module; each test resets it first."""
    with FaceFrontEnd(FaceConfig()) as stage:
        yield stage


@pytest.fixture(scope="module")
def detector() -> FaceFrontEnd:
    """A detect-every-frame front end, to find landmarks again inside aligned crops."""
    with FaceFrontEnd(FaceConfig(static_image_mode=True)) as stage:
        yield stage


def run(stage: FaceFrontEnd, frames: tuple[np.ndarray, ...]) -> list[FaceResult]:
    stage.reset()
    return [stage.step(frame) for frame in frames]


def check_found_result(result: FaceResult, image_shape: tuple[int, ...]) -> None:
    """Shape, dtype and geometry invariants of a found face."""
    height, width = image_shape[:2]
    assert result.crop_rgb is not None and result.crop_rgb.shape == (CROP_PX, CROP_PX, 3)
    assert result.crop_rgb.dtype == np.uint8
    assert result.landmarks_xy is not None and result.landmarks_xy.shape == (5, 2)
    assert result.landmarks_xy.dtype == np.float32
    assert result.mesh_xy is not None and result.mesh_xy.shape == (468, 2)
    assert result.crop_from_source is not None and result.crop_from_source.shape == (2, 3)
    x, y, w, h = result.box_xywh
    assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width - 1 and y + h <= height - 1
    # The five landmarks lie inside the box (they are mesh points or means of mesh points).
    assert np.all(result.landmarks_xy >= (x - 1e-3, y - 1e-3))
    assert np.all(result.landmarks_xy <= (x + w + 1e-3, y + h + 1e-3))
    # The subject's right eye is on the image's left, eyes above the nose, nose above the mouth.
    right_eye, left_eye, nose, right_mouth, left_mouth = result.landmarks_xy
    assert right_eye[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    # The similarity puts the landmarks on the template.
    in_crop = apply_affine(result.crop_from_source, result.landmarks_xy)
    assert np.linalg.norm(in_crop - TEMPLATE, axis=1).max() < MAX_TEMPLATE_ERROR_PX


def test_landmark_names_and_template_layout() -> None:
    assert LANDMARK_NAMES == ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner")
    right_eye, left_eye, nose, right_mouth, left_mouth = TEMPLATE
    assert right_eye[1] == left_eye[1] and right_mouth[1] == left_mouth[1]  # level eyes and mouth
    assert (right_eye[0] + left_eye[0]) / 2 == pytest.approx((CROP_PX - 1) / 2)  # centred
    assert nose[0] == pytest.approx((CROP_PX - 1) / 2)
    assert 0 < right_eye[1] < nose[1] < right_mouth[1] < CROP_PX


@pytest.mark.skipif(not CREMA_D_CLIPS, reason=f"no CREMA-D clips under {SHARED_DATA}")
@pytest.mark.parametrize("clip", CREMA_D_CLIPS, ids=lambda p: p.stem)
def test_crema_d_faces_found_and_aligned(front_end: FaceFrontEnd, clip: Path) -> None:
    frames = decode_bgr(str(clip))
    results = run(front_end, frames)
    found = [r for r in results if r.found]
    assert len(found) >= MIN_FOUND_FRACTION * len(frames), f"{clip.name}: {len(found)}/{len(frames)}"
    for result in found:
        check_found_result(result, frames[0].shape)


@pytest.mark.skipif(not OBAMA_CLIP.exists(), reason=f"no {OBAMA_CLIP}")
def test_obama_faces_found_and_aligned(front_end: FaceFrontEnd) -> None:
    frames = decode_bgr(str(OBAMA_CLIP))  # all 500 frames
    results = run(front_end, frames)
    found = [r for r in results if r.found]
    assert len(found) >= MIN_FOUND_FRACTION * len(frames), f"{len(found)}/{len(frames)}"
    for result in found:
        check_found_result(result, frames[0].shape)


def redetect_in_crop(detector: FaceFrontEnd, crop_rgb: np.ndarray, zoom: int = 4,
                     pad_px: int = 64) -> np.ndarray | None:
    """Find the five landmarks again in an enlarged, padded copy of the crop; crop pixels."""
    big = cv2.resize(crop_rgb, (CROP_PX * zoom, CROP_PX * zoom), interpolation=cv2.INTER_CUBIC)
    canvas = cv2.copyMakeBorder(big, pad_px, pad_px, pad_px, pad_px, cv2.BORDER_CONSTANT,
                                value=(128, 128, 128))
    result = detector.step(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not result.found:
        return None
    return (result.landmarks_xy.astype(np.float64) - pad_px + 0.5) / zoom - 0.5


@pytest.mark.skipif(not OBAMA_CLIP.exists() or not CREMA_D_CLIPS,
                    reason=f"no clips under {SHARED_DATA}")
def test_crop_pixels_put_eyes_and_mouth_on_the_template(front_end: FaceFrontEnd,
                                                        detector: FaceFrontEnd) -> None:
    """The crop's pixels, not only the matrix, are aligned: MediaPipe finds the landmarks
    inside the crop at the template, and where the matrix says they are."""
    checked = 0
    for clip in [*CREMA_D_CLIPS, OBAMA_CLIP]:
        frames = decode_bgr(str(clip), every=10)[:6]
        for result in run(front_end, frames):
            assert result.found
            found_in_crop = redetect_in_crop(detector, result.crop_rgb)
            assert found_in_crop is not None, f"{clip.name}: no face in the aligned crop"
            assert np.linalg.norm(found_in_crop - TEMPLATE, axis=1).max() < MAX_TEMPLATE_ERROR_PX
            assert abs(found_in_crop[0, 1] - found_in_crop[1, 1]) < 1.5  # eyes level
            predicted = apply_affine(result.crop_from_source, result.landmarks_xy)
            assert np.linalg.norm(found_in_crop - predicted, axis=1).mean() < 1.5
            checked += 1
    assert checked == 6 * (len(CREMA_D_CLIPS) + 1)


@pytest.mark.parametrize("kind", ["black", "grey", "noise"])
def test_frame_without_a_face_is_not_found(front_end: FaceFrontEnd, kind: str) -> None:
    shape = (360, 480, 3)
    image = {
        "black": np.zeros(shape, np.uint8),
        "grey": np.full(shape, 128, np.uint8),
        "noise": np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8),
    }[kind]
    front_end.reset()
    for _ in range(3):
        result = front_end.step(image)
        assert result is NOT_FOUND
        assert not result.found and result.crop_rgb is None and result.landmarks_xy is None
        assert result.box_xywh is None and result.crop_from_source is None


def test_tracking_resumes_after_blank_frames(front_end: FaceFrontEnd) -> None:
    frames = demo_frames()
    blank = np.zeros_like(frames[0])
    sequence = (*frames[:10], *[blank] * 15, *frames[10:20])
    results = run(front_end, sequence)
    assert all(r.found for r in results[:10])
    assert not any(r.found for r in results[10:25])
    assert all(r.found for r in results[25:])
    # The first face after the gap is found by a fresh detection: same as a fresh front end.
    fresh = run(front_end, frames[10:11])[0]
    assert np.array_equal(results[25].crop_rgb, fresh.crop_rgb)
    check_found_result(results[25], frames[0].shape)


def test_results_are_deterministic() -> None:
    frames = demo_frames()[:30]
    with FaceFrontEnd() as first, FaceFrontEnd() as second:
        a = [first.step(frame) for frame in frames]
        b = [second.step(frame) for frame in frames]
        first.reset()
        c = [first.step(frame) for frame in frames]
    for ra, rb, rc in zip(a, b, c):
        assert ra.found and rb.found and rc.found
        assert np.array_equal(ra.crop_rgb, rb.crop_rgb) and np.array_equal(ra.crop_rgb, rc.crop_rgb)
        assert np.array_equal(ra.landmarks_xy, rb.landmarks_xy)
        assert np.array_equal(ra.landmarks_xy, rc.landmarks_xy)
        assert ra.box_xywh == rb.box_xywh == rc.box_xywh


@pytest.mark.parametrize(
    "bad",
    [
        [[0, 0, 0]],
        np.zeros((360, 480), np.uint8),
        np.zeros((360, 480, 4), np.uint8),
        np.zeros((360, 480, 1), np.uint8),
        np.zeros((360, 480, 3), np.float32),
        np.zeros((360, 480, 3), np.uint16),
        np.zeros((0, 480, 3), np.uint8),
        np.zeros((2, 360, 480, 3), np.uint8),
    ],
    ids=["list", "2d", "4ch", "1ch", "float32", "uint16", "empty", "4d"],
)
def test_bad_input_raises_value_error(front_end: FaceFrontEnd, bad: object) -> None:
    with pytest.raises(ValueError, match="face: "):
        front_end.step(bad)  # type: ignore[arg-type]


def test_lifecycle() -> None:
    stage = FaceFrontEnd()
    with pytest.raises(RuntimeError, match="start"):
        stage.step(np.zeros((8, 8, 3), np.uint8))
    stage.stop()  # stop before start is harmless
    stage.start()
    stage.start()  # idempotent
    assert stage.started
    frame = demo_frames()[0]
    assert stage.step(frame).found
    stage.stop()
    stage.stop()
    assert not stage.started
    stage.start()  # restartable
    assert stage.step(frame).found
    stage.stop()


def test_result_arrays_are_read_only(front_end: FaceFrontEnd) -> None:
    result = run(front_end, demo_frames()[:1])[0]
    with pytest.raises(ValueError):
        result.crop_rgb[0, 0, 0] = 1
    with pytest.raises(AttributeError):
        result.found = False  # type: ignore[misc]


def test_non_contiguous_input_gives_the_same_result(front_end: FaceFrontEnd) -> None:
    frame = demo_frames()[0]
    padded = np.zeros((frame.shape[0], frame.shape[1], 4), np.uint8)
    padded[..., :3] = frame
    view = padded[..., :3]  # same pixels, not contiguous
    assert not view.flags.c_contiguous
    a = run(front_end, (frame,))[0]
    b = run(front_end, (view,))[0]
    assert np.array_equal(a.crop_rgb, b.crop_rgb)


@pytest.mark.parametrize(
    "kwargs",
    [{"crop_size_px": 4}, {"min_detection_confidence": 1.5}, {"min_tracking_confidence": -0.1},
     {"border": "wrap"}],
)
def test_bad_config_raises_input_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        FaceConfig(**kwargs)  # type: ignore[arg-type]


def test_other_crop_sizes_and_constant_border() -> None:
    frame = demo_frames()[0]
    with FaceFrontEnd(FaceConfig(crop_size_px=112, border="constant")) as stage:
        result = stage.step(frame)
    assert result.found and result.crop_rgb.shape == (112, 112, 3)
    in_crop = apply_affine(result.crop_from_source, result.landmarks_xy)
    assert np.linalg.norm(in_crop - template_px(112), axis=1).max() < MAX_TEMPLATE_ERROR_PX * 112 / 64


def test_fit_similarity_recovers_a_known_transform() -> None:
    angle_rad, scale = np.radians(17.0), 0.37
    truth = np.array([[scale * np.cos(angle_rad), -scale * np.sin(angle_rad), 12.5],
                      [scale * np.sin(angle_rad), scale * np.cos(angle_rad), -3.25]])
    src = np.random.default_rng(1).uniform(0, 400, (5, 2))
    fitted = fit_similarity(src, apply_affine(truth, src))
    np.testing.assert_allclose(fitted, truth, atol=1e-9)


@pytest.mark.parametrize("scale", [0.08, 0.2, 0.45, 0.9, 2.5])
def test_warp_puts_a_source_point_where_the_matrix_says(scale: float) -> None:
    """Both resampling paths (box prescale + bilinear, and bilinear alone) agree with the matrix."""
    height, width = 1200, 1600
    source_xy = np.array([803.0, 611.0])
    yy, xx = np.mgrid[0:height, 0:width]
    sigma_px = 3.0 / scale  # a blob about 3 crop pixels wide after the warp
    blob = np.exp(-((xx - source_xy[0]) ** 2 + (yy - source_xy[1]) ** 2) / (2 * sigma_px**2))
    image = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    angle_rad = np.radians(12.0)
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    rotation = scale * np.array([[cos, -sin], [sin, cos]])
    target_xy = np.array([30.25, 35.75])
    matrix = np.hstack([rotation, (target_xy - rotation @ source_xy)[:, None]])
    crop = warp_to_crop(image, matrix, CROP_PX)[..., 0].astype(np.float64)
    cy, cx = np.mgrid[0:CROP_PX, 0:CROP_PX]
    weight = np.clip(crop - 8, 0, None)  # ignore the faint tails
    centroid = np.array([(weight * cx).sum(), (weight * cy).sum()]) / weight.sum()
    np.testing.assert_allclose(centroid, target_xy, atol=0.2)


def test_landmark_fast_path_matches_the_attribute_path() -> None:
    from mediapipe.framework.formats import landmark_pb2

    rng = np.random.default_rng(2)
    values = rng.uniform(-0.1, 1.1, (468, 3)).astype(np.float32)
    message = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in values:
        message.landmark.add(x=float(x), y=float(y), z=float(z))
    np.testing.assert_array_equal(landmarks_xy_normalised(message), values[:, :2])
    message.landmark[7].x = 0.0  # proto3 leaves the field out: the slow path must take over
    values[7, 0] = 0.0
    np.testing.assert_array_equal(landmarks_xy_normalised(message), values[:, :2])


def test_importing_streamav_does_not_import_mediapipe() -> None:
    code = "import sys, streamav.frontend.face; assert 'mediapipe' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("angle_deg", [-25.0, 20.0])
def test_head_roll_is_removed(front_end: FaceFrontEnd, detector: FaceFrontEnd,
                              angle_deg: float) -> None:
    """Rotating the frame rotates the face; the crop comes out upright, with the same layout."""
    frame = demo_frames()[0]
    height, width = frame.shape[:2]
    upright = run(front_end, (frame,))[0]
    # cv2's positive angle turns the image anticlockwise on screen, i.e. the face's roll decreases.
    rotation = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle_deg, 1.0)
    frame_rolled = cv2.warpAffine(frame, rotation, (width, height), borderMode=cv2.BORDER_REPLICATE)
    rolled = run(front_end, (frame_rolled,))[0]
    assert rolled.found
    check_found_result(rolled, frame.shape)
    assert rolled.roll_deg == pytest.approx(upright.roll_deg - angle_deg, abs=2.0)
    found_in_crop = redetect_in_crop(detector, rolled.crop_rgb)
    assert found_in_crop is not None
    assert abs(found_in_crop[0, 1] - found_in_crop[1, 1]) < 1.5  # eyes level again


def test_large_frame_and_face_at_the_border(front_end: FaceFrontEnd) -> None:
    """A 1080p frame (strong downscale path) and a face half out of the frame."""
    frame = demo_frames()[0]
    big = cv2.resize(frame, (1920, 1440), interpolation=cv2.INTER_CUBIC)[180:1260]  # 1920x1080
    result = run(front_end, (big,))[0]
    assert result.found and result.scale < 0.15
    check_found_result(result, big.shape)
    shifted = np.zeros_like(frame)
    x_face = int(run(front_end, (frame,))[0].landmarks_xy[:, 0].mean())
    shift_px = frame.shape[1] - x_face - 20  # the face's centre ends 20 px from the right edge
    shifted[:, shift_px:] = frame[:, : frame.shape[1] - shift_px]
    result = run(front_end, (shifted,))[0]
    if result.found:  # MediaPipe may or may not see half a face; either way no error
        assert result.crop_rgb.shape == (CROP_PX, CROP_PX, 3)
        x, y, w, h = result.box_xywh
        assert x + w <= frame.shape[1] - 1 and y + h <= frame.shape[0] - 1


def test_trackers_starting_together_leave_stderr_where_it_was():
    """Two trackers start at once (several streams): their fd 2 redirects (the native
    MediaPipe lines go to a log) must not interleave, or fd 2 ends up on a deleted temp file
    and the process's last lines are lost (seen: `live --streams` printed nothing)."""
    import threading
    import time

    from streamav.frontend.face import _stderr_to_debug_log

    before = os.fstat(2)
    first_in, second_in = threading.Event(), threading.Event()

    def first() -> None:  # in first, out first: the order that lost fd 2
        with _stderr_to_debug_log(True):
            first_in.set()
            second_in.wait(0.5)  # (with the lock the second cannot come in: 0.5 s, then go)

    def second() -> None:
        first_in.wait(5)
        with _stderr_to_debug_log(True):
            second_in.set()
            time.sleep(0.3)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
