"""Training: the VQ-VAE and MDVAE losses fall on a small fixed synthetic batch; the EMA codebook
restarts dead codes; the MDVAE loss is a proper negative ELBO (finite, KL terms >= 0)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from streamav.model.config import preset  # noqa: E402
from streamav.model.mdvae import MDVAE, mdvae_loss  # noqa: E402
from streamav.model.vqvae import AudioVQVAE, VectorQuantizerEMA, VisualVQVAE  # noqa: E402
from streamav.model.synthetic import smooth_faces, smooth_sequences, smooth_spectra  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(model: torch.nn.Module, loss_fn, steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _falls(losses: list[float], factor: float) -> bool:
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    return last < factor * first


def test_audio_vqvae_loss_falls():
    torch.manual_seed(0)
    model = AudioVQVAE(preset("default").audio).train()
    spectra = smooth_spectra(32, seed=1)
    losses = _train(model, lambda: model(spectra).loss, 30, 3e-3)
    assert all(l == l for l in losses)  # no NaN
    assert _falls(losses, 0.7), losses


def test_visual_vqvae_loss_falls():
    torch.manual_seed(0)
    model = VisualVQVAE(preset("default").visual).train()
    faces = smooth_faces(16, seed=2)
    losses = _train(model, lambda: model(faces).loss, 30, 2e-3)
    assert _falls(losses, 0.5), losses


def test_mdvae_loss_falls_with_frozen_vqvaes():
    """Stage 2 as the paper trains it: VQ-VAEs frozen, the MDVAE on their pre-quantisation
    features, IS divergence on the spectra its audio features decode to."""
    torch.manual_seed(0)
    cfg = preset("default")
    audio, visual = AudioVQVAE(cfg.audio).eval(), VisualVQVAE(cfg.visual).eval()
    for p in (*audio.parameters(), *visual.parameters()):
        p.requires_grad_(False)
    mdvae = MDVAE(cfg.mdvae).train()
    spectra, faces = smooth_sequences(4, 15, seed=3)
    with torch.no_grad():
        x_a, x_v = audio.encode(spectra), visual.encode(faces)  # (4, 15, 512), (4, 15, 2048)
        target = audio.normalized_target(spectra)
    parts = []

    def loss_fn():
        out = mdvae(x_a, x_v, sample=True)
        loss = mdvae_loss(out, x_v, target, audio.decode_log(out.x_a_hat))
        parts.append(type(loss)(*(v.detach() for v in loss)))
        return loss.total

    losses = _train(mdvae, loss_fn, 30, 1e-3)
    assert all(torch.isfinite(p.total) for p in parts)
    assert all(float(k) >= 0 for p in parts for k in (p.kl_w, p.kl_av, p.kl_a, p.kl_v))
    assert _falls(losses, 0.9), losses  # IS dominates, bounded below by the random decoder
    assert float(parts[-1].visual_se) < 0.2 * float(parts[0].visual_se)
    assert all(p.grad is None for p in audio.parameters())  # frozen stayed frozen


def test_ema_codebook_restarts_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(n_codes=16, code_dim=4, decay=0.9, commitment=0.25,
                            dead_code_threshold=1.0).train()
    cluster = torch.randn(256, 4, 1) * 0.01 + 5.0  # every vector in one tight cluster
    out = vq(cluster)  # first call: every code not picked has no use yet: restarted on the batch
    assert int(out.n_restarted) == 16 - torch.unique(out.indices).numel()
    assert float((vq.codebook - 5.0).abs().max()) < 0.1  # the codebook now lives on the data
    for _ in range(10):
        out = vq(cluster)
    assert torch.unique(out.indices).numel() >= 8  # the restarted codes share the cluster
    moved = torch.randn(256, 4, 1) - 5.0  # the data moves far away: one code wins everything,
    restarted = 0  # the others see no use, their EMA count decays below 1, they are restarted
    for _ in range(60):
        out = vq(moved)
        restarted += int(out.n_restarted)
    assert restarted >= 8
    assert torch.unique(out.indices).numel() >= 8 and float(out.perplexity) > 4.0
    assert float((vq.codebook + 5.0).abs().max()) < 4.5  # every code followed the data
    assert out.quantized.shape == moved.shape


def test_vq_eval_mode_does_not_touch_the_codebook():
    vq = VectorQuantizerEMA(8, 4, 0.99, 0.25, 1.0).eval()
    before = vq.codebook.clone()
    out = vq(torch.randn(10, 4, 3))
    assert torch.equal(before, vq.codebook) and int(out.n_restarted) == 0
    assert out.indices.shape == (10, 3)


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = VisualVQVAE(preset("default").visual).train()
    model(smooth_faces(4)).loss.backward()
    assert model.encoder.conv1.weight.grad is not None
    assert float(model.encoder.conv1.weight.grad.abs().sum()) > 0


def test_refine_stage_learns_to_denoise_with_the_rest_frozen():
    """The identity path's fusion: on noisy sequences of smooth faces, its loss falls and beats
    the noisy input, and the frozen parts of the model do not move."""
    import numpy as np

    from streamav.model.streaming import StreamingModel
    from streamav.train.stages import refine_loss

    torch.manual_seed(0)
    model = StreamingModel(preset("default")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("refine.")}
    spectra, clean = smooth_sequences(2, 12, seed=5)
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
             ).clamp(-0.5, 0.5)
    batch = {"spectrum": spectra, "face_input": noisy, "face_clean": clean}
    noisy_mse = float((noisy - clean).pow(2).mean())
    model.refine.train()
    opt = torch.optim.Adam(model.refine.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, parts = refine_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["mse"])
    assert np.isfinite(losses).all()
    assert _falls(losses, 0.5), losses
    assert losses[-1] < 0.5 * noisy_mse, (losses[-1], noisy_mse)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
