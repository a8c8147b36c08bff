"""The inside of an open mouth: dark cavity, upper and lower teeth, tongue.

The warp only stretches the lips' own pixels; where the inner lip contour opens, this paints
what a camera would see through it, anti-aliased, on a small region around the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamav.corpus.synth import mesh_groups as g

_SHIFT = 3  # sub-pixel bits for the polygons
_INNER_LOOP = np.array(g.loop(g.LIPS_INNER_UPPER, g.LIPS_INNER_LOWER))
_UPPER_MID = np.array(g.LIPS_INNER_UPPER[1:-1])
_LOWER_MID = np.array(g.LIPS_INNER_LOWER[1:-1])


@dataclass(frozen=True)
class MouthLook:
    """Colours (RGB 0..255) of one identity's mouth."""

    cavity_rgb: tuple[float, float, float] = (58.0, 18.0, 24.0)
    teeth_rgb: tuple[float, float, float] = (214.0, 204.0, 184.0)
    tongue_rgb: tuple[float, float, float] = (168.0, 72.0, 78.0)


def _poly(points: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return np.round((points - offset) * (1 << _SHIFT)).astype(np.int32)


def paint_mouth(image_rgb: np.ndarray, mesh_xy: np.ndarray, eye_dist_px: float,
                look: MouthLook) -> None:
    """Paint the mouth interior in place where the inner lip contour of `mesh_xy` is open."""
    gap = float(np.max(mesh_xy[_LOWER_MID, 1] - mesh_xy[_UPPER_MID, 1]))
    if gap < 0.35:
        return
    loop = mesh_xy[_INNER_LOOP]
    height, width = image_rgb.shape[:2]
    x0 = max(int(np.floor(loop[:, 0].min())) - 2, 0)
    y0 = max(int(np.floor(loop[:, 1].min())) - 2, 0)
    x1 = min(int(np.ceil(loop[:, 0].max())) + 3, width)
    y1 = min(int(np.ceil(loop[:, 1].max())) + 3, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    offset = np.array([x0, y0], dtype=np.float64)
    roi_h, roi_w = y1 - y0, x1 - x0
    mask = np.zeros((roi_h, roi_w), np.float32)
    cv2.fillPoly(mask, [_poly(loop, offset)], 1.0, lineType=cv2.LINE_AA, shift=_SHIFT)

    # Cavity: darker toward the back (the middle of the opening).
    inner = np.empty((roi_h, roi_w, 3), np.float32)
    inner[:] = look.cavity_rgb
    yy = (np.arange(roi_h, dtype=np.float32)[:, None] + y0 - loop[:, 1].mean()) / max(gap, 1.0)
    inner *= (0.75 + 0.5 * np.abs(yy))[..., None].clip(0.0, 1.2)

    # Tongue: low in the mouth, seen once the jaw is well open.
    if gap > 0.12 * eye_dist_px:
        centre = (mesh_xy[_LOWER_MID].mean(axis=0) - offset - [0.0, 0.18 * gap])
        axes = (0.55 * abs(mesh_xy[308, 0] - mesh_xy[78, 0]) / 2.0, 0.35 * gap)
        tongue = np.zeros((roi_h, roi_w), np.float32)
        box = ((float(centre[0]), float(centre[1])), (float(2 * axes[0]), float(2 * axes[1])), 0.0)
        cv2.ellipse(tongue, box, 1.0, -1, cv2.LINE_AA)
        inner += tongue[..., None] * (np.array(look.tongue_rgb, np.float32) - inner) * 0.85

    # Upper teeth hang from the upper lip; lower teeth show above the lower lip when wide open.
    teeth = np.zeros((roi_h, roi_w), np.float32)
    upper = mesh_xy[_UPPER_MID]
    drop = min(0.1 * eye_dist_px, 0.5 * gap)
    band = np.concatenate([upper, upper[::-1] + [0.0, drop]])
    cv2.fillPoly(teeth, [_poly(band, offset)], 1.0, lineType=cv2.LINE_AA, shift=_SHIFT)
    if gap > 0.2 * eye_dist_px:
        lower = mesh_xy[_LOWER_MID]
        rise = 0.05 * eye_dist_px
        band = np.concatenate([lower, lower[::-1] - [0.0, rise]])
        cv2.fillPoly(teeth, [_poly(band, offset)], 0.7, lineType=cv2.LINE_AA, shift=_SHIFT)
    # Teeth darken toward the mouth corners (they recede into the cheeks).
    xx = (np.arange(roi_w, dtype=np.float32)[None, :] + x0 - loop[:, 0].mean())
    half = max(abs(mesh_xy[308, 0] - mesh_xy[78, 0]) / 2.0, 1.0)
    shade = np.clip(1.0 - 0.7 * (xx / half) ** 2, 0.25, 1.0)
    teeth_rgb = np.array(look.teeth_rgb, np.float32) * shade[..., None]
    inner += teeth[..., None] * (teeth_rgb - inner)

    # The lips shade the inside near their edges.
    inside = cv2.GaussianBlur(mask, (0, 0), max(0.04 * eye_dist_px, 0.8))
    inner *= (0.55 + 0.45 * np.clip(inside * 1.6 - 0.3, 0.0, 1.0))[..., None]
    mask = cv2.GaussianBlur(mask, (3, 3), 0.6)
    roi = image_rgb[y0:y1, x0:x1].astype(np.float32)
    roi += mask[..., None] * (inner - roi)
    image_rgb[y0:y1, x0:x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
