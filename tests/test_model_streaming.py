"""The causal model: stepping frame by frame equals the whole-sequence path; bounded state over
long runs; reset; the non-finite guard; torch.export of the step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from streamav.model.config import preset  # noqa: E402
from streamav.model.mdvae import MDVAE, w_filter_scan, w_filter_step, w_natural  # noqa: E402
from streamav.model.streaming import (OUTPUT_NAMES, STATE_NAMES, GuardedStream, State,  # noqa: E402
                                      StreamingModel,
                                      face_rgb_from_tensor, face_tensor_from_rgb)
from streamav.model.synthetic import smooth_sequences  # noqa: E402



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(name: str, seed: int = 0) -> StreamingModel:
    torch.manual_seed(seed)
    return StreamingModel(preset(name)).eval()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", ["default", "paper"])
def test_step_by_step_equals_run_sequence(name):
    """T = 90 frames, B = 2 streams: max abs difference <= 1e-5 for every output and the state.

    The reconstructed power spectrum is in the input's own units (up to ~1e2 here): its
    tolerance is 1e-5 relative to the value (float32 has 24 bits), i.e. absolute in P / gain.
    """
    model = _model(name)
    B, T = 2, 90
    spectra, faces = smooth_sequences(B, T, seed=3)
    spectra[1] = spectra[1] * 3e-3  # the second stream much quieter
    with torch.no_grad():
        seq, seq_state = model.run_sequence(spectra, faces, chunk_frames=64)  # 2 chunks
        state = model.initial_state(B)
        steps = []
        for t in range(T):
            out, state = model.step(spectra[:, t], faces[:, t], state)
            steps.append(out)
    for i, field in enumerate(seq._fields):
        stepped = torch.stack([s[i] for s in steps], 1)
        assert stepped.shape == seq[i].shape
        if field == "spectrum_hat":
            err = float(((stepped - seq[i]).abs() / seq[i].abs().clamp_min(1.0)).max())
        else:
            err = _max_abs(stepped, seq[i])
        assert err <= 1e-5, f"{field}: {err}"
    for field, a, b in zip(State._fields, state, seq_state):
        assert _max_abs(a, b) <= 1e-5, f"state {field}"


def test_w_filter_scan_equals_recursion():
    torch.manual_seed(1)
    rho = preset("default").mdvae.w_decay
    mean, prec = torch.randn(3, 200, 84), torch.rand(3, 200, 84) * 100
    eta0, prec0 = torch.randn(3, 84), torch.rand(3, 84) * 50
    eta, lam = w_filter_scan(eta0, prec0, mean, prec, rho, chunk=64)
    m, v = (eta0 / (1 + prec0)), 1 / (1 + prec0)
    for t in range(200):
        m, v = w_filter_step(m, v, mean[:, t], prec[:, t], rho)
    e_rec, l_rec = w_natural(m, v)
    assert torch.allclose(lam[:, -1], l_rec, rtol=1e-5)
    assert torch.allclose(eta[:, -1], e_rec, rtol=1e-4, atol=1e-3)


def test_state_stays_bounded_over_20000_steps_of_random_and_constant_input():
    """20,000 frames (the sequence path, equal to `step` by the parity test): stream 0 random,
    stream 1 constant input. w's variance stays in [1 / (1 + l_max / (1 - rho)), 1], |w mean|
    below its bound, the GRU states in [-1, 1], everything finite; with constant input the state
    reaches a fixed point and stays there (no drift)."""
    cfg = preset("default").mdvae
    torch.manual_seed(2)
    mdvae = MDVAE(cfg).eval()
    T, chunk = 20_000, 2_500
    g = torch.Generator().manual_seed(5)
    const_a, const_v = torch.randn(1, 1, 512, generator=g), torch.randn(1, 1, 2048, generator=g)
    state = mdvae.initial_state(2)
    var_min = 1.0 / (1.0 + cfg.w_precision_max / (1.0 - cfg.w_decay))
    with torch.inference_mode():
        for start in range(0, T, chunk):
            x_a = torch.cat([torch.randn(1, chunk, 512, generator=g) * 3,
                             const_a.expand(1, chunk, -1)])
            x_v = torch.cat([torch.relu(torch.randn(1, chunk, 2048, generator=g)) * 3,
                             const_v.expand(1, chunk, -1)])
            seq = mdvae(x_a, x_v, state, sample=False)
            state = seq.state
            for t in (seq.w_mean, seq.w_var, seq.z_av, seq.z_a, seq.z_v, seq.x_a_hat,
                      seq.x_v_hat, *state):
                assert torch.isfinite(t).all()
            assert float(seq.w_var.min()) >= var_min * (1 - 1e-4)
            assert float(seq.w_var.max()) <= 1.0 + 1e-6
            assert float(seq.w_mean.abs().max()) <= cfg.w_mean_bound
            for h in state[:3]:
                assert float(h.abs().max()) <= 1.0
            if start == T - 2 * chunk:
                const_before = [s[1].clone() for s in state]
    for before, after in zip(const_before, state):  # constant input: fixed point, no drift
        assert _max_abs(before, after[1]) <= 1e-5


def test_w_filter_forgets_its_start_and_cannot_drift():
    """Two different starting states fed the same 20,000 frames of bounded evidence end equal:
    the filter is contractive (rho < 1), so no error or initial condition survives."""
    cfg = preset("default").mdvae
    g = torch.Generator().manual_seed(8)
    T, W = 20_000, cfg.w_dim
    mean = cfg.w_mean_bound * torch.tanh(torch.randn(1, T, W, generator=g))
    prec = cfg.w_precision_min + torch.rand(1, T, W, generator=g) * cfg.w_precision_max
    eta0 = torch.stack([torch.zeros(W), torch.randn(W, generator=g) * 1e4])
    prec0 = torch.stack([torch.zeros(W), torch.rand(W, generator=g) * 1e4])
    eta, lam = w_filter_scan(eta0, prec0, mean.expand(2, -1, -1), prec.expand(2, -1, -1),
                             cfg.w_decay, chunk=500)
    assert torch.isfinite(eta).all() and torch.isfinite(lam).all()
    assert float(lam.max()) <= cfg.w_precision_max / (1 - cfg.w_decay) * (1 + 1e-5) + 1e4
    assert torch.allclose(eta[0, -1], eta[1, -1], rtol=1e-5, atol=1e-3)
    assert torch.allclose(lam[0, -1], lam[1, -1], rtol=1e-5, atol=1e-3)


def test_reset_gives_the_same_outputs_as_a_fresh_state():
    model = _model("default")
    spectra, faces = smooth_sequences(1, 12, seed=4)
    with torch.no_grad():
        fresh, _ = model.step(spectra[:, 11], faces[:, 11], model.initial_state(1))
        state = model.initial_state(1)
        for t in range(11):
            _, state = model.step(spectra[:, t], faces[:, t], state)
        assert _max_abs(state.w_var, torch.ones_like(state.w_var)) > 1e-3  # it moved
        after_reset, _ = model.step(spectra[:, 11], faces[:, 11], model.reset(state))
    for a, b in zip(fresh, after_reset):
        assert torch.equal(a, b)

    stream = GuardedStream(model)
    for t in range(11):
        stream.step(spectra[:, t], faces[:, t])
    stream.reset()
    out = stream.step(spectra[:, 11], faces[:, 11])
    for a, b in zip(fresh, out):
        assert torch.equal(a, b)


def test_reset_of_some_streams_only():
    model = _model("default")
    state = State(*(torch.rand(s.shape) for s in model.initial_state(2)))
    fresh = model.initial_state(2)
    half = model.reset(state, torch.tensor([False, True]))
    for h, s, f in zip(half, state, fresh):
        assert torch.equal(h[0], s[0]) and torch.equal(h[1], f[1])


def test_non_finite_values_are_caught_counted_and_reset():
    model = _model("default")
    spectra, faces = smooth_sequences(2, 6, seed=6)
    stream = GuardedStream(model, batch=2)
    for t in range(3):
        assert stream.step(spectra[:, t], faces[:, t]) is not None
    good_state = stream.state
    bad_spectrum = spectra[:, 3].clone()
    bad_spectrum[1, 100] = float("nan")
    assert stream.step(bad_spectrum, faces[:, 3]) is None  # not published
    assert stream.nonfinite_count == 1 and stream.nonfinite_per_stream == [0, 1]
    assert stream.last_valid.tolist() == [True, False]
    fresh = model.initial_state(2)
    for s, f, g in zip(stream.state, fresh, good_state):
        assert torch.equal(s[1], f[1])  # the bad stream was reset
        assert not torch.equal(s[0], g[0]) or s.shape[1] == 0  # the good one advanced
    bad_face = faces[:, 4].clone()
    bad_face[0, 0, 0, 0] = float("inf")
    assert stream.step(spectra[:, 4], bad_face) is None
    assert stream.nonfinite_count == 2 and stream.nonfinite_per_stream == [1, 1]
    out = stream.step(spectra[:, 5], faces[:, 5])
    assert out is not None and all(torch.isfinite(t).all() for t in out)

    def exploding(spectrum, face, state):  # a backend that produces NaN in its state
        out, next_state = model.step(spectrum, face, state)
        return out, next_state._replace(h_av=next_state.h_av * float("nan"))

    stream = GuardedStream(model, batch=2, step_fn=exploding)
    assert stream.step(spectra[:, 0], faces[:, 0]) is None
    assert stream.nonfinite_per_stream == [1, 1]
    assert all(torch.equal(s, f) for s, f in zip(stream.state, fresh))


@pytest.mark.parametrize("batch", [1, 4])
def test_step_exports_with_torch_export(batch):
    model = _model("default")
    program = model.export(batch)
    args = model.example_inputs(batch)
    spectra, faces = smooth_sequences(batch, 2, seed=7)
    args = (spectra[:, 0], faces[:, 0], *args[2:])
    with torch.no_grad():
        eager = model(*args)
        exported = program.module()(*args)
        # a second step from the exported program's own state
        eager2 = model(spectra[:, 1], faces[:, 1], *eager[8:])
        exported2 = program.module()(spectra[:, 1], faces[:, 1], *exported[8:])
    assert len(exported) == len(OUTPUT_NAMES) + len(STATE_NAMES)
    for a, b in zip((*eager, *eager2), (*exported, *exported2)):
        assert a.shape == b.shape and _max_abs(a, b) <= 1e-5


def test_face_conversions_round_trip():
    import numpy as np

    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    face = face_tensor_from_rgb(rgb)
    assert face.shape == (2, 3, 64, 64) and float(face.min()) >= -0.5 and float(face.max()) <= 0.5
    assert np.array_equal(face_rgb_from_tensor(face), rgb)
    assert face_tensor_from_rgb(rgb[0]).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError):
        face_tensor_from_rgb(rgb.astype(np.float32))
