"""Drawn identities: a face painted procedurally on a mesh, then animated like a photograph.

The painting follows the identity's rest mesh (the template deformed by its proportions), so
every feature sits where its FaceMesh points are: skin over the face oval and a skull, shaded
with Lambert lighting from the mesh's own 3-D normals (so the nose, cheekbones, eye sockets and
chin read as forms, which the face detector needs); eyes with sclera, iris, pupil, catch light,
lash line and crease; brows; nostrils; lips with a seam; ears, neck, shirt; and one of several
hair styles with strand texture. Colours come from realistic skin, hair and eye palettes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from streamav.corpus.synth import mesh_groups as g
from streamav.corpus.synth.warp import delaunay

HAIR_STYLES: tuple[str, ...] = ("short", "long", "bob", "fringe", "curly", "buzz", "bald")

# Skin tones (sRGB) from light to deep, roughly Fitzpatrick I..VI, and natural hair colours.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (241, 210, 190), (232, 190, 160), (219, 172, 138), (198, 145, 108), (176, 122, 88),
    (150, 100, 70), (118, 78, 54), (92, 60, 42))
HAIR_COLOURS: tuple[tuple[int, int, int], ...] = (
    (35, 28, 24), (60, 42, 30), (95, 65, 40), (140, 100, 60), (190, 150, 95), (150, 70, 35),
    (120, 115, 110), (200, 195, 185))
IRIS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (70, 45, 30), (100, 70, 40), (60, 90, 120), (80, 110, 80), (110, 100, 70), (45, 35, 30))
SHIRT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (40, 60, 110), (150, 40, 45), (60, 60, 65), (210, 210, 205), (50, 100, 70), (120, 90, 150),
    (200, 160, 60), (30, 30, 35))

_SHIFT = 4
_FACE_MESH = 468


@dataclass(frozen=True)
class DrawnLook:
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    iris_rgb: tuple[int, int, int]
    shirt_rgb: tuple[int, int, int]
    hair_style: str
    light_dir: tuple[float, float, float]  # toward the light, face-local (x right, y down, z out)
    blush: float
    stubble: float
    brow_thickness: float
    lip_redness: float


def draw_look(rng: np.random.Generator, gender: str) -> DrawnLook:
    styles = ("short", "buzz", "bald", "curly", "short") if gender == "male" else (
        "long", "bob", "fringe", "curly", "long")
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.7, -0.2), 1.0])
    light /= np.linalg.norm(light)
    return DrawnLook(
        skin_rgb=tuple(int(c) for c in SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]),
        hair_rgb=tuple(int(c) for c in HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]),
        iris_rgb=tuple(int(c) for c in IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))]),
        shirt_rgb=tuple(int(c) for c in SHIRT_COLOURS[int(rng.integers(len(SHIRT_COLOURS)))]),
        hair_style=str(styles[int(rng.integers(len(styles)))]),
        light_dir=tuple(float(x) for x in light),
        blush=float(rng.uniform(0.0, 0.5 if gender == "female" else 0.25)),
        stubble=float(rng.uniform(0.0, 0.5)) if gender == "male" else 0.0,
        brow_thickness=float(rng.uniform(0.8, 1.4) * (1.15 if gender == "male" else 0.9)),
        lip_redness=float(rng.uniform(0.3, 1.0 if gender == "female" else 0.6)),
    )


class _Canvas:
    """Float RGB + alpha canvas with anti-aliased, feathered layers."""

    def __init__(self, height: int, width: int, origin: np.ndarray, unit_px: float) -> None:
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)
        self.shape = (height, width)
        self.origin, self.unit = origin, unit_px
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        self.u = (cols - origin[0]) / unit_px  # face-local coordinates of every pixel
        self.v = (rows - origin[1]) / unit_px

    def px(self, local_xy: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(local_xy, np.float64) * self.unit

    def poly_mask(self, points_px: np.ndarray, feather: float = 0.0) -> np.ndarray:
        mask = np.zeros(self.shape, np.float32)
        pts = np.round(np.asarray(points_px)[:, :2] * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA, _SHIFT)
        return cv2.GaussianBlur(mask, (0, 0), feather) if feather > 0 else mask

    def ellipse_mask(self, centre_px: np.ndarray, axes_px: tuple[float, float], angle_deg: float
                     = 0.0, feather: float = 0.0) -> np.ndarray:
        mask = np.zeros(self.shape, np.float32)
        box = ((float(centre_px[0]), float(centre_px[1])),
               (float(2 * axes_px[0]), float(2 * axes_px[1])), float(angle_deg))
        cv2.ellipse(mask, box, 1.0, -1, cv2.LINE_AA)
        return cv2.GaussianBlur(mask, (0, 0), feather) if feather > 0 else mask

    def line_mask(self, points_px: np.ndarray, thickness_px: float, feather: float = 0.0
                  ) -> np.ndarray:
        scale = 4
        big = np.zeros((self.shape[0] * scale, self.shape[1] * scale), np.uint8)
        pts = np.round((np.asarray(points_px)[:, :2] + 0.5) * scale - 0.5).astype(np.int32)
        cv2.polylines(big, [pts], False, 255, max(1, int(round(thickness_px * scale))),
                      cv2.LINE_AA)
        mask = cv2.resize(big, (self.shape[1], self.shape[0]),
                          interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        return cv2.GaussianBlur(mask, (0, 0), feather) if feather > 0 else mask

    def paint(self, mask: np.ndarray, colour: np.ndarray | tuple, opacity: float = 1.0,
              covers: bool = True) -> None:
        m = np.clip(mask * opacity, 0.0, 1.0)
        colour = np.asarray(colour, np.float32)
        self.rgb += m[..., None] * (colour - self.rgb)
        if covers:
            self.alpha = self.alpha + m * (1.0 - self.alpha)


def _strands(rng: np.random.Generator, shape: tuple[int, int], unit: float, curly: bool
             ) -> np.ndarray:
    noise = rng.standard_normal(shape).astype(np.float32)
    if curly:
        tex = cv2.GaussianBlur(noise, (0, 0), 0.05 * unit)
    else:
        tex = cv2.GaussianBlur(noise, (0, 0), sigmaX=0.012 * unit, sigmaY=0.12 * unit)
    return tex / (float(tex.std()) + 1e-6)


def _mesh_shading(canvas: _Canvas, mesh_px: np.ndarray, light: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Lambert shading (0..1) of the face mesh, flat per triangle, and its coverage mask."""
    pts = mesh_px[:_FACE_MESH]
    tri = delaunay(pts[:, :2])
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    # pixel coordinates have y down and z toward the camera: a right-handed frame is (x, y, -z)
    normal = np.cross(b - a, c - a)  # (T, 3) in (x right, y down, z toward the camera)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    normal *= np.where(normal[:, 2] > 0, 1.0, -1.0)[:, None]  # every normal faces the camera
    lambert = np.clip(normal @ light, 0.0, 1.0)
    shade = np.zeros(canvas.shape, np.float32)
    cover = np.zeros(canvas.shape, np.float32)
    for t, value in zip(tri, lambert):
        poly = np.round(pts[t, :2] * (1 << _SHIFT)).astype(np.int32)
        cv2.fillConvexPoly(shade, poly, float(value), cv2.LINE_8, _SHIFT)
        cv2.fillConvexPoly(cover, poly, 1.0, cv2.LINE_8, _SHIFT)
    return shade, cover


def paint_portrait(rest_px: np.ndarray, look: DrawnLook, size_px: int, origin_px: np.ndarray,
                   eye_dist_px: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a drawn identity on its rest mesh: ((H, W, 3) uint8 RGB, (H, W) float32 alpha)."""
    cv = _Canvas(size_px, size_px, origin_px, eye_dist_px)
    unit = eye_dist_px
    mesh = rest_px
    L = np.array(look.light_dir)
    skin = np.array(look.skin_rgb, np.float32)
    hair = np.array(look.hair_rgb, np.float32)
    oval = mesh[list(g.FACE_OVAL), :2]
    top_y = float((mesh[10, 1] - origin_px[1]) / unit)
    chin_v = float((mesh[g.CHIN, 1] - origin_px[1]) / unit)
    half_w = float((mesh[454, 0] - mesh[234, 0]) / 2 / unit)
    cranium_c = np.array([0.0, top_y + 0.55])
    cranium_r = (half_w * 1.02, 1.05 - 0.05 + abs(top_y) * 0.55)
    strands = _strands(rng, cv.shape, unit, look.hair_style == "curly")
    hair_tex = hair[None, None, :] * (0.78 + 0.22 * np.clip(strands, -2.5, 2.5))[..., None]
    hair_tex *= (1.0 + 0.25 * np.exp(-((cv.v - (top_y - 0.55)) ** 2) / 0.08))[..., None]

    # Hair behind the head.
    if look.hair_style in ("long", "bob", "curly"):
        bottom = {"long": 2.7, "bob": 1.55, "curly": 1.3}[look.hair_style]
        width = {"long": 1.42, "bob": 1.38, "curly": 1.6}[look.hair_style]
        back = cv.ellipse_mask(cv.px(cranium_c - [0.0, 0.05]), (width * unit,
                               (cranium_r[1] + 0.25) * unit), 0, 0.6)
        body = cv.poly_mask(cv.px([[-width, cranium_c[1]], [width, cranium_c[1]],
                                   [width * 0.98, bottom], [-width * 0.98, bottom]]), 0.8)
        cv.paint(np.maximum(back, body), hair_tex * 0.8)

    # Shirt, neck, ears.
    shirt_y = chin_v + 0.6
    shirt = cv.poly_mask(cv.px([[-0.6, shirt_y - 0.15], [0.6, shirt_y - 0.15], [2.1, shirt_y + 0.5],
                                [2.9, 4.0], [-2.9, 4.0], [-2.1, shirt_y + 0.5]]), 1.0)
    shirt_rgb = np.array(look.shirt_rgb, np.float32)[None, None, :] * (
        1.0 - 0.25 * np.clip(np.abs(cv.u) / 2.5, 0, 1))[..., None]
    cv.paint(shirt, shirt_rgb)
    neck = cv.poly_mask(cv.px([[-0.66, chin_v - 0.6], [0.66, chin_v - 0.6], [0.7, shirt_y + 0.05],
                               [0.0, shirt_y + 0.3], [-0.7, shirt_y + 0.05]]), 0.6)
    neck_shade = 0.8 - 0.1 * np.clip((cv.v - chin_v) / 0.4, -1, 1) ** 2 - 0.1 * np.clip(
        np.abs(cv.u) / 0.7, 0, 1) ** 2
    cv.paint(neck, skin[None, None, :] * neck_shade[..., None])
    for s in (-1.0, 1.0):
        ear_c = cv.px([s * (half_w + 0.02), 0.45])
        ear = cv.ellipse_mask(ear_c, (0.17 * unit, 0.36 * unit), -s * 8.0, 0.5)
        cv.paint(ear, skin * 0.82)
        inner = cv.ellipse_mask(ear_c + [s * 0.02 * unit, 0.0], (0.08 * unit, 0.22 * unit),
                                -s * 8.0, 1.0)
        cv.paint(inner, skin * 0.6, 0.6, covers=False)

    # Head: the face oval plus a skull; mesh-lit face, ellipsoid-lit skull.
    face = cv.poly_mask(oval, 0.5)
    skull = cv.ellipse_mask(cv.px(cranium_c), (cranium_r[0] * unit, cranium_r[1] * unit), 0, 0.5)
    head = np.maximum(face, skull)
    nx = cv.u / (half_w * 1.05)
    ny = (cv.v - 0.25) / 1.9
    nz = np.sqrt(np.clip(1.0 - nx ** 2 - ny ** 2, 0.02, 1.0))
    ellipsoid = np.clip(nx * L[0] + ny * L[1] + nz * L[2], 0.0, 1.0)
    mesh_shade, cover = _mesh_shading(cv, mesh, L)
    cover = cv2.GaussianBlur(cover, (0, 0), 0.06 * unit) * face
    light = cover * mesh_shade + (1.0 - cover) * ellipsoid
    light = cv2.GaussianBlur(light, (0, 0), 0.045 * unit)
    light = 0.5 + 0.55 * light
    rim = np.clip(1.0 - (nx ** 2 + ((cv.v - 0.3) / 1.7) ** 2), 0.0, 1.0) ** 0.3
    head_rgb = skin[None, None, :] * (light * (0.8 + 0.2 * rim))[..., None]
    cv.paint(head, head_rgb)
    mouth_c = mesh[list(g.LIPS_OUTER_UPPER + g.LIPS_OUTER_LOWER), :2].mean(axis=0)
    if look.blush > 0:
        for s in (-1.0, 1.0):
            cheek = cv.ellipse_mask(cv.px([s * 0.62, 0.62]), (0.22 * unit, 0.16 * unit), 0,
                                    0.15 * unit)
            cv.paint(cheek * face, (200, 90, 90), 0.35 * look.blush, covers=False)
    if look.stubble > 0:
        lower = np.clip((cv.v - 0.9) / 0.25, 0, 1) * face
        lower *= 1.0 - cv.ellipse_mask(mouth_c, (0.5 * unit, 0.2 * unit), 0, 0.05 * unit)
        cv.paint(lower, skin * 0.55 + np.array([10, 10, 20]), 0.35 * look.stubble,
                 covers=False)

    # Eyes.
    for upper, lower, iris in ((g.RIGHT_EYE_UPPER, g.RIGHT_EYE_LOWER, g.RIGHT_IRIS),
                               (g.LEFT_EYE_UPPER, g.LEFT_EYE_LOWER, g.LEFT_IRIS)):
        up = mesh[list(upper), :2]
        crease = up + [0.0, -0.085 * unit]
        cv.paint(cv.line_mask(crease[1:-1], 0.03 * unit, 0.02 * unit), skin * 0.62, 0.55,
                 covers=False)
        socket = cv.ellipse_mask(up.mean(0) + [0, -0.03 * unit], (0.3 * unit, 0.14 * unit), 0,
                                 0.07 * unit)
        cv.paint(socket, skin * 0.7, 0.35, covers=False)
        sclera = cv.poly_mask(mesh[list(g.loop(upper, lower)), :2])
        shade = np.clip((cv.v * unit + origin_px[1] - up[:, 1].min()) / (0.12 * unit), 0.0, 1.0)
        cv.paint(sclera, np.array([236, 230, 224], np.float32) * (0.78 + 0.22 * shade)[..., None])
        centre = mesh[iris[0], :2]
        radius = float(np.linalg.norm(mesh[list(iris[1:]), :2] - centre, axis=1).mean()) * 1.05
        dist = np.hypot(cv.u * unit + origin_px[0] - centre[0],
                        cv.v * unit + origin_px[1] - centre[1]) / radius
        iris_rgb = np.array(look.iris_rgb, np.float32)[None, None, :] * (
            1.1 - 0.45 * np.clip(dist, 0, 1) ** 2)[..., None]
        disc = np.clip(1.0 - dist, 0.0, 1.0 / (radius * 0.6)) * radius * 0.6
        disc = np.clip(disc * 2.0, 0.0, 1.0)
        cv.paint(disc * sclera, iris_rgb)
        pupil = np.clip((0.42 - dist) * radius * 1.5, 0.0, 1.0)
        cv.paint(pupil * sclera, (12, 10, 10))
        glint = cv.ellipse_mask(centre + np.array([-0.3, -0.35]) * radius,
                                (0.2 * radius, 0.2 * radius), 0, 0.3)
        cv.paint(glint * sclera, (250, 250, 250), 0.9)
        cv.paint(cv.line_mask(up, 0.05 * unit, 0.3), (28, 20, 18), 0.95, covers=False)
        cv.paint(cv.line_mask(mesh[list(lower), :2], 0.018 * unit, 0.3), skin * 0.5, 0.6,
                 covers=False)

    # Brows.
    for upper_b, lower_b in ((g.RIGHT_BROW_UPPER, g.RIGHT_BROW_LOWER),
                             (g.LEFT_BROW_UPPER, g.LEFT_BROW_LOWER)):
        top = mesh[list(upper_b), :2]
        bottom = mesh[list(lower_b), :2]
        middle = (top + bottom) / 2.0
        half = (top - bottom) / 2.0 * look.brow_thickness * np.linspace(0.75, 1.1, 5)[:, None]
        brow = cv.poly_mask(np.concatenate([middle + half, (middle - half)[::-1]]), 0.04 * unit)
        brow_rgb = np.minimum(hair * 0.7, skin * 0.45)
        cv.paint(brow, brow_rgb, 0.92, covers=False)

    # Nose: nostrils and a highlight on the tip.
    for nostril in g.NOSTRILS:
        c = mesh[list(nostril), :2].mean(axis=0)
        cv.paint(cv.ellipse_mask(c + [0, 0.01 * unit], (0.065 * unit, 0.032 * unit), 0,
                                 0.02 * unit), skin * 0.3, 0.85, covers=False)
    tip = mesh[g.NOSE_TIP, :2] + np.array([L[0], L[1]]) * 0.06 * unit
    cv.paint(cv.ellipse_mask(tip, (0.06 * unit, 0.05 * unit), 0, 0.04 * unit),
             np.minimum(skin * 1.3, 255), 0.35, covers=False)

    # Lips.
    lip_rgb = skin * np.array([0.85, 0.55, 0.58]) * (1.0 - 0.25 * look.lip_redness) + np.array(
        [150.0, 40.0, 55.0]) * 0.35 * look.lip_redness
    upper_lip = cv.poly_mask(mesh[list(g.LIPS_OUTER_UPPER + tuple(reversed(
        g.LIPS_INNER_UPPER[1:-1]))), :2], 0.3)
    lower_lip = cv.poly_mask(mesh[list(g.LIPS_OUTER_LOWER + tuple(reversed(
        g.LIPS_INNER_LOWER[1:-1]))), :2], 0.3)
    cv.paint(upper_lip, lip_rgb * 0.85, covers=False)
    cv.paint(lower_lip, lip_rgb, covers=False)
    lower_c = mesh[list(g.LIPS_OUTER_LOWER[3:8]), :2].mean(axis=0) - [0.0, 0.04 * unit]
    cv.paint(cv.ellipse_mask(lower_c, (0.12 * unit, 0.03 * unit), 0, 0.03 * unit),
             np.minimum(lip_rgb * 1.4, 255), 0.4, covers=False)
    cv.paint(cv.line_mask(mesh[list(g.LIPS_INNER_UPPER), :2], 0.025 * unit, 0.3),
             lip_rgb * 0.4, 0.9, covers=False)

    # Hair in front: from the hairline over the skull.
    if look.hair_style != "bald":
        volume = {"short": 0.1, "long": 0.15, "bob": 0.15, "fringe": 0.14, "curly": 0.4,
                  "buzz": 0.02}[look.hair_style]
        # The hairline: an arc from temple to temple, above the mesh's top for most styles,
        # low over the brows for a fringe.
        crown = {"fringe": -0.5, "curly": -1.0}.get(look.hair_style, -1.12)
        temple_v = -0.3 if look.hair_style != "fringe" else -0.35
        t = np.linspace(-1.0, 1.0, 17)
        line_u = t * (half_w - 0.04)
        line_v = temple_v + (crown - temple_v) * (1.0 - t ** 2) ** 0.6
        if look.hair_style == "fringe":
            line_v += 0.04 * np.sin(t * 23.0)
        hairline = cv.px(np.stack([line_u, line_v], axis=1))
        angles = np.radians(np.linspace(-15.0, 195.0, 24))
        outer = np.stack([np.cos(angles) * (cranium_r[0] + volume),
                          cranium_c[1] - np.sin(angles) * (cranium_r[1] + volume)], axis=1)
        outer = outer[outer[:, 1] < 0.35]
        region = cv.poly_mask(np.concatenate([hairline, cv.px(outer)]), 0.5)
        if look.hair_style == "buzz":
            cv.paint(region * head, hair * 0.6 + skin * 0.4, 0.75, covers=False)
        else:
            cv.paint(region, hair_tex)
            if look.hair_style in ("long", "bob"):
                bottom = 2.5 if look.hair_style == "long" else 1.5
                for s in (-1.0, 1.0):
                    curtain = cv.poly_mask(cv.px([[s * (half_w - 0.08), -0.2],
                                                  [s * (half_w + 0.3), -0.2],
                                                  [s * (half_w + 0.36), bottom],
                                                  [s * (half_w + 0.02), bottom]]), 0.6)
                    cv.paint(curtain, hair_tex)
    elif rng.random() < 0.7:  # a horseshoe of short hair above the ears
        for s in (-1.0, 1.0):
            side = cv.ellipse_mask(cv.px([s * (half_w - 0.05), -0.1]), (0.16 * unit, 0.45 * unit),
                                   0, 0.06 * unit)
            cv.paint(side * head, hair * 0.7 + skin * 0.3, 0.8, covers=False)

    rgb = cv2.GaussianBlur(cv.rgb, (0, 0), 0.45)
    rgb += rng.standard_normal(rgb.shape[:2]).astype(np.float32)[..., None] * 2.0
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), cv.alpha
