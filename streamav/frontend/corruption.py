"""Corruptions of aligned face crops: what denoising is trained on, evaluated on, and shown live.

Every corruption takes a (..., 64, 64, 3) uint8 RGB crop (one crop or a batch) and a numpy
Generator and returns a corrupted copy of the same shape and dtype. Because crops are aligned to a
fixed template (streamav/frontend/face.py), the mouth and the eyes are at known places, so
occlusions hit exactly them.

Names (the same in `streamav train`, `streamav eval` and `streamav live --noise`):
    gaussian:SIGMA    additive Gaussian noise, SIGMA on a 0..1 scale (e.g. gaussian:0.2)
    occlude_mouth     a grey box over the mouth
    occlude_eyes      a grey box over both eyes
    lowlight          dark (x0.25, gamma 1.5) with shot noise, as a dim webcam
    blur:SIGMA_PX     Gaussian blur (default 1.5 px)
    jpeg:QUALITY      JPEG compression (default 15)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from streamav.errors import InputError
from streamav.frontend.face import TEMPLATE_UNIT

_GREY = 128


@dataclass(frozen=True)
class Corruption:
    name: str
    param: float | None

    def __str__(self) -> str:
        return self.name if self.param is None else f"{self.name}:{self.param:g}"

    def apply(self, crops: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if crops.dtype != np.uint8 or crops.shape[-1] != 3 or crops.ndim < 3:
            raise ValueError(f"expected (..., H, W, 3) uint8 crops, got {crops.shape} {crops.dtype}")
        return _APPLY[self.name](crops, self.param, rng)

    def region_mask(self, size_px: int = 64) -> np.ndarray | None:
        """(size, size) bool: the pixels an occlusion covers; None for corruptions of the whole
        crop."""
        if not self.name.startswith("occlude"):
            return None
        probe = self.apply(np.zeros((size_px, size_px, 3), np.uint8), np.random.default_rng(0))
        mask = (probe != 0).all(axis=-1)
        return mask if mask.any() else None


def _gaussian(crops: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = crops.astype(np.float32) / 255.0 + rng.normal(0.0, sigma, crops.shape)
    return (np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _box(crops: np.ndarray, centre_u: np.ndarray, half_u: tuple[float, float]) -> np.ndarray:
    out = crops.copy()
    size = crops.shape[-2]
    x0, x1 = (int(round((centre_u[0] + s * half_u[0]) * size)) for s in (-1, 1))
    y0, y1 = (int(round((centre_u[1] + s * half_u[1]) * size)) for s in (-1, 1))
    out[..., max(0, y0):min(size, y1), max(0, x0):min(size, x1), :] = _GREY
    return out


def _occlude_mouth(crops: np.ndarray, _param, _rng) -> np.ndarray:
    mouth_centre = TEMPLATE_UNIT[3:5].mean(axis=0)
    half_width = (TEMPLATE_UNIT[4, 0] - TEMPLATE_UNIT[3, 0]) / 2 + 0.06
    return _box(crops, mouth_centre, (half_width, 0.09))


def _occlude_eyes(crops: np.ndarray, _param, _rng) -> np.ndarray:
    eyes_centre = TEMPLATE_UNIT[0:2].mean(axis=0)
    half_width = (TEMPLATE_UNIT[1, 0] - TEMPLATE_UNIT[0, 0]) / 2 + 0.09
    return _box(crops, eyes_centre, (half_width, 0.07))


def _lowlight(crops: np.ndarray, _param, rng: np.random.Generator) -> np.ndarray:
    dark = 0.25 * (crops.astype(np.float32) / 255.0) ** 1.5
    shot = rng.normal(0.0, 1.0, crops.shape) * np.sqrt(dark / 200.0) + rng.normal(0, 0.01, crops.shape)
    return (np.clip(dark + shot, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _per_crop(crops: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    flat = crops.reshape(-1, *crops.shape[-3:])
    return np.stack([function(c) for c in flat]).reshape(crops.shape)


def _blur(crops: np.ndarray, sigma_px: float, _rng) -> np.ndarray:
    return _per_crop(crops, lambda c: cv2.GaussianBlur(c, (0, 0), sigma_px))


def _jpeg(crops: np.ndarray, quality: float, _rng) -> np.ndarray:
    def compress(crop: np.ndarray) -> np.ndarray:
        ok, data = cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    return _per_crop(crops, compress)


_APPLY = {"gaussian": _gaussian, "occlude_mouth": _occlude_mouth, "occlude_eyes": _occlude_eyes,
          "lowlight": _lowlight, "blur": _blur, "jpeg": _jpeg}
_DEFAULT_PARAM = {"gaussian": 0.1, "blur": 1.5, "jpeg": 15.0}
# Inclusive ranges of the parameters: sigma on the 0..1 scale, blur sigma in px, JPEG quality.
_PARAM_RANGE = {"gaussian": (0.0, 1.0), "blur": (0.1, 32.0), "jpeg": (0.0, 100.0)}

# The corruptions `streamav eval` reports, in order.
EVAL_CORRUPTIONS = ("gaussian:0.05", "gaussian:0.1", "gaussian:0.2", "occlude_mouth", "occlude_eyes", "lowlight")


def parse_corruption(spec: str) -> Corruption:
    """'gaussian:0.2' → Corruption('gaussian', 0.2). Unknown names are an InputError."""
    name, _, value = spec.strip().partition(":")
    if name not in _APPLY:
        raise InputError(f"unknown noise {spec!r}; known: {', '.join(sorted(_APPLY))} "
                         "(e.g. gaussian:0.2)")
    if value:
        if name not in _DEFAULT_PARAM:
            raise InputError(f"noise {name!r} takes no parameter")
        try:
            param = float(value)
        except ValueError:
            raise InputError(f"bad parameter in noise {spec!r}") from None
        low, high = _PARAM_RANGE[name]
        if not (math.isfinite(param) and low <= param <= high):
            raise InputError(f"noise {spec!r}: the parameter of {name} must be in "
                             f"{low:g}..{high:g}")
        return Corruption(name, param)
    return Corruption(name, _DEFAULT_PARAM.get(name))
