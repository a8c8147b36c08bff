"""Head pose: rotating face-local points in 3-D and projecting them into the image.

Conventions (degrees): `yaw` > 0 turns the face toward the image's right (the subject's left),
`pitch` > 0 lifts the chin (the face looks up), `roll` > 0 turns the head clockwise on screen (the
image-right eye goes down), as `FaceResult.roll_deg` measures it. The head turns about a pivot
behind the face at the top of the neck; the projection is weak-perspective with the camera
`CAMERA_DISTANCE_UNITS` in front of the eyes.

Besides the 478 mesh points, the warp needs control points around the face: a ring over the
skull and hair that turns with the head, and fixed anchors on the neck, the shoulders and the
image border so that the body and the background stay where they are (`extra_points`).
"""

from __future__ import annotations

import numpy as np

PIVOT_LOCAL = np.array([0.0, 0.75, -1.5])  # face-local units: behind the nose, at the neck's top
CAMERA_DISTANCE_UNITS = 12.0


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """(3, 3) rotation for face-local (x right, y down, z toward the camera) coordinates."""
    yaw, pitch, roll = np.radians([yaw_deg, pitch_deg, roll_deg])
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    # yaw about y: +yaw brings the nose (z > 0) toward +x.
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    # pitch about x: +pitch brings the nose (z > 0) toward -y (up).
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    # roll about z: +roll is clockwise on screen (y down), so +x goes toward +y.
    r_roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return r_roll @ r_yaw @ r_pitch


def project(points: np.ndarray, rot: np.ndarray, shift_units: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (N, 3) face-local points about the pivot, project: ((N, 2) local xy, (N,) depth)."""
    rel = points - PIVOT_LOCAL
    turned = rel @ rot.T + PIVOT_LOCAL
    if shift_units is not None:
        turned[:, :2] += shift_units
    scale = CAMERA_DISTANCE_UNITS / (CAMERA_DISTANCE_UNITS - turned[:, 2])
    scale0 = CAMERA_DISTANCE_UNITS / (CAMERA_DISTANCE_UNITS - 0.0)
    xy = turned[:, :2] * (scale / scale0)[:, None]
    return xy, turned[:, 2]


def extra_points(width_px: int, height_px: int, origin_px: np.ndarray, eye_dist_px: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Control points around the face: ((M, 3) face-local, (M,) bool: turns with the head).

    The skull ring turns with the head; neck, shoulder and image-border anchors are fixed.
    """
    angles = np.radians(np.arange(-20.0, 201.0, 20.0))
    ring = np.stack([1.45 * np.cos(angles), 0.35 - 2.15 * np.sin(angles),
                     np.full(len(angles), -0.8)], axis=1)
    ears = np.array([[-1.25, 0.55, -0.9], [1.25, 0.55, -0.9]])
    neck = np.array([[-0.75, 2.55, -1.0], [0.0, 2.6, -0.6], [0.75, 2.55, -1.0],
                     [-1.9, 2.9, -1.0], [1.9, 2.9, -1.0]])
    border_px = []
    for t in np.linspace(0.0, 1.0, 5):
        border_px += [(t * (width_px + 1) - 1, -1.0), (t * (width_px + 1) - 1, height_px),
                      (-1.0, t * (height_px + 1) - 1), (width_px, t * (height_px + 1) - 1)]
    border = np.unique(np.array(border_px), axis=0)
    border_local = np.concatenate([(border - origin_px) / eye_dist_px,
                                   np.full((len(border), 1), -3.0)], axis=1)
    points = np.concatenate([ring, ears, neck, border_local])
    turns = np.concatenate([np.ones(len(ring) + len(ears), bool),
                            np.zeros(len(neck) + len(border_local), bool)])
    return points, turns
