"""Face-crop corruptions: each changes what it says (and only that), on real aligned crops."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CREMA_D_CLIPS, require_shared_data
from streamav.errors import InputError
from streamav.frontend.corruption import EVAL_CORRUPTIONS, parse_corruption


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    require_shared_data()
    from streamav.offline_features import extract_clip_features

    features = extract_clip_features(CREMA_D_CLIPS[0], max_frames=8)
    assert features.face_found.all()
    return features.face_crop_rgb


def _psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def test_gaussian_noise_has_the_stated_sigma(crops):
    noisy = parse_corruption("gaussian:0.1").apply(crops, np.random.default_rng(0))
    residual = (noisy.astype(np.float64) - crops) / 255.0
    mid = (crops > 40) & (crops < 215)  # away from clipping
    assert abs(residual[mid].std() - 0.1) < 0.01
    assert _psnr_db(noisy, crops) == pytest.approx(20.0, abs=1.0)  # sigma 0.1 → ~20 dB


def test_occlusions_cover_the_mouth_or_the_eyes_only(crops):
    mouth = parse_corruption("occlude_mouth").apply(crops, np.random.default_rng(0))
    eyes = parse_corruption("occlude_eyes").apply(crops, np.random.default_rng(0))
    changed_mouth = np.argwhere((mouth != crops).any(axis=(0, 3)))
    changed_eyes = np.argwhere((eyes != crops).any(axis=(0, 3)))
    assert 36 <= changed_mouth[:, 0].min() and changed_mouth[:, 0].max() <= 48  # rows of the mouth
    assert 16 <= changed_eyes[:, 0].min() and changed_eyes[:, 0].max() <= 27  # rows of the eyes
    assert (mouth[:, 42, 31] == 128).all() and (eyes[:, 21, 22] == 128).all()


def test_region_mask_is_exactly_the_pixels_an_occlusion_greys(crops):
    for spec in ("occlude_mouth", "occlude_eyes"):
        corruption = parse_corruption(spec)
        changed = (corruption.apply(crops, np.random.default_rng(0)) != crops).any(axis=(0, 3))
        mask = corruption.region_mask(64)
        assert mask.shape == (64, 64) and mask.sum() > 100
        assert not (changed & ~mask).any()  # nothing outside the box changes
    assert parse_corruption("gaussian:0.2").region_mask(64) is None


def test_lowlight_is_dark_and_deterministic(crops):
    corruption = parse_corruption("lowlight")
    dark = corruption.apply(crops, np.random.default_rng(3))
    assert dark.mean() < 0.35 * crops.mean()
    assert np.array_equal(dark, corruption.apply(crops, np.random.default_rng(3)))


@pytest.mark.parametrize("spec", [*EVAL_CORRUPTIONS, "blur", "jpeg:10"])
def test_every_corruption_keeps_shape_and_lowers_psnr(crops, spec):
    out = parse_corruption(spec).apply(crops, np.random.default_rng(0))
    assert out.shape == crops.shape and out.dtype == np.uint8
    assert _psnr_db(out, crops) < 35.0
    single = parse_corruption(spec).apply(crops[0], np.random.default_rng(0))
    assert single.shape == crops[0].shape


def test_bad_specs_are_input_errors():
    for spec in ("salt", "occlude_mouth:3", "gaussian:x"):
        with pytest.raises(InputError):
            parse_corruption(spec)
    assert str(parse_corruption("gaussian:0.2")) == "gaussian:0.2"
