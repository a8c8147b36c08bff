"""The identity path's motion-adaptive candidate (streamav/model/refine.py) on images whose
answer is known, and model folders written before it existed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamav.model.config import ModelConfig, RefineConfig, preset  # noqa: E402
from streamav.model.refine import Refiner  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FPS = 30.0


def _face(seed: int) -> torch.Tensor:
    """A smooth random image (1, 3, 64, 64) in -0.4..0.4: structure a blur keeps."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(-0.4, 0.4, (1, 3, 8, 8)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=64, mode="bilinear", align_corners=False)


def _run(refiner: Refiner, frames: list[torch.Tensor]) -> torch.Tensor:
    state = refiner.initial_state(1)
    for frame in frames:
        state = refiner.advance(frame, state)
    return refiner.motion_filtered(state.face_means)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def test_a_still_face_is_averaged_over_the_long_mean():
    refiner = Refiner(RefineConfig(motion_filter=True), FPS)
    clean = _face(0)
    rng = torch.Generator().manual_seed(1)
    noisy = [clean + 0.2 * torch.randn(clean.shape, generator=rng) for _ in range(120)]
    filtered = _run(refiner, noisy)
    state = refiner.initial_state(1)
    for frame in noisy:
        state = refiner.advance(frame, state)
    shortest = refiner.blur(state.face_means[:, :3], refiner.motion_kernel)
    # 4 s of a still face: the filter averages far more frames than the 0.1 s mean
    assert _mse(filtered, clean) < 0.5 * _mse(shortest, clean)


def test_a_face_that_changed_follows_the_short_mean():
    refiner = Refiner(RefineConfig(motion_filter=True), FPS)
    before, after = _face(0), _face(5)
    filtered = _run(refiner, [before] * 90 + [after] * 10)  # a cut 0.33 s ago
    state = refiner.initial_state(1)
    for frame in [before] * 90 + [after] * 10:
        state = refiner.advance(frame, state)
    longest = refiner.blur(state.face_means[:, 6:9], refiner.motion_kernel)
    # the long mean still shows the old face; the filter has moved on to the new one
    assert _mse(filtered, after) < 0.2 * _mse(longest, after)


def test_the_filter_adds_no_gate_and_a_share_must_be_positive():
    assert Refiner(RefineConfig(), FPS).n_candidates == 10
    assert Refiner(RefineConfig(motion_filter=True), FPS).n_candidates == 10
    with pytest.raises(ValueError, match="motion_share"):
        RefineConfig(motion_filter=True, motion_share=0.0).validate()


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_a_shared_filter_takes_its_share_of_every_gate_but_the_mdvae_faces(share):
    """With motion_share the 10 learned gates are kept; the filter replaces `share` of the
    weight of the others, never of the MDVAE's face (an occluded mouth stays voice-driven)."""
    torch.manual_seed(0)
    plain = Refiner(RefineConfig(residual_scale=0.0), FPS).eval()
    shared = Refiner(RefineConfig(residual_scale=0.0, motion_filter=True, motion_share=share),
                     FPS).eval()
    shared.load_state_dict(plain.state_dict())  # the same gate network: the v2 weights load
    face, vq_face, mdvae_face = _face(1), _face(2), _face(3)
    state = plain.advance(face, plain.initial_state(1))
    filtered = shared.motion_filtered(state.face_means)
    with torch.no_grad():
        for refiner in (plain, shared):  # the MDVAE face's gate saturated off
            refiner.head.bias[9] = -40.0
        before = plain.fuse(face, state.face_means, vq_face, mdvae_face)
        after = shared.fuse(face, state.face_means, vq_face, mdvae_face)
        assert _mse(after, before) > 1e-5
        assert torch.allclose(after, (1 - share) * before + share * filtered, atol=1e-5)
        for refiner in (plain, shared):  # ... and on: it holds all the weight, nothing changes
            refiner.head.bias[9] = 40.0
        before = plain.fuse(face, state.face_means, vq_face, mdvae_face)
        after = shared.fuse(face, state.face_means, vq_face, mdvae_face)
        assert torch.allclose(before, mdvae_face, atol=1e-4)
        assert torch.allclose(after, before, atol=1e-6)


def test_a_folder_written_before_the_motion_filter_loads_without_it():
    data = preset("default").to_dict()
    for key in ("motion_filter", "motion_filter_sigma_px", "motion_threshold", "motion_blur_px",
                "motion_share", "motion_noise_adaptive", "motion_threshold_per_noise",
                "motion_input_threshold_per_noise", "motion_noise_full_blur",
                "residual_noise_range"):
        del data["refine"][key]
    cfg = ModelConfig.from_dict(json.loads(json.dumps(data)))
    assert cfg.refine.motion_filter is False
    assert cfg.refine.motion_noise_adaptive is False and cfg.refine.residual_noise_range == ()
    with pytest.raises(ValueError, match="missing keys"):
        del data["refine"]["blur_sigma_px"]
        ModelConfig.from_dict(data)


def test_the_mdvae_face_keeps_only_a_confident_gate():
    """mdvae_gate_threshold t: a gate >= 2 t (an occluded mouth) is kept whole, one <= t gives
    the MDVAE face nothing (its weight goes to the filter), and the weights still sum to one."""
    shared = Refiner(RefineConfig(motion_filter=True, motion_share=0.8), FPS)
    thresholded = Refiner(RefineConfig(motion_filter=True, motion_share=0.8,
                                       mdvae_gate_threshold=0.25), FPS)
    state = shared.advance(_face(0), shared.initial_state(1))
    blend_others, mdvae_face = _face(4), _face(5)
    filtered = shared.motion_filtered(state.face_means)
    for g in (0.6, 0.9):  # confident: the same as without a threshold
        gate = torch.full((1, 1, 64, 64), g)
        blend = (1 - g) * blend_others  # the other candidates' blend: their gates sum to 1 - g
        assert torch.allclose(thresholded._share_with_filter(blend, gate, mdvae_face, state.face_means),
                              shared._share_with_filter(blend, gate, mdvae_face, state.face_means),
                              atol=1e-6)
    g = 0.2
    gate = torch.full((1, 1, 64, 64), g)
    outputs = [thresholded._share_with_filter((1 - g) * blend_others, gate, face,
                                              state.face_means) for face in (mdvae_face, _face(6))]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)  # the MDVAE face has no say
    expected = 0.2 * (1 - g) * blend_others + (0.8 * (1 - g) + g) * filtered
    assert torch.allclose(outputs[0], expected, atol=1e-6)
    g = 0.375  # half way: keeps half its gate
    gate = torch.full((1, 1, 64, 64), g)
    out = thresholded._share_with_filter((1 - g) * blend_others, gate, mdvae_face,
                                         state.face_means)
    expected = 0.2 * (1 - g) * blend_others + (0.8 * (1 - g) + g / 2) * filtered + g / 2 * mdvae_face
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_mdvae_face_is_used_only_inside_its_region():
    """mdvae_region: outside the ellipse (hair, shoulders, background: a training identity's in
    the MDVAE face) even a confident gate gives the MDVAE face nothing; inside, it is kept."""
    from streamav.frontend.corruption import parse_corruption
    from streamav.model.refine import ellipse_mask

    region = (0.49, 0.52, 0.375, 0.344)
    mask = ellipse_mask(region, 64)[0, 0]
    for box in ("occlude_mouth", "occlude_eyes"):  # the occlusions it must cover
        assert bool((mask[torch.from_numpy(parse_corruption(box).region_mask(64))] == 1).all())
    assert float(mask[56:, :8].max()) == 0.0 and float(mask[:4].max()) == 0.0
    everywhere = Refiner(RefineConfig(motion_filter=True, motion_share=0.8), FPS)
    inside = Refiner(RefineConfig(motion_filter=True, motion_share=0.8, mdvae_region=region), FPS)
    state = everywhere.advance(_face(0), everywhere.initial_state(1))
    others, mdvae_face, g = _face(4), _face(5), 0.9
    gate = torch.full((1, 1, 64, 64), g)
    blend = (1 - g) * others
    kept = everywhere._share_with_filter(blend, gate, mdvae_face, state.face_means)
    masked = inside._share_with_filter(blend, gate, mdvae_face, state.face_means)
    filtered = everywhere.motion_filtered(state.face_means)
    full = mask == 1
    assert torch.allclose(masked[..., full], kept[..., full], atol=1e-6)
    outside = mask == 0
    expected = 0.2 * (1 - g) * others + (0.8 * (1 - g) + g) * filtered
    assert torch.allclose(masked[..., outside], expected[..., outside], atol=1e-6)


def test_the_kept_gate_blends_the_mdvae_and_vq_faces_by_mdvae_face_weight():
    """mdvae_face_weight w: where the MDVAE face keeps its gate the blend takes w of it and 1 - w
    of the VQ-VAE's face; w = 1 (the default) is the MDVAE face alone, as before."""
    with pytest.raises(ValueError, match="mdvae_face_weight"):
        RefineConfig(motion_filter=True, mdvae_face_weight=1.5).validate()
    alone = Refiner(RefineConfig(motion_filter=True, motion_share=0.8), FPS)
    half = Refiner(RefineConfig(motion_filter=True, motion_share=0.8, mdvae_face_weight=0.5), FPS)
    state = alone.advance(_face(0), alone.initial_state(1))
    others, mdvae_face, vq_face, g = _face(4), _face(5), _face(6), 0.9
    gate = torch.full((1, 1, 64, 64), g)
    a = alone._share_with_filter((1 - g) * others, gate, mdvae_face, state.face_means, vq_face)
    b = half._share_with_filter((1 - g) * others, gate, mdvae_face, state.face_means, vq_face)
    assert torch.allclose(a, alone._share_with_filter((1 - g) * others, gate, mdvae_face,
                                                      state.face_means), atol=0)
    assert torch.allclose(b - a, g * 0.5 * (vq_face - mdvae_face), atol=1e-6)


def test_the_kept_mdvae_face_takes_its_low_frequencies_from_the_vq_face_unless_exposed_apart():
    """mdvae_low_pass_from_vq_px s: where the MDVAE face keeps its gate, its low frequencies are
    the VQ-VAE face's (a flat colour difference moves over whole, a fine pattern stays the
    MDVAE's), but not when their brightness differs as in low light (ratio >= 2.5)."""
    with pytest.raises(ValueError, match="mdvae_low_pass_from_vq_px"):
        RefineConfig(motion_filter=True, mdvae_low_pass_from_vq_px=-1.0).validate()
    plain = Refiner(RefineConfig(motion_filter=True, motion_share=0.8), FPS)
    colour = Refiner(RefineConfig(motion_filter=True, motion_share=0.8,
                                  mdvae_low_pass_from_vq_px=8.0), FPS)
    state = plain.advance(_face(0), plain.initial_state(1))
    g = 0.9
    gate = torch.full((1, 1, 64, 64), g)
    others = (1 - g) * _face(4)
    rows = torch.arange(64.0)[:, None].expand(64, 64)
    detail = 0.05 * torch.sign(torch.sin(rows * 1.6))[None, None].expand(1, 3, 64, 64)
    mdvae_face = -0.1 + detail  # a darker face with fine lines
    vq_face = torch.full((1, 3, 64, 64), 0.0)  # the person: flat, brighter

    def kept(refiner, vq):
        return (refiner._share_with_filter(others, gate, mdvae_face, state.face_means, vq)
                - plain._share_with_filter(others, gate, torch.zeros_like(mdvae_face),
                                           state.face_means, vq)) / g

    corrected = kept(colour, vq_face)
    assert abs(float(corrected.mean()) - 0.0) < 0.01  # the VQ face's brightness
    assert float((corrected - corrected.mean()).abs().mean()) > 0.04  # the MDVAE's lines
    assert torch.allclose(kept(plain, vq_face), mdvae_face, atol=1e-6)
    dark = torch.full((1, 3, 64, 64), -0.5 + 0.4 / 2.6)  # 2.6x darker than the MDVAE face
    assert torch.allclose(kept(colour, dark), mdvae_face, atol=1e-6)


ADAPTIVE = RefineConfig(motion_filter=True, motion_noise_adaptive=True, motion_threshold=0.002,
                        residual_noise_range=(0.02, 0.1))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * np.log10(1.0 / _mse(a, b))


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.2])
def test_the_noise_level_reads_gaussian_noise_and_not_the_face(sigma):
    """Immerkaer's estimate on the channel mean: sigma / sqrt(3) for noise of std sigma in
    each channel; a smooth clean face reads almost nothing."""
    refiner = Refiner(ADAPTIVE, FPS)
    clean = _face(0)
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    assert float(refiner.noise_level(clean)) < 0.005
    assert float(refiner.noise_level(noisy)) == pytest.approx(sigma / np.sqrt(3), rel=0.1)


def test_the_noise_adaptive_filter_returns_a_clean_face_as_it_is():
    """The fixed filter blurs its means (0.8 px) whatever the input; the adaptive one blurs as
    much as the noise asks, so a clean face that moves comes back (nearly) as it is."""
    fixed, adaptive = Refiner(RefineConfig(motion_filter=True), FPS), Refiner(ADAPTIVE, FPS)
    frames = [torch.roll(_face(0), shifts=t // 4, dims=-1) for t in range(60)]  # drifts right
    state = adaptive.initial_state(1)
    for frame in frames:
        state = adaptive.advance(frame, state)
    kept = _psnr(adaptive.motion_filtered(state.face_means, frames[-1]), frames[-1])
    blurred = _psnr(fixed.motion_filtered(state.face_means), frames[-1])
    assert kept > 40.0 and kept > blurred + 8.0, (kept, blurred)


@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_the_noise_adaptive_filter_averages_a_noisy_still_face(sigma):
    refiner = Refiner(ADAPTIVE, FPS)
    clean = _face(0)
    rng = torch.Generator().manual_seed(3)
    noisy = [clean + sigma * torch.randn(clean.shape, generator=rng) for _ in range(90)]
    state = refiner.initial_state(1)
    for frame in noisy:
        state = refiner.advance(frame, state)
    # 3 s of a still face: ~45 frames' worth of averaging is 16 dB; the frame itself is 0 dB
    assert _psnr(refiner.motion_filtered(state.face_means, noisy[-1]), clean) > (
        _psnr(noisy[-1], clean) + 12.0)


def test_the_residual_follows_the_noise_level_and_the_mdvae_gate():
    """residual_noise_range (low, high): no residual on a clean face, all of it from high up,
    and never less than the MDVAE face's gate (where the gates see an occluder)."""
    ranged = Refiner(ADAPTIVE, FPS)
    with torch.no_grad():
        ranged.head.weight.zero_()
        ranged.head.bias[ranged.n_candidates:] = 1.0  # a residual of 0.2 tanh(1) everywhere
    whole = Refiner(dataclasses.replace(ADAPTIVE, residual_noise_range=()), FPS)
    clean = _face(0)
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(4))
    for mdvae_bias, face, same in ((-20.0, clean, False), (-20.0, noisy, True),
                                   (20.0, clean, True)):
        with torch.no_grad():
            ranged.head.bias[ranged.n_candidates - 1] = mdvae_bias
        whole.load_state_dict(ranged.state_dict())
        state = ranged.advance(face, ranged.initial_state(1))
        args = (face, state.face_means, _face(6), _face(7))
        with torch.no_grad():
            difference = (ranged.fuse(*args) - whole.fuse(*args)).abs().max()
        assert (float(difference) < 1e-6) == same, (mdvae_bias, same, float(difference))
    with pytest.raises(ValueError, match="residual_noise_range"):
        RefineConfig(motion_filter=True, residual_noise_range=(0.1, 0.05)).validate()
