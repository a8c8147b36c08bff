"""The face rig: linear action units ("blendshapes") over the 478-point mesh.

Each action moves mesh points by a fixed displacement field, in face-local units (origin between
the eye centres, x toward the image's right, y down, z toward the camera, one unit = the
inter-ocular distance), scaled by the action's weight. The fields are built from an identity's
own rest mesh, so they follow its proportions. A frame's mesh is

    rest + sum_k weight_k * basis[k]

and head pose is applied afterwards (`pose.py`). The actions follow FACS action units where one
exists (AU number in the comment). Weights are nominally 0..1; `lid_up` may go negative (droop).
"""

from __future__ import annotations

import numpy as np

from streamav.corpus.synth import mesh_groups as g

ACTIONS: tuple[str, ...] = (
    "jaw_open",         # AU26/27: the jaw drops, the lower lip and chin follow
    "lips_round",       # AU18/22: lips pucker and narrow (rounded vowels)
    "smile_r",          # AU12 on the subject's right (image left)
    "smile_l",          # AU12 on the subject's left
    "frown",            # AU15: lip corners down
    "lip_stretch",      # AU20: lip corners pulled out sideways
    "lip_press",        # AU23/24: lips pressed thin
    "upper_lip_raise",  # AU10: upper lip up, showing the teeth
    "nose_wrinkle",     # AU9: nose wings up, inner brows down
    "chin_raise",       # AU17: chin and lower lip pushed up
    "brow_inner_up",    # AU1
    "brow_outer_up",    # AU2
    "brow_lower",       # AU4: brows down and together
    "lid_up",           # AU5: upper lids raised (negative: drooping lids)
    "lid_tight",        # AU7: lids tightened
    "cheek_raise",      # AU6: cheeks up, lower lids pushed up
    "blink_r",          # AU45, subject's right eye
    "blink_l",          # AU45, subject's left eye
    "gaze_x",           # irises toward the image's right (+1) or left (-1)
    "gaze_y",           # irises down (+1) or up (-1); the upper lids follow
)
ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}
N_MESH = 478

JAW_OPEN_UNITS = 0.40  # lower-lip drop at jaw_open = 1, in inter-ocular distances


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def spread(xy: np.ndarray, idx: np.ndarray, disp: np.ndarray, sigma: float,
            mask: np.ndarray | None = None) -> np.ndarray:
    """Displacement of every point from handles `idx` moved by `disp` (H, 2): a Gaussian-weighted
    average of the handles' displacements that fades out away from them; handles move exactly."""
    d2 = ((xy[:, None, :] - xy[None, idx, :]) ** 2).sum(-1)  # (N, H)
    w = np.exp(-d2 / (2.0 * sigma * sigma))
    out = (w @ disp) / np.maximum(w.sum(axis=1, keepdims=True), 1.0)  # (N, 2)
    if mask is not None:
        out *= mask[:, None]
    out[idx] = disp
    return out


def _bell(n: int) -> np.ndarray:
    """0 at both ends of an n-point contour, 1 in the middle."""
    return np.sin(np.pi * np.linspace(0.0, 1.0, n))


def _interp_lower_lid(xy: np.ndarray, upper: tuple[int, ...], lower: tuple[int, ...]
                      ) -> np.ndarray:
    """y of the lower lid at each upper-lid point's x (the lid contours share end points)."""
    low = xy[list(lower)]
    order = np.argsort(low[:, 0])
    return np.interp(xy[list(upper), 0], low[order, 0], low[order, 1])


def build_basis(rest: np.ndarray) -> np.ndarray:
    """(A, 478, 3) displacement fields for the rest mesh `rest` (478, 3), face-local units."""
    xy = rest[:N_MESH, :2]
    u, v = xy[:, 0], xy[:, 1]
    side = np.sign(u)
    n = N_MESH
    basis = np.zeros((len(ACTIONS), n, 3))
    lips = np.array(g.LIPS)
    corners = np.array(g.MOUTH_CORNERS)
    mouth_y = float(xy[list(g.LIPS_INNER_UPPER + g.LIPS_INNER_LOWER), 1].mean())
    mouth_half_w = float(abs(xy[61, 0] - xy[291, 0]) / 2.0)
    brows = np.array(g.BROWS)
    above_eyes = _smoothstep(-v, 0.10, 0.22)  # 1 above the upper lids, 0 at and below them

    def put(name: str, field_xy: np.ndarray, field_z: np.ndarray | None = None) -> None:
        basis[ACTION_INDEX[name], :, :2] = field_xy
        if field_z is not None:
            basis[ACTION_INDEX[name], :, 2] = field_z

    # jaw_open: everything below the mouth line drops, less toward the jaw angles.
    lateral = np.clip(1.0 - (np.abs(u) - 0.35) / 0.9, 0.3, 1.0)
    field = np.zeros((n, 2))
    field[:, 1] = _smoothstep(v, mouth_y + 0.02, mouth_y + 0.16) * lateral * 0.9
    lower = np.array(g.LOWER_LIP)
    field[lower, 1] = 1.0 - 0.35 * np.clip(u[lower] / mouth_half_w, -1, 1) ** 2
    upper = np.array(g.UPPER_LIP)
    field[upper, 1] = -0.05 * (1.0 - np.clip(u[upper] / mouth_half_w, -1, 1) ** 2)
    field[corners, 1] = 0.4
    field[corners, 0] = -0.05 * side[corners]
    put("jaw_open", field * JAW_OPEN_UNITS)

    below_nose = _smoothstep(v, 0.76, 0.86)
    # lips_round: lips narrow toward the midline and push forward.
    disp = np.zeros((len(lips), 2))
    disp[:, 0] = -0.30 * u[lips]
    outer_up = np.isin(lips, g.LIPS_OUTER_UPPER[1:-1])
    outer_lo = np.isin(lips, g.LIPS_OUTER_LOWER[1:-1])
    disp[outer_up, 1] -= 0.02
    disp[outer_lo, 1] += 0.03
    z = np.zeros(n)
    z[lips] = 0.08
    put("lips_round", spread(xy, lips, disp, 0.14, below_nose), z)

    # smiles: one corner up and out, the lips on that side following on a parabola (so the
    # mouth line curves into a U rather than a V); that side's cheek follows.
    for name, s in (("smile_r", -1.0), ("smile_l", 1.0)):
        t = np.clip(u[lips] * s / mouth_half_w, 0.0, 1.0) ** 2
        disp = np.stack([0.085 * s * t, -0.13 * t], axis=1)
        mask = below_nose * _smoothstep(u * s, -0.15, 0.2)
        put(name, spread(xy, lips, disp, 0.2, mask))

    # frown: corners down.
    disp = np.stack([-0.015 * side[corners], np.full(len(corners), 0.10)], axis=1)
    put("frown", spread(xy, corners, disp, 0.2, _smoothstep(v, 0.8, 0.9)))

    # lip_stretch: corners out sideways, a little down.
    disp = np.stack([0.10 * side[corners], np.full(len(corners), 0.03)], axis=1)
    put("lip_stretch", spread(xy, corners, disp, 0.22, below_nose))

    # lip_press: the outer lip lines move toward the lip seam, corners slightly in.
    idx, disp_list = [], []
    for outer, inner, sign in ((g.LIPS_OUTER_UPPER, g.LIPS_INNER_UPPER, 1.0),
                               (g.LIPS_OUTER_LOWER, g.LIPS_INNER_LOWER, -1.0)):
        for o, i in zip(outer[1:-1], inner[1:-1]):
            idx.append(o)
            disp_list.append([0.0, 0.5 * abs(xy[i, 1] - xy[o, 1]) * sign])
    for c in (61, 291):
        idx.append(c)
        disp_list.append([-0.03 * side[c], 0.0])
    put("lip_press", spread(xy, np.array(idx), np.array(disp_list), 0.08, below_nose))

    # upper_lip_raise: the whole upper lip and the nose wings go up; the lip seam opens.
    alae = np.array(g.NOSE_ALAE)
    idx = np.concatenate([upper, alae])
    disp = np.zeros((len(idx), 2))
    disp[: len(upper), 1] = -0.085
    disp[len(upper):, 1] = -0.03
    mask = _smoothstep(v, 0.45, 0.6)
    put("upper_lip_raise", spread(xy, idx, disp, 0.12, mask))

    # nose_wrinkle: nose wings up, inner brows and glabella down, lower lids up.
    inner_brow = brows[np.abs(u[brows]) < 0.5]
    lower_lids = np.array(g.RIGHT_EYE_LOWER[1:-1] + g.LEFT_EYE_LOWER[1:-1])
    idx = np.concatenate([alae, inner_brow, lower_lids, [9, 8, 168]])
    disp = np.zeros((len(idx), 2))
    disp[: len(alae), 1] = -0.05
    disp[len(alae): len(alae) + len(inner_brow), 1] = 0.05
    disp[len(alae) + len(inner_brow): -3, 1] = -0.02
    disp[-3:, 1] = 0.03
    put("nose_wrinkle", spread(xy, idx, disp, 0.1, _smoothstep(v, -0.45, -0.35)))

    # chin_raise: chin and lower lip up.
    field = np.zeros((n, 2))
    field[:, 1] = -0.05 * _smoothstep(v, mouth_y + 0.05, mouth_y + 0.45)
    field[lower, 1] = -0.04
    put("chin_raise", field)

    # brows: AU1 lifts the inner ends, AU2 the outer ends, AU4 lowers and knits them; the
    # forehead above follows, the lids below barely.
    innerness = np.clip((0.95 - np.abs(u[brows])) / 0.7, 0.0, 1.0)
    for name, weight in (("brow_inner_up", innerness ** 1.2), ("brow_outer_up", 1.0 - innerness)):
        disp = np.stack([np.zeros(len(brows)), -0.15 * weight], axis=1)
        put(name, spread(xy, brows, disp, 0.22, above_eyes))
    disp = np.stack([-0.07 * side[brows] * innerness, np.full(len(brows), 0.09)], axis=1)
    put("brow_lower", spread(xy, brows, disp, 0.18, above_eyes))

    # lids: AU5 lifts the upper lids, AU7 tightens both, AU6 lifts the cheeks and lower lids.
    upper_lids = [np.array(c[1:-1]) for c in g.EYE_UPPER]
    lower_lid_sets = [np.array(c[1:-1]) for c in g.EYE_LOWER]
    bell = _bell(9)[1:-1]
    above_lid = _smoothstep(-v, 0.02, 0.08) * (1.0 - _smoothstep(-v, 0.16, 0.24))
    idx = np.concatenate(upper_lids)
    disp = np.stack([np.zeros(len(idx)), -0.06 * np.tile(bell, 2)], axis=1)
    put("lid_up", spread(xy, idx, disp, 0.07, above_lid))
    idx = np.concatenate(upper_lids + lower_lid_sets)
    disp = np.zeros((len(idx), 2))
    disp[:14, 1] = 0.02 * np.tile(bell, 2)
    disp[14:, 1] = -0.04 * np.tile(bell, 2)
    put("lid_tight", spread(xy, idx, disp, 0.06, (np.abs(v) < 0.3).astype(float)))
    cheek = np.exp(-((np.abs(u) - 0.62) ** 2 + (v - 0.5) ** 2) / (2 * 0.2 ** 2))
    field = np.zeros((n, 2))
    field[:, 1] = -0.06 * cheek * _smoothstep(v, 0.08, 0.2)
    field[np.concatenate(lower_lid_sets), 1] = -0.035 * np.tile(bell, 2)
    put("cheek_raise", field)

    # blinks: the upper lid (and what lies between the lids) comes down onto the lower lid.
    for name, up_c, low_c, iris in (("blink_r", g.RIGHT_EYE_UPPER, g.RIGHT_EYE_LOWER,
                                     g.RIGHT_IRIS),
                                    ("blink_l", g.LEFT_EYE_UPPER, g.LEFT_EYE_LOWER,
                                     g.LEFT_IRIS)):
        moving = np.array(up_c[1:-1] + iris)
        y_low = _interp_lower_lid(xy, tuple(moving), low_c)
        disp = np.stack([np.zeros(len(moving)), 0.92 * (y_low - xy[moving, 1])], axis=1)
        low = np.array(low_c[1:-1])
        disp_low = np.stack([np.zeros(len(low)), -0.01 * _bell(9)[1:-1]], axis=1)
        idx = np.concatenate([moving, low])
        eye_u = float(xy[moving, 0].mean())
        near = (np.abs(u - eye_u) < 0.4) & (v < 0.04)
        mask = above_lid * near
        field = spread(xy, idx, np.concatenate([disp, disp_low]), 0.06, mask * 0.7)
        put(name, field)

    # gaze: the irises move within the eye; the upper lids follow a downward look.
    irises = np.array(g.RIGHT_IRIS + g.LEFT_IRIS)
    field = np.zeros((n, 2))
    field[irises, 0] = 0.085
    put("gaze_x", field)
    field = np.zeros((n, 2))
    field[irises, 1] = 0.04
    field[np.concatenate(upper_lids), 1] = 0.03 * np.tile(bell, 2)
    put("gaze_y", field)
    return basis


def action_weights(**weights: float) -> np.ndarray:
    """A weight vector (len(ACTIONS),) from keyword arguments (unknown names raise KeyError)."""
    out = np.zeros(len(ACTIONS))
    for name, value in weights.items():
        out[ACTION_INDEX[name]] = value
    return out
