"""The face front end: one BGR video frame in, one similarity-aligned RGB face crop out.

Its one responsibility is to turn a camera frame into the 64x64 RGB face image the visual
encoder reads, plus the geometry a preview or a subscriber needs (box, five landmarks, the
source-to-crop matrix). It uses MediaPipe FaceMesh, which runs a face detector and then tracks
the face from frame to frame with its landmark model (the detector runs again only when the
track is lost), so a run of frames without a face is followed by a clean re-detection.

Conventions (all coordinates):

- Source and crop coordinates are in pixels, in OpenCV's convention: integer values are pixel
  centres, so a W-pixel-wide image spans x in [-0.5, W - 0.5]. MediaPipe's normalised
  coordinates (0 at the left edge, 1 at the right edge) are converted with x_px = x * W - 0.5.
- The five landmarks are named from the subject's point of view (as MediaPipe does): the
  subject's right eye appears on the left of a non-mirrored image. Order: right eye centre,
  left eye centre, nose tip, right mouth corner, left mouth corner (`LANDMARK_NAMES`).
- Eye centres are the mean of the 16 eye-contour landmarks of the mesh (not the iris), nose tip
  is mesh point 1, mouth corners are mesh points 61 (right) and 291 (left).

Alignment: a least-squares similarity (rotation, uniform scale, translation; no reflection, no
shear) maps the five landmarks onto `TEMPLATE_UNIT` scaled to the crop, so the eyes and mouth
land at fixed places whatever the head's position, size and roll. The template keeps the whole
face, brows to chin, inside the crop (docs/face.md). Large downscales are first box-filtered by
an integer factor (cv2.resize with INTER_AREA on the region the crop covers) and then warped
with bilinear interpolation, which gives INTER_AREA quality without aliasing; pixels outside the
frame replicate the frame's edge by default (`FaceConfig.border`).

MediaPipe is imported lazily in `FaceFrontEnd.start()`, so importing streamav stays fast.
The tracking state lives inside the MediaPipe graph (it cannot be passed in and out as an
explicit state object); `reset()` clears it, and results are deterministic for the same
sequence of frames after `start()` or `reset()`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from importlib import resources
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterator, Literal

import cv2
import numpy as np

from streamav.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)

LANDMARK_NAMES: tuple[str, ...] = (
    "right_eye",  # subject's right eye: on the image's left in a non-mirrored frame
    "left_eye",
    "nose_tip",
    "right_mouth_corner",
    "left_mouth_corner",
)

# FaceMesh indices (468-point canonical mesh; see mediapipe.solutions.face_mesh_connections).
# FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE contours, 16 points each, subject's point of view.
RIGHT_EYE_CONTOUR_IDX: tuple[int, ...] = (
    7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
LEFT_EYE_CONTOUR_IDX: tuple[int, ...] = (
    249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
NOSE_TIP_IDX = 1
RIGHT_MOUTH_CORNER_IDX = 61
LEFT_MOUTH_CORNER_IDX = 291
N_MESH_POINTS = 468
MAX_FACES = 16  # FaceConfig.max_faces: FaceMesh's cost grows with every face it tracks

# The five-point template in unit crop coordinates: (0, 0) is the crop's top-left corner and
# (1, 1) its bottom-right corner (pixel edges); pixel coordinates are u * crop_size_px - 0.5.
# In eye distances d from the eyes' midpoint, the nose tip is 0.62 d and the mouth corners
# 1.06 d below the eyes, the corners 0.86 d apart: the mean shape of the six CREMA-D clips and
# the Obama clip after alignment. d is 19/64 of the crop and the eyes are 22/64 from the top,
# which puts the brows at y ~ 13..17 and the chin at y ~ 55..59 in a 64 px crop (docs/face.md).
_EYE_DIST_U = 19.0 / 64.0
_EYE_Y_U = 22.0 / 64.0
_NOSE_DY_D, _MOUTH_DY_D, _MOUTH_HALF_WIDTH_D = 0.62, 1.06, 0.43
_NOSE_Y_U = _EYE_Y_U + _NOSE_DY_D * _EYE_DIST_U
_MOUTH_Y_U = _EYE_Y_U + _MOUTH_DY_D * _EYE_DIST_U
_MOUTH_HALF_WIDTH_U = _MOUTH_HALF_WIDTH_D * _EYE_DIST_U
TEMPLATE_UNIT: np.ndarray = np.array(
    [
        [0.5 - _EYE_DIST_U / 2, _EYE_Y_U],  # right eye (image left)
        [0.5 + _EYE_DIST_U / 2, _EYE_Y_U],  # left eye (image right)
        [0.5, _NOSE_Y_U],  # nose tip
        [0.5 - _MOUTH_HALF_WIDTH_U, _MOUTH_Y_U],  # right mouth corner (image left)
        [0.5 + _MOUTH_HALF_WIDTH_U, _MOUTH_Y_U],  # left mouth corner (image right)
    ],
    dtype=np.float64,
)
TEMPLATE_UNIT.setflags(write=False)


def template_px(crop_size_px: int) -> np.ndarray:
    """The five template points, (5, 2) float64, in pixels of a `crop_size_px` square crop."""
    return TEMPLATE_UNIT * crop_size_px - 0.5


@dataclass(frozen=True)
class FaceConfig:
    """The face stage's config section.

    crop_size_px: side of the square aligned crop (the visual encoder reads 64).
    min_detection_confidence / min_tracking_confidence: MediaPipe FaceMesh thresholds; below the
        tracking one the landmark track is dropped and the detector runs again on the next frame.
    static_image_mode: run the detector on every frame (no tracking; slower, no temporal state).
    refine_landmarks: also run MediaPipe's attention/iris refinement (~0.7 ms more per frame;
        the five points used here come from the eye contours, not the iris, and barely move).
    border: how pixels of the crop that fall outside the frame are filled: "replicate" repeats the
        frame's edge (no hard black edges for the encoder to learn), "constant" fills black.
    quiet_native_logs: while MediaPipe builds and warms up its graph (in `start()` and `reset()`),
        send the process's stderr (fd 2) to a temporary file and re-log its lines at DEBUG level
        on this module's logger, hiding TFLite/absl start-up chatter. Only affects those calls.
    max_faces: how many faces FaceMesh finds and tracks per frame (`step_all`); `step` gives the
        first. With more than 1, the detector runs on every frame that holds fewer faces than
        this (FaceMesh looks for the missing ones), which costs a detector pass per such frame.
    """

    crop_size_px: int = 64
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    static_image_mode: bool = False
    refine_landmarks: bool = False
    border: Literal["replicate", "constant"] = "replicate"
    quiet_native_logs: bool = True
    max_faces: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.max_faces <= MAX_FACES:
            raise InputError(f"face.max_faces must be in 1..{MAX_FACES}, got {self.max_faces}")
        if not 8 <= self.crop_size_px <= 1024:
            raise InputError(f"face.crop_size_px must be in 8..1024, got {self.crop_size_px}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"face.{name} must be in 0..1, got {value}")
        if self.border not in ("replicate", "constant"):
            raise InputError(f"face.border must be 'replicate' or 'constant', got {self.border!r}")


@dataclass(frozen=True, eq=False)
class FaceResult:
    """What the face stage gives for one frame. Arrays are read-only; all None when not found.

    found: a face was detected or tracked in this frame.
    box_xywh: tight box around all mesh points, clipped to the frame, in source pixels
        (x, y of the top-left point, width, height; OpenCV pixel-centre convention).
    landmarks_xy: (5, 2) float32 source pixels, in `LANDMARK_NAMES` order.
    crop_rgb: (crop_size_px, crop_size_px, 3) uint8 RGB, similarity-aligned to the template.
    crop_from_source: (2, 3) float64 similarity matrix mapping source pixels to crop pixels
        ([x_c, y_c] = M @ [x_s, y_s, 1]); cv2.invertAffineTransform gives the way back.
    scale: crop pixels per source pixel (the matrix's uniform scale).
    roll_deg: in-plane head rotation removed by the alignment, in degrees: the angle of the eye
        line in the source (y down), positive when the image-right eye is lower, i.e. the head
        is turned clockwise on screen.
    alignment_rms_px: root-mean-square distance in crop pixels between the aligned landmarks and
        the template: 0.7 median, under 1.8 on the CREMA-D and Obama clips; larger for strong
        yaw or pitch and extreme expressions.
    mesh_xy: (468, 2) float32, every FaceMesh point in source pixels (for previews and overlays).
    """

    found: bool
    box_xywh: tuple[float, float, float, float] | None = None
    landmarks_xy: np.ndarray | None = None
    crop_rgb: np.ndarray | None = None
    crop_from_source: np.ndarray | None = None
    scale: float | None = None
    roll_deg: float | None = None
    alignment_rms_px: float | None = None
    mesh_xy: np.ndarray | None = None


NOT_FOUND = FaceResult(found=False)


def check_image_bgr(image_bgr: Any) -> np.ndarray:
    """Return `image_bgr` if it is an (H, W, 3) uint8 array with H, W >= 1; else ValueError."""
    if not isinstance(image_bgr, np.ndarray):
        raise ValueError("face: expected an (H, W, 3) uint8 numpy array, "
                         f"got {type(image_bgr).__name__}")
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"face: expected an (H, W, 3) uint8 BGR image, got shape {image_bgr.shape}")
    if image_bgr.dtype != np.uint8:
        raise ValueError(f"face: expected dtype uint8, got {image_bgr.dtype} "
                         f"(shape {image_bgr.shape})")
    if image_bgr.shape[0] < 1 or image_bgr.shape[1] < 1:
        raise ValueError(f"face: empty image, shape {image_bgr.shape}")
    return image_bgr


# The mesh points five_points reads, gathered at once: both eye contours (16 each), then the
# nose tip and the mouth corners.
_FIVE_SOURCE_IDX = np.array([*RIGHT_EYE_CONTOUR_IDX, *LEFT_EYE_CONTOUR_IDX, NOSE_TIP_IDX,
                             RIGHT_MOUTH_CORNER_IDX, LEFT_MOUTH_CORNER_IDX])
_N_EYE = len(RIGHT_EYE_CONTOUR_IDX)


def five_points(mesh_xy: np.ndarray) -> np.ndarray:
    """(468, 2) mesh points → (5, 2) float32 landmarks in `LANDMARK_NAMES` order."""
    picked = mesh_xy[_FIVE_SOURCE_IDX]  # (35, 2): one gather; each eye's rows are contiguous
    five = np.empty((5, 2), dtype=np.float32)
    five[0] = picked[:_N_EYE].mean(axis=0)
    five[1] = picked[_N_EYE:2 * _N_EYE].mean(axis=0)
    five[2:] = picked[2 * _N_EYE:]
    return five


def _as_complex(points_xy: np.ndarray) -> np.ndarray:
    """(N, 2) points → (N,) complex128 x + iy."""
    return points_xy[:, 0].astype(np.float64) + 1j * points_xy[:, 1].astype(np.float64)


class SimilarityTarget:
    """The destination side of `fit_similarity`, computed once for points fitted to it frame
    after frame (the face template): `fit(src_xy)` is `fit_similarity(src_xy, dst_xy)`, the
    same arithmetic, without redoing the template's part."""

    def __init__(self, dst_xy: np.ndarray) -> None:
        dst = _as_complex(dst_xy)  # (N,)
        self._dst_mean = dst.mean()
        self._d = dst - self._dst_mean

    def fit(self, src_xy: np.ndarray) -> np.ndarray:
        src = _as_complex(src_xy)  # (N,)
        src_mean = src.mean()
        s = src - src_mean
        denom = float(np.sum(np.abs(s) ** 2))
        if denom <= 1e-12:
            raise ValueError("fit_similarity: source points coincide")
        a = complex(np.sum(np.conj(s) * self._d) / denom)
        b = self._dst_mean - a * src_mean
        return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def fit_similarity(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares similarity (no reflection) mapping src_xy onto dst_xy, as a (2, 3) matrix.

    Closed form (Umeyama 1991, in complex numbers for 2-D): with centred points s and d,
    a = sum(conj(s) * d) / sum(|s|^2) is scale * exp(i * angle); deterministic, no RANSAC.
    """
    return SimilarityTarget(dst_xy).fit(src_xy)


def apply_affine(matrix_2x3: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """Map (N, 2) points with a (2, 3) affine matrix; returns (N, 2) float64."""
    return points_xy.astype(np.float64) @ matrix_2x3[:, :2].T + matrix_2x3[:, 2]


def mesh_in_crop(face: "FaceResult") -> np.ndarray:
    """(468, 2) float32: the face's mesh points in crop pixels, i.e. with the head's position,
    size and roll (the alignment's similarity) removed; what is left is the face's shape,
    expression and out-of-plane pose."""
    return apply_affine(face.crop_from_source, face.mesh_xy).astype(np.float32)


def warp_to_crop(image_rgb: np.ndarray, crop_from_source: np.ndarray, crop_size_px: int,
                 border_mode: int = cv2.BORDER_REPLICATE, scale: float | None = None
                 ) -> np.ndarray:
    """Warp `image_rgb` into a (crop_size_px, crop_size_px, 3) crop with an anti-aliased resample.

    When the crop is at least 1.5x smaller than the face in the source, the source region the crop
    covers is first box-filtered by an integer factor k = round(1 / scale) (cv2.resize with
    INTER_AREA, whose integer-factor path is fast), and the remaining similarity, whose scale is
    then within 0.75..1.33, is applied with bilinear interpolation. `scale`: the matrix's
    uniform scale when the caller has it already.
    """
    if scale is None:
        scale = similarity_scale(crop_from_source)
    factor = int(round(1.0 / scale))
    size = (crop_size_px, crop_size_px)
    height, width = image_rgb.shape[:2]
    roi = _prescale_roi(crop_from_source, crop_size_px, factor, width, height)
    if roi is None:
        return cv2.warpAffine(image_rgb, crop_from_source, size, flags=cv2.INTER_LINEAR,
                              borderMode=border_mode)
    x0, y0, x1, y1 = roi
    roi_w, roi_h = x1 - x0, y1 - y0
    small_w, small_h = max(1, round(roi_w / factor)), max(1, round(roi_h / factor))
    small = cv2.resize(image_rgb[y0:y1, x0:x1], (small_w, small_h), interpolation=cv2.INTER_AREA)
    # cv2.resize maps a source pixel centre u (ROI coordinates) to (u + 0.5) * r - 0.5.
    rx, ry = small_w / roi_w, small_h / roi_h
    source_from_small = np.array([[1.0 / rx, 0.0, 0.5 / rx - 0.5 + x0],
                                  [0.0, 1.0 / ry, 0.5 / ry - 0.5 + y0],
                                  [0.0, 0.0, 1.0]])
    crop_from_small = crop_from_source @ source_from_small  # (2, 3) @ (3, 3) -> (2, 3)
    return cv2.warpAffine(small, crop_from_small, size, flags=cv2.INTER_LINEAR,
                          borderMode=border_mode)


def similarity_scale(crop_from_source: np.ndarray) -> float:
    """The uniform scale of a (2, 3) similarity matrix (crop pixels per source pixel)."""
    return float(np.hypot(crop_from_source[0, 0], crop_from_source[1, 0]))


@functools.lru_cache(maxsize=8)
def _crop_corners(crop_size_px: int) -> np.ndarray:
    """(4, 2) float64: the crop's outer pixel corners in crop pixels (read-only)."""
    edge = crop_size_px - 0.5
    corners = np.array([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]])
    corners.setflags(write=False)
    return corners


def _prescale_roi(crop_from_source: np.ndarray, crop_size_px: int, factor: int, width: int,
                  height: int) -> tuple[int, int, int, int] | None:
    """The source region (x0, y0, x1, y1) the crop samples, padded for the bilinear taps and sized
    in multiples of `factor` (clipped to the frame); None when no prescale is needed or possible."""
    if factor < 2:
        return None
    source_from_crop = cv2.invertAffineTransform(crop_from_source)
    corners = apply_affine(source_from_crop, _crop_corners(crop_size_px))  # (4, 2) source px
    margin = 2 * factor + 1  # two prescaled pixels for the bilinear taps, plus rounding
    x0, y0 = (math.floor(v - margin) for v in corners.min(axis=0).tolist())
    x1, y1 = (math.ceil(v + margin) for v in corners.max(axis=0).tolist())
    x1 = x0 + factor * -(-(x1 - x0) // factor)  # round the size up to a multiple of factor
    y1 = y0 + factor * -(-(y1 - y0) // factor)
    x0, x1 = max(0, x0), min(width, x1)
    y0, y1 = max(0, y0), min(height, y1)
    if x1 - x0 < factor or y1 - y0 < factor:  # the crop lies (almost) entirely outside the frame
        return None
    return x0, y0, x1, y1


def align_face(image_rgb: np.ndarray, landmarks_xy: np.ndarray, crop_size_px: int = 64,
               border_mode: int = cv2.BORDER_REPLICATE) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-align a face given its five landmarks: returns (crop_rgb, crop_from_source)."""
    crop_from_source = fit_similarity(landmarks_xy, template_px(crop_size_px))
    crop = warp_to_crop(image_rgb, crop_from_source, crop_size_px, border_mode)
    return crop, crop_from_source


# fd 2 is one per process: two trackers starting at once (several streams) must not interleave
# their save / redirect / restore, or the second "restores" the first's temporary file and the
# process's stderr is lost from then on.
_STDERR_REDIRECT_LOCK = threading.RLock()


@contextmanager
def _stderr_to_debug_log(enabled: bool) -> Iterator[None]:
    """Send fd 2 to a temporary file for the duration, then log its lines: at DEBUG level, or at
    WARNING level when the body failed (the native lines may say why; not on Ctrl-C). One
    redirect at a time in the process (trackers starting together wait for each other)."""
    if not enabled:
        yield
        return
    with _STDERR_REDIRECT_LOCK:
        with _fd2_to_log():
            yield


@contextmanager
def _fd2_to_log() -> Iterator[None]:
    if sys.stderr is not None:
        sys.stderr.flush()  # what Python buffered before belongs on the real stderr
    level = logging.DEBUG
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved_fd = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield
        except KeyboardInterrupt:  # a stop signal during start-up: the lines say nothing new
            raise
        except BaseException:
            level = logging.WARNING
            raise
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.log(level, "mediapipe: %s", line)


# One NormalizedLandmark {x, y, z} on the protobuf wire: tag 0x0a, length 15, then three
# (tag, little-endian float32) fields with tags 0x0d, 0x15, 0x1d. 17 bytes, no alignment.
_LANDMARK_WIRE = np.dtype([("tag", "u1"), ("length", "u1"), ("x_tag", "u1"), ("x", "<f4"),
                           ("y_tag", "u1"), ("y", "<f4"), ("z_tag", "u1"), ("z", "<f4")])
_WIRE_TAG_OFFSETS = np.array([0, 1, 2, 7, 12])  # byte offsets of tag, length, x_tag, y_tag, z_tag
_WIRE_TAGS = np.array([0x0A, 15, 0x0D, 0x15, 0x1D], dtype=np.uint8)


def landmarks_xy_normalised(landmark_list: Any) -> np.ndarray:
    """A MediaPipe NormalizedLandmarkList → (N, 2) float32 normalised (x, y).

    Reading 468 protobuf attributes one by one costs ~0.35 ms; reading the serialised message as
    a record array costs ~0.05 ms. The fast path is used only when every record has exactly the
    expected layout (proto3 omits a field that is exactly 0.0, and visibility/presence fields
    change the length); anything else takes the attribute path, so the result is the same.
    """
    points = landmark_list.landmark
    wire = landmark_list.SerializeToString()
    if len(wire) == len(points) * _LANDMARK_WIRE.itemsize:
        records = np.frombuffer(wire, dtype=_LANDMARK_WIRE)
        tags = records.view(np.uint8).reshape(-1, _LANDMARK_WIRE.itemsize)[:, _WIRE_TAG_OFFSETS]
        if np.array_equal(tags, np.broadcast_to(_WIRE_TAGS, tags.shape)):
            return np.stack([records["x"], records["y"]], axis=1)  # (N, 2) float32
    return np.array([(p.x, p.y) for p in points], dtype=np.float32)


def _demo_face_frame_bgr() -> np.ndarray | None:
    """The first frame of the demo clip shipped in streamav/data/demo, or None if unreadable."""
    try:
        import av

        demo_dir = resources.files("streamav.data") / "demo"
        clip = next(entry for entry in sorted(demo_dir.iterdir(), key=lambda e: e.name)
                    if entry.name.endswith((".flv", ".mp4")))
        with resources.as_file(clip) as path, av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="bgr24")
    except Exception as exc:  # a missing or unreadable demo clip only costs a log line
        log.debug("face warm-up without the demo clip: %s", exc)
        return None


def _warm_up(mesh: Any) -> None:
    """Open a FaceMesh graph's calculators now rather than on the first real frame, and leave
    its tracking state empty, as a fresh graph has it.

    The first face MediaPipe sees in a process makes it print a one-time warning, so a frame of
    the bundled demo clip goes through first (when it can be read); the graph is then reset and a
    blank frame opens the calculators of the new run.
    """
    face_bgr = _demo_face_frame_bgr()
    if face_bgr is not None:
        mesh.process(cv2.cvtColor(face_bgr, cv2.COLOR_BGR2RGB))
        mesh.reset()
    mesh.process(np.zeros((64, 64, 3), dtype=np.uint8))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class FaceFrontEnd:
    """Streaming face stage: `start()`, then `step(image_bgr)` per frame, `stop()` at the end.

    Not thread-safe: one worker thread owns an instance. Also a context manager (start/stop).
    """

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config if config is not None else FaceConfig()
        self._mesh: Any = None  # mediapipe.solutions.face_mesh.FaceMesh once started
        self._template_px = template_px(self.config.crop_size_px)
        self._template_fit = SimilarityTarget(self._template_px)
        self._border_mode = (cv2.BORDER_REPLICATE if self.config.border == "replicate"
                             else cv2.BORDER_CONSTANT)

    @property
    def started(self) -> bool:
        return self._mesh is not None

    def start(self) -> None:
        """Import MediaPipe, build the FaceMesh graph and warm it up. Idempotent."""
        if self._mesh is not None:
            return
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _stderr_to_debug_log(self.config.quiet_native_logs):
            try:
                from mediapipe.python.solutions import face_mesh
            except ImportError as exc:
                raise MissingDependencyError(
                    "the face front end needs MediaPipe 0.10.14..0.10.21 (the last releases that "
                    "ship the face models): pip install 'mediapipe>=0.10.14,<0.10.22'") from exc
            try:
                from absl import logging as absl_logging
                absl_logging.set_verbosity(absl_logging.ERROR)
            except ImportError:  # absl comes with mediapipe; nothing to quiet without it
                pass
            mesh = face_mesh.FaceMesh(
                static_image_mode=self.config.static_image_mode,
                max_num_faces=self.config.max_faces,
                refine_landmarks=self.config.refine_landmarks,
                min_detection_confidence=self.config.min_detection_confidence,
                min_tracking_confidence=self.config.min_tracking_confidence,
            )
            try:
                _warm_up(mesh)
            except BaseException:
                mesh.close()
                raise
            self._mesh = mesh

    def reset(self) -> None:
        """Forget the tracked face: the next frame runs the detector, as after `start()`."""
        if self._mesh is None:
            return
        with _stderr_to_debug_log(self.config.quiet_native_logs):
            self._mesh.reset()
            self._mesh.process(np.zeros((64, 64, 3), dtype=np.uint8))

    def stop(self) -> None:
        """Close the MediaPipe graph. Idempotent; `start()` may be called again afterwards."""
        if self._mesh is not None:
            mesh, self._mesh = self._mesh, None
            mesh.close()

    def __enter__(self) -> FaceFrontEnd:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def step(self, image_bgr: np.ndarray) -> FaceResult:
        """Find, track and align the face in one (H, W, 3) uint8 BGR frame.

        Returns `NOT_FOUND` (found=False) when there is no face; raises ValueError for an input
        that is not an (H, W, 3) uint8 array and RuntimeError before `start()`.
        """
        faces = self._faces(image_bgr, limit=1)
        return faces[0] if faces else NOT_FOUND

    def step_all(self, image_bgr: np.ndarray) -> list[FaceResult]:
        """Every face of the frame (at most `max_faces`), each aligned on its own five
        landmarks, in MediaPipe's order (which is not an identity: see
        streamav.frontend.face_tracks); an empty list when there is none."""
        return self._faces(image_bgr, limit=self.config.max_faces)

    def _faces(self, image_bgr: np.ndarray, limit: int) -> list[FaceResult]:
        check_image_bgr(image_bgr)
        if self._mesh is None:
            raise RuntimeError("FaceFrontEnd.step() called before start()")
        image_rgb = cv2.cvtColor(np.ascontiguousarray(image_bgr), cv2.COLOR_BGR2RGB)
        output = self._mesh.process(image_rgb)
        faces = output.multi_face_landmarks or ()
        height, width = image_rgb.shape[:2]
        return [self._aligned(image_rgb, self._mesh_px(face, width, height))  # (468, 2) each
                for face in list(faces)[:limit]]

    @staticmethod
    def _mesh_px(face_landmarks: Any, width: int, height: int) -> np.ndarray:
        """MediaPipe normalised landmarks → (468, 2) float32 source pixels (pixel centres)."""
        normalised = landmarks_xy_normalised(face_landmarks)[:N_MESH_POINTS]  # (468, 2)
        return (normalised.astype(np.float64) * (width, height) - 0.5).astype(np.float32)

    def _aligned(self, image_rgb: np.ndarray, mesh_xy: np.ndarray) -> FaceResult:
        height, width = image_rgb.shape[:2]
        landmarks_xy = five_points(mesh_xy)
        crop_from_source = self._template_fit.fit(landmarks_xy)
        scale = similarity_scale(crop_from_source)
        crop_rgb = warp_to_crop(image_rgb, crop_from_source, self.config.crop_size_px,
                                self._border_mode, scale)
        residual_px = apply_affine(crop_from_source, landmarks_xy) - self._template_px  # (5, 2)
        # the box in Python floats (the mesh's float32 values are exact in them): clipped to
        # the frame as np.clip would, without its per-call overhead
        (low_x, low_y), (high_x, high_y) = (mesh_xy.min(axis=0).tolist(),
                                            mesh_xy.max(axis=0).tolist())
        low_x, high_x = (float(min(max(v, 0.0), width - 1)) for v in (low_x, high_x))
        low_y, high_y = (float(min(max(v, 0.0), height - 1)) for v in (low_y, high_y))
        return FaceResult(
            found=True,
            box_xywh=(low_x, low_y, high_x - low_x, high_y - low_y),
            landmarks_xy=_read_only(landmarks_xy),
            crop_rgb=_read_only(crop_rgb),
            crop_from_source=_read_only(crop_from_source),
            scale=scale,
            roll_deg=float(np.degrees(np.arctan2(-crop_from_source[1, 0], crop_from_source[0, 0]))),
            alignment_rms_px=float(np.sqrt(np.mean(np.sum(residual_px**2, axis=1)))),
            mesh_xy=_read_only(mesh_xy),
        )
