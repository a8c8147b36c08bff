"""Model config tree and presets; the shape of every module's output for both presets."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from streamav.model.config import (EMOTION_LABELS, ModelConfig, MDVAEConfig,  # noqa: E402
                                   VisualVQVAEConfig, preset)
from streamav.model.mdvae import MDVAE  # noqa: E402
from streamav.model.profile import count_macs  # noqa: E402
from streamav.model.streaming import StreamingModel  # noqa: E402
from streamav.model.vqvae import AudioVQVAE, VisualVQVAE  # noqa: E402

PRESETS = ("paper", "default")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", PRESETS)
def test_config_round_trips_through_json(name):
    cfg = preset(name)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.preset == name


def test_paper_sizes_are_the_design_briefs():
    cfg = preset("paper")
    assert cfg.audio.channels == (16, 32, 32) and cfg.audio.residual_blocks == 1
    assert (cfg.audio.code_dim, cfg.audio.n_positions, cfg.audio.feature_dim) == (8, 64, 512)
    assert (cfg.audio.n_codes, cfg.audio.ema_decay, cfg.audio.commitment) == (64, 0.99, 0.25)
    assert cfg.visual.channels == (64, 128, 128, 128) and cfg.visual.residual_blocks == 2
    assert (cfg.visual.code_dim, cfg.visual.feature_dim, cfg.visual.n_codes) == (32, 2048, 512)
    m = cfg.mdvae
    assert (m.w_dim, m.z_av_dim, m.z_a_dim, m.z_v_dim, m.gru_hidden) == (84, 16, 8, 4, 128)
    assert m.visual_feature_hidden == (1024, 512) and m.posterior_hidden == (256, 128)
    assert m.audio_decoder_hidden == (128, 256) and m.visual_decoder_hidden == (512, 1024)
    assert cfg.emotion.labels == EMOTION_LABELS


def test_labels_are_the_corpus_labels():
    labels = pytest.importorskip("streamav.corpus.labels")
    assert EMOTION_LABELS == labels.EMOTIONS


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="visual_dim"):
        ModelConfig(mdvae=MDVAEConfig(visual_dim=1024))
    with pytest.raises(ValueError, match="ema_decay"):
        VisualVQVAEConfig(ema_decay=1.5).validate()
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**preset("paper").to_dict(), "surprise": 1})
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")


@pytest.mark.parametrize("name", PRESETS)
def test_vqvae_shapes(name):
    cfg = preset(name)
    audio, visual = AudioVQVAE(cfg.audio), VisualVQVAE(cfg.visual)
    spectrum = torch.rand(3, 513) + 1e-3
    face = torch.rand(3, 3, 64, 64) - 0.5
    feats_a = audio.encode(spectrum)
    assert audio.encoder(torch.zeros(3, 1, 513)).shape == (3, 8, 64)
    assert feats_a.shape == (3, 512)
    assert audio.decode_log(feats_a).shape == (3, 513)
    assert audio.decode(feats_a, audio.gain(spectrum)).shape == (3, 513)
    assert (audio.decode(feats_a, audio.gain(spectrum)) > 0).all()  # exp(): positive power
    vq = audio.quantize(feats_a)
    assert vq.quantized.shape == (3, 8, 64) and vq.indices.shape == (3, 64)
    assert audio.snap(feats_a).shape == (3, 512)
    out = audio(spectrum)
    assert out.log_power_hat.shape == (3, 513) and out.loss.ndim == 0
    # leading dims are kept
    assert audio.encode(spectrum.reshape(1, 3, 513)).shape == (1, 3, 512)

    feats_v = visual.encode(face)
    assert visual.encoder(face).shape == (3, 32, 8, 8) and feats_v.shape == (3, 2048)
    assert visual.decode(feats_v).shape == (3, 3, 64, 64)
    vq = visual.quantize(feats_v)
    assert vq.quantized.shape == (3, 32, 8, 8) and vq.indices.shape == (3, 8, 8)
    out = visual(face)
    assert out.face_hat.shape == (3, 3, 64, 64) and out.loss.ndim == 0


@pytest.mark.parametrize("name", PRESETS)
def test_mdvae_shapes(name):
    cfg = preset(name).mdvae
    model = MDVAE(cfg)
    B, T = 2, 5
    x_a, x_v = torch.randn(B, T, 512), torch.randn(B, T, 2048)
    seq = model(x_a, x_v)
    assert seq.w_mean.shape == seq.w_var.shape == seq.w.shape == (B, T, 84)
    assert seq.z_av.shape == seq.q_av.mean.shape == seq.p_av.logvar.shape == (B, T, 16)
    assert seq.z_a.shape == seq.q_a.logvar.shape == seq.p_a.mean.shape == (B, T, 8)
    assert seq.z_v.shape == seq.q_v.mean.shape == seq.p_v.mean.shape == (B, T, 4)
    assert seq.x_a_hat.shape == (B, T, 512) and seq.x_v_hat.shape == (B, T, 2048)
    assert [tuple(s.shape) for s in seq.state] == [(B, 128)] * 3 + [(B, 84)] * 2
    step, state = model.step(x_a[:, 0], x_v[:, 0], model.initial_state(B))
    assert [tuple(s.shape) for s in step] == [(B, 84), (B, 84), (B, 16), (B, 8), (B, 4),
                                              (B, 512), (B, 2048)]
    assert [tuple(s.shape) for s in state] == [(B, 128)] * 3 + [(B, 84)] * 2


@pytest.mark.parametrize("name", PRESETS)
def test_streaming_step_shapes(name):
    model = StreamingModel(preset(name)).eval()
    B = 3
    with torch.no_grad():
        out, state = model.step(torch.rand(B, 513), torch.rand(B, 3, 64, 64) - 0.5,
                                model.initial_state(B))
    assert out.face_hat.shape == (B, 3, 64, 64)
    assert float(out.face_hat.min()) >= -0.5 and float(out.face_hat.max()) <= 0.5
    assert out.spectrum_hat.shape == (B, 513)
    assert out.w_mean.shape == out.w_var.shape == (B, 84)
    assert (out.z_av.shape, out.z_a.shape, out.z_v.shape) == ((B, 16), (B, 8), (B, 4))
    assert out.emotion_probs.shape == (B, 8)
    assert torch.allclose(out.emotion_probs.sum(-1), torch.ones(B))
    n_means = len(model.cfg.refine.time_constants_s)
    assert [tuple(s.shape) for s in state] == [(B, 128)] * 3 + [(B, 84)] * 2 + [
        (B, 3 * n_means, 64, 64), (B, n_means)]  # + the identity path's running means


def test_default_preset_is_cheaper_than_paper():
    paper = count_macs(StreamingModel(preset("paper")))
    default = count_macs(StreamingModel(preset("default")))
    # the step decodes both the MDVAE's features and the input's own (the identity path's
    # candidates): the paper preset's decoder counts twice; the identity path adds ~42 M to both
    assert 245e6 < paper["total"] < 265e6
    assert default["total"] < 0.5 * paper["total"]
    # the presets differ in the visual VQ-VAE only
    for group in ("audio.encoder", "audio.decoder", "mdvae.visual_features", "mdvae.decoder_v"):
        assert default[group] == paper[group]
