"""Photographic identities: real face photographs, normalised, cut out and restyled.

Sources (each used only if present):
- `crema_d_1001`: a frame of CREMA-D actor 1001 shipped in data/photos (ODbL/DbCL, see
  data/photos/ATTRIBUTION.md);
- `astronaut`: scikit-image's astronaut image (Eileen Collins, NASA, public domain), if
  scikit-image is installed;
- `obama`: a frame of ../shared/data/talking-head/uncrop_Obama.mp4 (public domain), read at run
  time from the shared data folder (set STREAMAV_SHARED_DATA to move it); never copied;
- `grid_<clip>`: a frame of each GRID clip in ../shared/data/grid whose speaker is a training
  speaker (the three held out for the real-face denoising check are never used; one clip per
  speaker), CC BY 4.0, read at run time the same way (session 7: more real identities than the
  three above, issue #9 item 3 / #10 item 2).

A photo is turned into a portrait: mirrored or not, rotated and scaled so that the eyes land on
the layout's eye line, cut out from its background (chroma key on a green screen, else
MediaPipe's selfie segmentation), and restyled: skin tone moved in CIELAB toward a target tone
(colour transfer on skin-coloured pixels), hair and clothes recoloured. Its mesh is then found
again on the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from streamav.corpus.synth import mesh_groups as g
from streamav.errors import InputError
from streamav.frontend.face import LEFT_EYE_CONTOUR_IDX, RIGHT_EYE_CONTOUR_IDX, fit_similarity
from streamav.frontend.face import warp_to_crop

OBAMA_FRAME_INDEX = 393  # a frame with the mouth closed and the head frontal
GRID_FRAME_INDEX = 3  # the clips open on silence: mouth closed, head frontal
# GRID clips used as identities (one per training speaker; pwij3p is id2_vcd_swwp2s's speaker;
# lbax4n, lwbsza and swiz3n are held out for the real-face denoising check) and their genders
GRID_IDENTITIES: tuple[tuple[str, str], ...] = (
    ("bbaf2n", "male"), ("brbk7n", "female"), ("id2_vcd_swwp2s", "male"), ("lbbc2a", "female"),
    ("lrwp9a", "female"), ("sbia1a", "male"), ("sbwe5n", "male"))
GRID_LICENCE = "GRID corpus, CC BY 4.0 (Cooke et al. 2006), read from ../shared at run time"


@dataclass(frozen=True)
class PhotoSource:
    name: str
    gender: str
    licence: str


PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("crema_d_1001", "male", "CREMA-D, ODbL 1.0 / DbCL 1.0 (data/photos/ATTRIBUTION.md)"),
    PhotoSource("astronaut", "female", "scikit-image astronaut (NASA, public domain)"),
    PhotoSource("obama", "male", "uncrop_Obama.mp4 (US government work, public domain), "
                                 "read from ../shared at run time"),
    *(PhotoSource(f"grid_{clip}", gender, GRID_LICENCE) for clip, gender in GRID_IDENTITIES),
)


def shared_data_dir() -> Path:
    env = os.environ.get("STREAMAV_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def _video_frame(path: Path, frame_index: int) -> np.ndarray | None:
    """Frame `frame_index` of a video file as (H, W, 3) uint8 RGB, or None without the file."""
    if not path.exists():
        return None
    import av

    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == frame_index:
                return frame.to_ndarray(format="rgb24")
    return None


def load_photo(name: str) -> np.ndarray | None:
    """The source photo as (H, W, 3) uint8 RGB, or None if it is not available here."""
    if name == "crema_d_1001":
        data = resources.files("streamav.corpus.synth") / "data" / "photos"
        with resources.as_file(data / "crema_d_1001_neu_f000.png") as path:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if name == "astronaut":
        try:
            from skimage import data as skdata
        except ImportError:
            return None
        return np.ascontiguousarray(skdata.astronaut())
    if name == "obama":
        return _video_frame(shared_data_dir() / "talking-head" / "uncrop_Obama.mp4",
                            OBAMA_FRAME_INDEX)
    if name.startswith("grid_") and name[5:] in dict(GRID_IDENTITIES):
        return _video_frame(shared_data_dir() / "grid" / f"{name[5:]}.mpg", GRID_FRAME_INDEX)
    raise InputError(f"unknown photo source {name!r}")


def available_sources() -> list[PhotoSource]:
    """The photo sources this machine has (in `PHOTO_SOURCES` order)."""
    return [s for s in PHOTO_SOURCES if load_photo(s.name) is not None]


def eye_centres(mesh: np.ndarray) -> np.ndarray:
    """(2, 2): the subject's right then left eye centre (means of the 16 contour points)."""
    return np.stack([mesh[list(RIGHT_EYE_CONTOUR_IDX), :2].mean(0),
                     mesh[list(LEFT_EYE_CONTOUR_IDX), :2].mean(0)])


def normalise(image_rgb: np.ndarray, mesh: np.ndarray, size_px: int, origin_px: np.ndarray,
              eye_dist_px: float) -> np.ndarray:
    """Rotate and scale the photo so that its eyes sit on the layout's eye line."""
    target = np.stack([origin_px - [eye_dist_px / 2, 0.0], origin_px + [eye_dist_px / 2, 0.0]])
    matrix = fit_similarity(eye_centres(mesh), target)
    return warp_to_crop(image_rgb, matrix, size_px)


def green_screen_alpha(image_rgb: np.ndarray) -> np.ndarray | None:
    """Alpha from a chroma key when the image's border is mostly green; else None."""
    rgb = image_rgb.astype(np.float32)
    greenness = rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])
    border = np.concatenate([greenness[:4].ravel(), greenness[:, :4].ravel(),
                             greenness[:, -4:].ravel()])
    if np.mean(border > 25.0) < 0.8:
        return None
    alpha = np.clip(1.0 - (greenness - 10.0) / 30.0, 0.0, 1.0)
    return cv2.GaussianBlur(alpha, (3, 3), 0.8)


def despill(image_rgb: np.ndarray) -> np.ndarray:
    """Remove the green cast a green screen leaves on hair and edges."""
    rgb = image_rgb.astype(np.float32)
    limit = np.maximum(rgb[..., 0], rgb[..., 2]) * 1.02 + 4.0
    rgb[..., 1] = np.minimum(rgb[..., 1], limit)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def polygon_mask(shape: tuple[int, int], points: np.ndarray, blur_px: float = 0.0) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(points[:, :2] * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(mask, (0, 0), blur_px) if blur_px > 0 else mask


def feature_masks(shape: tuple[int, int], mesh: np.ndarray, eye_dist_px: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(face, features): the face oval and the eyes + brows + lips, feathered, 0..1 float32."""
    face = polygon_mask(shape, mesh[list(g.FACE_OVAL)], 0.05 * eye_dist_px)
    features = np.zeros(shape, np.float32)
    for contour in (g.loop(g.RIGHT_EYE_UPPER, g.RIGHT_EYE_LOWER),
                    g.loop(g.LEFT_EYE_UPPER, g.LEFT_EYE_LOWER),
                    g.loop(g.LIPS_OUTER_UPPER, g.LIPS_OUTER_LOWER),
                    g.RIGHT_BROW_UPPER + tuple(reversed(g.RIGHT_BROW_LOWER)),
                    g.LEFT_BROW_UPPER + tuple(reversed(g.LEFT_BROW_LOWER))):
        features = np.maximum(features, polygon_mask(shape, mesh[list(contour)]))
    grow = max(3, int(0.08 * eye_dist_px) | 1)
    features = cv2.dilate(features, np.ones((grow, grow), np.uint8))
    return face, cv2.GaussianBlur(features, (0, 0), 0.04 * eye_dist_px)


def _lab(image_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image_rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def restyle(image_rgb: np.ndarray, alpha: np.ndarray, mesh: np.ndarray, eye_dist_px: float,
            skin_shift_lab: tuple[float, float, float] | None,
            hair_lab: tuple[float, float, float] | None, clothes_hue_shift_deg: float
            ) -> np.ndarray:
    """Shift the skin by `skin_shift_lab` (CIELAB dL, da, db; L 0..100), move the hair toward
    `hair_lab`, and turn the clothes' hue; None leaves that part as it is. Skin shifts are kept
    moderate (about one step of a skin-tone scale): larger ones stop looking like skin."""
    shape = image_rgb.shape[:2]
    lab = _lab(image_rgb)
    face, features = feature_masks(shape, mesh, eye_dist_px)
    core = face * (1.0 - features) > 0.9
    skin_mean = lab[core].mean(axis=0)
    skin_sd = lab[core].std(axis=0) + 1e-3
    distance = np.sqrt(((lab[..., 1:] - skin_mean[1:]) ** 2).sum(-1)) / np.maximum(
        skin_sd[1:].mean() * 2.5, 4.0)
    brightness = np.abs(lab[..., 0] - skin_mean[0]) / max(3.0 * skin_sd[0], 15.0)
    skin_like = np.exp(-0.5 * (distance ** 2 + brightness ** 2)) * alpha
    skin = np.maximum(skin_like, face) * (1.0 - features * 0.85)
    skin = cv2.GaussianBlur(skin, (0, 0), 1.0)
    chin_y = float(mesh[g.CHIN, 1])
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    out = lab.copy()
    if skin_shift_lab is not None:
        shift = np.array(skin_shift_lab, np.float32)
        target_l = float(np.clip(skin_mean[0] + shift[0], 25.0, 85.0))
        shifted = lab.copy()
        shifted[..., 0] = (lab[..., 0] - skin_mean[0]) * (target_l / max(skin_mean[0], 1.0)) ** 0.5 \
            + target_l
        shifted[..., 1:] = lab[..., 1:] + shift[1:]
        out = out * (1.0 - skin[..., None]) + shifted * skin[..., None]
    hair = alpha * (1.0 - np.clip(skin_like * 1.5, 0, 1)) * (1.0 - face) * (
        rows < chin_y - 0.3 * eye_dist_px)
    hair = cv2.GaussianBlur(hair.astype(np.float32), (0, 0), 1.0)
    if hair_lab is not None and hair.sum() > 10.0:
        weight = hair > 0.5
        hair_mean = lab[weight].mean(axis=0) if weight.any() else skin_mean
        target = np.array(hair_lab, np.float32)
        shifted = lab.copy()
        shifted[..., 0] = (lab[..., 0] - hair_mean[0]) * 0.8 + target[0]
        shifted[..., 1:] = (lab[..., 1:] - hair_mean[1:]) * 0.5 + target[1:]
        out = out * (1.0 - hair[..., None]) + shifted * hair[..., None]
    rgb = _rgb(out)
    if clothes_hue_shift_deg:
        clothes = alpha * (1.0 - np.clip(skin_like * 1.5, 0, 1)) * (
            rows > chin_y + 0.25 * eye_dist_px)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + clothes_hue_shift_deg * 256.0 / 360.0) % 256.0
        turned = cv2.cvtColor(np.clip(hsv + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)
        c = cv2.GaussianBlur(clothes.astype(np.float32), (0, 0), 1.0)[..., None]
        rgb = np.clip(rgb * (1.0 - c) + turned * c + 0.5, 0, 255).astype(np.uint8)
    return rgb
