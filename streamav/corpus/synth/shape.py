"""Face proportions: an identity's displacement of the mesh away from its source face.

Each parameter is a signed amount (0 = unchanged) in face-local units (inter-ocular distances)
or as a relative scale; `draw_shape` draws a set of them. The same offsets give a drawn face its
proportions (applied to the template before painting) and give a photographic identity new
proportions (applied as warp targets).
"""

from __future__ import annotations

import numpy as np

from streamav.corpus.synth import mesh_groups as g

SHAPE_SPREAD: dict[str, float] = {  # standard deviation of each parameter
    "face_width": 0.06,     # relative widening of the cheeks and temples
    "jaw_width": 0.07,      # relative widening of the lower face outline
    "chin_length": 0.07,    # units: the chin moves down
    "forehead": 0.06,       # units: the top of the face moves up
    "eye_spacing": 0.035,   # units: each eye moves out by half of it
    "eye_size": 0.07,       # relative size of the eye openings
    "nose_length": 0.04,    # units: the nose tip and wings move down
    "nose_width": 0.08,     # relative width of the nose wings
    "mouth_width": 0.06,    # relative width of the mouth
    "lip_fullness": 0.18,   # relative thickness of the lips
    "mouth_height": 0.03,   # units: the mouth moves down
    "brow_height": 0.035,   # units: the brows move up
}


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def draw_shape(rng: np.random.Generator, scale: float = 1.0) -> dict[str, float]:
    """Random proportions: each parameter ~ N(0, spread * scale), clipped to 2.2 spreads."""
    return {name: float(np.clip(rng.normal(0.0, sd * scale), -2.2 * sd, 2.2 * sd))
            for name, sd in SHAPE_SPREAD.items()}


def shape_offsets(rest: np.ndarray, shape: dict[str, float]) -> np.ndarray:
    """(N, 3) offsets for the 478-point face-local mesh `rest` (N >= 478; extra rows unmoved)."""
    u, v = rest[:, 0], rest[:, 1]
    side = np.sign(u)
    out = np.zeros_like(rest)
    k = shape.get
    out[:, 0] += k("face_width", 0.0) * u * _smoothstep(np.abs(u), 0.45, 1.0) * (
        1.0 - _smoothstep(v, 1.0, 1.6))
    out[:, 0] += k("jaw_width", 0.0) * u * _smoothstep(v, 0.7, 1.4) * _smoothstep(
        np.abs(u), 0.25, 0.8)
    out[:, 1] += k("chin_length", 0.0) * _smoothstep(v, 1.1, 1.75)
    out[:, 1] -= k("forehead", 0.0) * _smoothstep(-v, 0.3, 0.8)
    for centre_u in (-0.5, 0.5):
        near = np.exp(-((u - centre_u) ** 2 + (v + 0.05) ** 2) / (2 * 0.22 ** 2))
        out[:, 0] += k("eye_spacing", 0.0) * 0.5 * np.sign(centre_u) * near
        eye = np.exp(-((u - centre_u) ** 2 + v ** 2) / (2 * 0.12 ** 2))
        out[:, 0] += k("eye_size", 0.0) * (u - centre_u) * eye
        out[:, 1] += k("eye_size", 0.0) * v * eye
    nose = np.exp(-(u ** 2 / (2 * 0.3 ** 2) + (v - 0.68) ** 2 / (2 * 0.14 ** 2)))
    out[:, 1] += k("nose_length", 0.0) * nose
    alae = np.array(g.NOSE_ALAE)
    out[alae, 0] += k("nose_width", 0.0) * u[alae]
    mouth = np.exp(-(u ** 2 / (2 * 0.5 ** 2) + (v - 1.07) ** 2 / (2 * 0.15 ** 2)))
    out[:, 0] += k("mouth_width", 0.0) * u * mouth
    out[:, 1] += k("mouth_height", 0.0) * np.exp(-(u ** 2 / 0.5 + (v - 1.07) ** 2 / 0.08))
    for outer, inner in ((g.LIPS_OUTER_UPPER, g.LIPS_INNER_UPPER),
                         (g.LIPS_OUTER_LOWER, g.LIPS_INNER_LOWER)):
        o, i = np.array(outer[1:-1]), np.array(inner[1:-1])
        out[o, 1] += k("lip_fullness", 0.0) * (v[o] - v[i])
    brows = np.array(g.BROWS)
    out[brows, 1] -= k("brow_height", 0.0)
    del side
    return out
