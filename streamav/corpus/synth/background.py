"""Backgrounds behind a speaker: a lit wall with soft out-of-focus shapes, one per speaker.

Drawn once per speaker from its own random stream: a vertical gradient between two colours of
one palette, a few large blurred rectangles and discs (shelves, windows, lamps out of focus) and
a fine texture, so that speakers differ in their surroundings as they do in real recordings.
"""

from __future__ import annotations

import cv2
import numpy as np

_PALETTES: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((200, 196, 186), (150, 140, 125), (90, 80, 70)),  # warm grey room
    ((170, 190, 205), (110, 130, 150), (60, 70, 90)),  # cool blue
    ((215, 205, 170), (170, 150, 110), (110, 90, 60)),  # beige
    ((150, 170, 140), (100, 120, 95), (60, 75, 55)),  # green
    ((225, 225, 228), (185, 185, 190), (120, 120, 130)),  # white office
    ((120, 100, 110), (80, 65, 75), (45, 35, 40)),  # dark plum
    ((190, 160, 150), (140, 110, 100), (80, 60, 55)),  # terracotta
    ((90, 95, 105), (60, 62, 70), (30, 32, 38)),  # dark studio
)


def draw_background(rng: np.random.Generator, width_px: int, height_px: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB background."""
    palette = np.array(_PALETTES[int(rng.integers(len(_PALETTES)))], np.float32)
    palette *= rng.uniform(0.85, 1.12, size=(1, 3)).astype(np.float32)  # tint the palette
    top, bottom, accent = palette
    t = np.linspace(0.0, 1.0, height_px, dtype=np.float32)[:, None, None]
    image = (top * (1.0 - t) + bottom * t) * np.ones((1, width_px, 1), np.float32)
    shapes = np.zeros_like(image)
    weight = np.zeros(image.shape[:2], np.float32)
    for _ in range(int(rng.integers(3, 7))):
        colour = palette[int(rng.integers(3))] * rng.uniform(0.7, 1.3)
        mask = np.zeros(image.shape[:2], np.float32)
        if rng.random() < 0.5:
            x0, y0 = rng.uniform(-0.2, 1.0, 2) * [width_px, height_px]
            w, h = rng.uniform(0.15, 0.6, 2) * [width_px, height_px]
            cv2.rectangle(mask, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), 1.0, -1)
        else:
            centre = rng.uniform(0.0, 1.0, 2) * [width_px, height_px]
            radius = rng.uniform(0.05, 0.2) * width_px
            cv2.circle(mask, (int(centre[0]), int(centre[1])), int(radius), 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), float(rng.uniform(4.0, 12.0)))
        alpha = mask * float(rng.uniform(0.3, 0.8))
        shapes = shapes * (1.0 - alpha[..., None]) + colour * alpha[..., None]
        weight = weight * (1.0 - alpha) + alpha
    image = image * (1.0 - weight[..., None]) + shapes
    texture = cv2.GaussianBlur(rng.standard_normal(image.shape[:2]).astype(np.float32), (0, 0), 1.2)
    image += texture[..., None] * 6.0
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
