"""Rendering frames of a built identity: rig → head pose → warp → mouth → background.

Per frame: the rest mesh plus the weighted action fields, turned and shifted by the head pose
and projected; the portrait (premultiplied RGB + alpha) is warped piecewise-affinely from its
own control points to those; the open mouth is painted; the result goes over the speaker's
background, with a little sensor noise.
"""

from __future__ import annotations

import numpy as np

from streamav.corpus.synth.identities import FRAME_SIZE_PX, N_MESH, Identity
from streamav.corpus.synth.mouth import paint_mouth
from streamav.corpus.synth.pose import project, rotation
from streamav.corpus.synth.warp import TriangleWarp
from streamav.frontend.face import five_points

SENSOR_NOISE_SD = 1.5  # grey levels


class FrameRenderer:
    """Renders frames of one identity. Not thread-safe (reuses buffers)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.size = FRAME_SIZE_PX
        self.warp = TriangleWarp(identity.source_px, self.size, self.size)
        alpha = identity.portrait_alpha.astype(np.float32)
        premultiplied = identity.portrait_rgb.astype(np.float32) * alpha[..., None]
        self._rgba = np.concatenate([premultiplied, alpha[..., None]], axis=2)  # (H, W, 4)
        self._background = identity.background_rgb.astype(np.float32)
        self._moving = np.nonzero(identity.turns)[0]
        self._noise_bank: np.ndarray | None = None

    def _noise(self, rng: np.random.Generator) -> np.ndarray:
        """Sensor noise: one of a few noise fields drawn per renderer, at a random offset."""
        if self._noise_bank is None:
            self._noise_bank = rng.standard_normal((4, self.size, self.size), dtype=np.float32)
            self._noise_bank *= SENSOR_NOISE_SD
        index, dy, dx = rng.integers(0, (4, self.size, self.size))
        return np.roll(self._noise_bank[index], (int(dy), int(dx)), axis=(0, 1))

    def mesh(self, weights: np.ndarray, head_deg: np.ndarray, shift_units: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Control points for one frame: ((P, 2) pixels, (P,) depth, face-local units)."""
        ident = self.identity
        local = ident.rest_local.copy()
        local[:N_MESH] += np.tensordot(weights, ident.basis, axes=1)
        xy = local[:, :2].copy()
        depth = local[:, 2].copy()
        moved_xy, moved_depth = project(local[self._moving], rotation(*head_deg), shift_units)
        xy[self._moving] = moved_xy
        depth[self._moving] = moved_depth
        return ident.origin_px + xy * ident.eye_dist_px, depth

    def render(self, weights: np.ndarray, head_deg: np.ndarray, shift_units: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One frame: ((H, W, 3) uint8 RGB, (5, 2) float32 ground-truth landmarks in pixels)."""
        points_px, depth = self.mesh(weights, head_deg, shift_units)
        warped = self.warp.warp(self._rgba, points_px, depth)
        frame = self._background * (1.0 - warped[..., 3:4])
        frame += warped[..., :3]
        frame += self._noise(rng)[..., None]
        image = np.clip(frame + 0.5, 0.0, 255.0).astype(np.uint8)
        paint_mouth(image, points_px[:N_MESH], self.identity.eye_dist_px, self.identity.mouth)
        return image, five_points(points_px[:N_MESH])
