"""Piecewise-affine image warp over a Delaunay triangulation of control points (cv2.remap).

The triangulation is made once on the source points; each frame gives new target positions.
For every target triangle the affine map back to its source triangle is solved, the triangles
are rasterised into a label image far-to-near (so that a nearer triangle hides one it folds
over when the head turns), and each pixel's source position is its triangle's affine map of the
pixel. Everything is deterministic (no threads, stable sorts).
"""

from __future__ import annotations

import cv2
import numpy as np

_SUBPIXEL_BITS = 4


def delaunay(points_xy: np.ndarray) -> np.ndarray:
    """(T, 3) int32 vertex indices of the Delaunay triangles of distinct (P, 2) points."""
    low = points_xy.min(axis=0) - 2.0
    high = points_xy.max(axis=0) + 2.0
    subdiv = cv2.Subdiv2D((int(np.floor(low[0])), int(np.floor(low[1])),
                           int(np.ceil(high[0] - low[0])) + 1, int(np.ceil(high[1] - low[1])) + 1))
    pts32 = points_xy.astype(np.float32)
    index: dict[tuple[float, float], int] = {}
    for i, (x, y) in enumerate(pts32):
        key = (float(x), float(y))
        if key in index:
            raise ValueError(f"delaunay: points {index[key]} and {i} coincide")
        index[key] = i
        subdiv.insert((float(x), float(y)))
    triangles = []
    for tri in subdiv.getTriangleList().reshape(-1, 3, 2):
        keys = [(float(np.float32(x)), float(np.float32(y))) for x, y in tri]
        if all(k in index for k in keys):
            triangles.append([index[k] for k in keys])
    return np.array(sorted(triangles), dtype=np.int32)


def _affines(dst: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle, the affine map (T, 2, 3) taking the dst vertices (T, 3, 2) onto the src
    vertices, in closed form; `ok` (T,) is False for degenerate (zero-area) dst triangles."""
    e = np.stack([dst[:, 1] - dst[:, 0], dst[:, 2] - dst[:, 0]], axis=2)  # (T, 2, 2) columns
    f = np.stack([src[:, 1] - src[:, 0], src[:, 2] - src[:, 0]], axis=2)
    det = e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]
    ok = np.abs(det) > 1e-6
    safe = np.where(ok, det, 1.0)
    inv = np.empty_like(e)
    inv[:, 0, 0] = e[:, 1, 1] / safe
    inv[:, 0, 1] = -e[:, 0, 1] / safe
    inv[:, 1, 0] = -e[:, 1, 0] / safe
    inv[:, 1, 1] = e[:, 0, 0] / safe
    linear = f @ inv  # (T, 2, 2)
    shift = src[:, 0] - np.einsum("tij,tj->ti", linear, dst[:, 0])
    return np.concatenate([linear, shift[:, :, None]], axis=2), ok


class TriangleWarp:
    """Warp images made on `source_xy` (P, 2) so that those points land on per-frame targets."""

    def __init__(self, source_xy: np.ndarray, width_px: int, height_px: int,
                 triangles: np.ndarray | None = None) -> None:
        self.source_xy = np.asarray(source_xy, dtype=np.float64)
        self.width_px, self.height_px = width_px, height_px
        self.triangles = delaunay(self.source_xy) if triangles is None else triangles
        grid_y, grid_x = np.mgrid[0:height_px, 0:width_px]
        self._grid_x = grid_x.astype(np.float32)
        self._grid_y = grid_y.astype(np.float32)
        self._labels = np.empty((height_px, width_px), dtype=np.int32)
        self._src_tri = self.source_xy[self.triangles]  # (T, 3, 2)

    def maps(self, target_xy: np.ndarray, depth: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) float32 (H, W) for cv2.remap: each target pixel's source position."""
        tri = self.triangles
        dst = target_xy[tri]  # (T, 3, 2)
        affine, ok = _affines(dst, self._src_tri)  # (T, 2, 3): target pixel → source pixel
        order = np.arange(len(tri)) if depth is None else np.argsort(
            depth[tri].mean(axis=1), kind="stable")
        labels = self._labels
        labels.fill(0)  # 0: no triangle (identity map); triangle t is drawn as t + 1
        drawn = order[ok[order]]
        fixed = np.round(dst[drawn] * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        for poly, label in zip(fixed, (drawn + 1).tolist()):
            cv2.fillConvexPoly(labels, poly, label, cv2.LINE_8, _SUBPIXEL_BITS)
        table = np.empty((len(tri) + 1, 6), np.float32)
        table[0] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        table[1:] = affine.reshape(len(tri), 6)
        a = table[labels]  # (H, W, 6)
        gx, gy = self._grid_x, self._grid_y
        map_x = a[..., 0] * gx + a[..., 1] * gy + a[..., 2]
        map_y = a[..., 3] * gx + a[..., 4] * gy + a[..., 5]
        return map_x, map_y

    def warp(self, image: np.ndarray, target_xy: np.ndarray, depth: np.ndarray | None = None,
             ) -> np.ndarray:
        map_x, map_y = self.maps(target_xy, depth)
        return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
