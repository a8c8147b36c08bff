"""Stage 2: the multimodal dynamical VAE (MDVAE) with a causal, bounded estimate of w.

Per frame t the MDVAE reads the audio VQ-VAE's pre-quantisation features x_a_t (512-d) and the
visual ones x_v_t (2048-d, through an MLP to v_t). Latents: w (static: identity, global emotion),
z_av_t (dynamics shared by both modalities), z_a_t (audio only), z_v_t (visual only).

Generative model:  p(w) = N(0, I);  p(z*_t | z*_<t) = N(prior MLP(h*_{t-1})), h*_t = GRU(z*_t, h*_{t-1});
x_a_t ~ decoder_a([z_a_t, w, z_av_t]) (IS divergence on the spectrum it decodes to),
x_v_t ~ decoder_v([z_v_t, w, z_av_t]) (squared error on the features).

Inference: q(z_av_t | h_av, w, x_a_t, v_t), q(z_a_t | h_a, z_av_t, w, x_a_t),
q(z_v_t | h_v, z_av_t, w, v_t); each GRU is shared by prior and posterior and advanced with the
posterior sample (training) or mean (deterministic inference).

Causal w (the paper's q(w) is a bidirectional GRU over the whole sequence, which is not causal):
each frame gives Gaussian evidence about w, mean m_t and diagonal precision l_t (bounded MLP
outputs); the evidence is accumulated with exponential forgetting rho = exp(-1 / (tau * fps)):

    Lambda_t = rho * Lambda_{t-1} + l_t,      eta_t = rho * eta_{t-1} + l_t * m_t
    q(w | x_<=t) = N(eta_t / (1 + Lambda_t), 1 / (1 + Lambda_t))   (the 1 is the N(0, I) prior)

This is a precision-weighted product of the per-frame Gaussians over an exponentially decaying
window. The state carried between frames is the posterior itself (mean and variance, two w-sized
vectors, O(1) per frame); in natural parameters it is a stable linear filter (rho < 1, with
l_t and m_t bounded), so it stays in a fixed box for ever, rounding errors are forgotten and it
cannot drift: 1 / (1 + max(l) / (1 - rho)) <= var <= 1 and |mean| < w_mean_bound. Training decodes frame t with w_t = q(w | x_<=t), so every
frame of a window is a "random prefix" and training sees exactly what inference computes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from streamav.model.config import MDVAEConfig
from streamav.model.vqvae import itakura_saito


class MDVAEState(NamedTuple):
    """The recurrent state between frames; every tensor (B, .), bounded by construction."""

    h_av: Tensor  # (B, H) GRU state of z_av, in [-1, 1]
    h_a: Tensor  # (B, H)
    h_v: Tensor  # (B, H)
    w_mean: Tensor  # (B, W) mean of q(w | x_<=t)
    w_var: Tensor  # (B, W) its variance, in (0, 1]


class MDVAEStep(NamedTuple):
    """Deterministic per-frame outputs (posterior means)."""

    w_mean: Tensor  # (B, W)
    w_var: Tensor  # (B, W)
    z_av: Tensor  # (B, Zav)
    z_a: Tensor  # (B, Za)
    z_v: Tensor  # (B, Zv)
    x_a_hat: Tensor  # (B, 512) reconstructed audio features
    x_v_hat: Tensor  # (B, 2048) reconstructed visual features


class Gaussian(NamedTuple):
    mean: Tensor
    logvar: Tensor


class MDVAESequence(NamedTuple):
    """Whole-window outputs, every tensor (B, T, .)."""

    w_mean: Tensor
    w_var: Tensor
    w: Tensor  # the w decoded with: a sample (sample=True) or w_mean
    z_av: Tensor  # samples or means
    z_a: Tensor
    z_v: Tensor
    q_av: Gaussian
    q_a: Gaussian
    q_v: Gaussian
    p_av: Gaussian  # learned priors p(z_t | h_{t-1})
    p_a: Gaussian
    p_v: Gaussian
    x_a_hat: Tensor  # (B, T, 512)
    x_v_hat: Tensor  # (B, T, 2048)
    state: MDVAEState  # after the last frame


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

class GRUCell(nn.Module):
    """One GRU step with the hidden state as input and output (PyTorch's gate equations).

    Written out rather than nn.GRUCell so that export sees plain matmuls and pointwise ops.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.ih = nn.Linear(input_dim, 3 * hidden_dim)
        self.hh = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        # x: (B, I), h: (B, H) → (B, H)
        i_r, i_z, i_n = self.ih(x).chunk(3, dim=-1)
        h_r, h_z, h_n = self.hh(h).chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h


def mlp(sizes: tuple[int, ...], activation: type[nn.Module], final_activation: bool) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between (and after, if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


class PriorNet(nn.Module):
    """p(z_t | h_{t-1}): h → tanh(Linear) → mean, log-variance."""

    def __init__(self, hidden_dim: int, mlp_dim: int, z_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_dim, mlp_dim)
        self.out = nn.Linear(mlp_dim, 2 * z_dim)

    def forward(self, h: Tensor) -> Gaussian:
        mean, logvar = self.out(torch.tanh(self.fc(h))).chunk(2, dim=-1)
        return Gaussian(mean, logvar)


class PosteriorNet(nn.Module):
    """q(z_t | recurrent part r_t, context c_t): MLP over [r_t, c_t] (tanh) → mean, log-variance.

    The first layer is split in two: the context part (w_t and the frame's features, known for
    all t in advance) is projected by `project` for a whole window at once; only the recurrent
    part (h_{t-1}, and z_av_t for z_a and z_v) is computed inside the time loop.
    """

    def __init__(self, recurrent_dim: int, context_dim: int, hidden: tuple[int, int],
                 z_dim: int) -> None:
        super().__init__()
        self.fc_recurrent = nn.Linear(recurrent_dim, hidden[0], bias=False)
        self.fc_context = nn.Linear(context_dim, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.out = nn.Linear(hidden[1], 2 * z_dim)

    def project(self, context: Tensor) -> Tensor:
        return self.fc_context(context)  # (..., hidden0)

    def forward(self, recurrent: Tensor, context_proj: Tensor) -> Gaussian:
        a = torch.tanh(self.fc_recurrent(recurrent) + context_proj)
        mean, logvar = self.out(torch.tanh(self.fc2(a))).chunk(2, dim=-1)
        return Gaussian(mean, logvar)


class WEvidence(nn.Module):
    """One frame's Gaussian evidence about w: [x_a, v] → mean (|m| < bound), precision in range."""

    def __init__(self, cfg: MDVAEConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.audio_dim + cfg.visual_feature_dim, cfg.w_evidence_hidden)
        self.out = nn.Linear(cfg.w_evidence_hidden, 2 * cfg.w_dim)
        self.mean_bound = cfg.w_mean_bound
        self.prec_min, self.prec_max = cfg.w_precision_min, cfg.w_precision_max
        # start with each frame worth about precision 1 (not mid-range: 50 per frame would make
        # q(w) far too confident after a few frames, and the KL to N(0, I) huge)
        with torch.no_grad():
            start = (1.0 - self.prec_min) / (self.prec_max - self.prec_min)
            self.out.bias[cfg.w_dim:] = torch.logit(torch.tensor(start))

    def forward(self, x_a: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        raw_mean, raw_prec = self.out(torch.tanh(self.fc(torch.cat([x_a, v], -1)))).chunk(2, -1)
        mean = self.mean_bound * torch.tanh(raw_mean / self.mean_bound)
        prec = self.prec_min + (self.prec_max - self.prec_min) * torch.sigmoid(raw_prec)
        return mean, prec


def w_natural(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior (mean, var) → the accumulated evidence (eta, Lambda), the prior taken out."""
    return mean / var, 1.0 / var - 1.0


def w_posterior(eta: Tensor, prec: Tensor) -> tuple[Tensor, Tensor]:
    """(eta, Lambda) → mean, variance of q(w | past) including the N(0, I) prior."""
    total = 1.0 + prec
    return eta / total, 1.0 / total


def w_filter_step(mean: Tensor, var: Tensor, mean_t: Tensor, prec_t: Tensor,
                  rho: float) -> tuple[Tensor, Tensor]:
    """One frame of the decayed product of Gaussians: q(w | x_<t) → q(w | x_<=t) (mean, var)."""
    eta, prec = w_natural(mean, var)
    return w_posterior(rho * eta + prec_t * mean_t, rho * prec + prec_t)


def w_filter_scan(eta0: Tensor, prec0: Tensor, mean: Tensor, prec: Tensor, rho: float,
                  chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The same recursion over a whole window, vectorised in chunks of time.

    eta0, prec0 (B, W); mean, prec (B, T, W) → eta, Lambda (B, T, W) after each frame. Within a
    chunk y_t = sum_{s<=t} rho^(t-s) x_s + rho^(t+1) y_init is one matmul with a lower-triangular
    decay matrix; chunks keep rho^chunk well away from underflow for any T.
    """
    T = mean.shape[1]
    n = min(chunk, T)
    steps = torch.arange(n, device=mean.device, dtype=mean.dtype)
    lag = steps[:, None] - steps[None, :]  # (n, n) t - s
    decay = torch.where(lag >= 0, torch.pow(rho, lag.clamp_min(0)), torch.zeros_like(lag))
    carry = torch.pow(rho, steps + 1.0)[None, :, None]  # (1, n, 1) rho^(t+1)
    etas, precs = [], []
    eta_prev, prec_prev = eta0, prec0
    for start in range(0, T, n):
        m_c, l_c = mean[:, start:start + n], prec[:, start:start + n]
        k = m_c.shape[1]
        d, c = decay[:k, :k], carry[:, :k]
        eta_c = torch.einsum("ts,bsw->btw", d, l_c * m_c) + c * eta_prev[:, None]
        prec_c = torch.einsum("ts,bsw->btw", d, l_c) + c * prec_prev[:, None]
        etas.append(eta_c)
        precs.append(prec_c)
        eta_prev, prec_prev = eta_c[:, -1], prec_c[:, -1]
    return torch.cat(etas, 1), torch.cat(precs, 1)


def gaussian_kl(q: Gaussian, p: Gaussian) -> Tensor:
    """KL(q || p) of diagonal Gaussians, summed over the last dim."""
    return 0.5 * (p.logvar - q.logvar
                  + (q.logvar.exp() + (q.mean - p.mean).pow(2)) / p.logvar.exp() - 1.0).sum(-1)


def _reparameterize(g: Gaussian, sample: bool) -> Tensor:
    if not sample:
        return g.mean
    return g.mean + torch.exp(0.5 * g.logvar) * torch.randn_like(g.mean)


# ---------------------------------------------------------------------------------------------
# The MDVAE
# ---------------------------------------------------------------------------------------------

class MDVAE(nn.Module):
    """The MDVAE on VQ-VAE features: `forward` over windows (training, batched inference),
    `step` for one frame (streaming). Both are causal and share every weight."""

    def __init__(self, cfg: MDVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H, W = cfg.gru_hidden, cfg.w_dim
        A, V = cfg.audio_dim, cfg.visual_feature_dim
        Zav, Za, Zv = cfg.z_av_dim, cfg.z_a_dim, cfg.z_v_dim
        self.visual_features = mlp((cfg.visual_dim, *cfg.visual_feature_hidden), nn.ReLU, True)
        self.w_evidence = WEvidence(cfg)
        # dynamical latents: GRU (shared), prior, posterior
        self.gru_av, self.gru_a, self.gru_v = GRUCell(Zav, H), GRUCell(Za, H), GRUCell(Zv, H)
        self.prior_av = PriorNet(H, cfg.prior_hidden, Zav)
        self.prior_a = PriorNet(H, cfg.prior_hidden, Za)
        self.prior_v = PriorNet(H, cfg.prior_hidden, Zv)
        self.post_av = PosteriorNet(H, W + A + V, cfg.posterior_hidden, Zav)
        self.post_a = PosteriorNet(H + Zav, W + A, cfg.posterior_hidden, Za)
        self.post_v = PosteriorNet(H + Zav, W + V, cfg.posterior_hidden, Zv)
        # decoders
        self.decoder_a = mlp((Za + W + Zav, *cfg.audio_decoder_hidden, A), nn.Tanh, False)
        self.decoder_v = mlp((Zv + W + Zav, *cfg.visual_decoder_hidden, cfg.visual_dim),
                             nn.ReLU, False)
        self.rho = cfg.w_decay

    def initial_state(self, batch: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> MDVAEState:
        """Zero GRU states and no evidence about w (q(w) = the prior N(0, I))."""
        h = torch.zeros(batch, self.cfg.gru_hidden, device=device, dtype=dtype)
        w_mean = torch.zeros(batch, self.cfg.w_dim, device=device, dtype=dtype)
        return MDVAEState(h, h.clone(), h.clone(), w_mean, torch.ones_like(w_mean))

    def decode(self, z_a: Tensor, z_v: Tensor, w: Tensor, z_av: Tensor) -> tuple[Tensor, Tensor]:
        """(…, Za), (…, Zv), (…, W), (…, Zav) → x_a_hat (…, 512), x_v_hat (…, 2048)."""
        x_a_hat = self.decoder_a(torch.cat([z_a, w, z_av], -1))
        x_v_hat = self.decoder_v(torch.cat([z_v, w, z_av], -1))
        return x_a_hat, x_v_hat

    # -- one frame (the streaming step) ---------------------------------------------------------

    def step(self, x_a: Tensor, x_v: Tensor, state: MDVAEState) -> tuple[MDVAEStep, MDVAEState]:
        """One frame, deterministic: x_a (B, 512), x_v (B, 2048) → outputs, next state."""
        v = self.visual_features(x_v)  # (B, 512)
        m_t, l_t = self.w_evidence(x_a, v)  # (B, W) each
        w_mean, w_var = w_filter_step(state.w_mean, state.w_var, m_t, l_t, self.rho)
        z_av = self.post_av(state.h_av, self.post_av.project(torch.cat([w_mean, x_a, v], -1))).mean
        z_a = self.post_a(torch.cat([state.h_a, z_av], -1),
                          self.post_a.project(torch.cat([w_mean, x_a], -1))).mean
        z_v = self.post_v(torch.cat([state.h_v, z_av], -1),
                          self.post_v.project(torch.cat([w_mean, v], -1))).mean
        next_state = MDVAEState(self.gru_av(z_av, state.h_av), self.gru_a(z_a, state.h_a),
                                self.gru_v(z_v, state.h_v), w_mean, w_var)
        x_a_hat, x_v_hat = self.decode(z_a, z_v, w_mean, z_av)
        return MDVAEStep(w_mean, w_var, z_av, z_a, z_v, x_a_hat, x_v_hat), next_state

    # -- a whole window (training, and the batched causal path) ---------------------------------

    def forward(self, x_a: Tensor, x_v: Tensor, state: MDVAEState | None = None,
                sample: bool = True) -> MDVAESequence:
        """x_a (B, T, 512), x_v (B, T, 2048) → every frame's latents and reconstructions.

        sample=True: reparameterised samples (training; one draw of w's noise per sequence,
        scaled by each frame's causal posterior); sample=False: posterior means, which is
        exactly what `step` computes frame by frame.
        """
        B, T, _ = x_a.shape
        if state is None:
            state = self.initial_state(B, x_a.device, x_a.dtype)
        v = self.visual_features(x_v)  # (B, T, 512), all frames at once
        ev_mean, ev_prec = self.w_evidence(x_a, v)  # (B, T, W) each
        w_mean, w_var = w_posterior(*w_filter_scan(*w_natural(state.w_mean, state.w_var),
                                                     ev_mean, ev_prec, self.rho))
        w = w_mean + w_var.sqrt() * torch.randn_like(w_mean[:, :1]) if sample else w_mean
        ctx_av = self.post_av.project(torch.cat([w, x_a, v], -1))  # (B, T, 256), batched
        ctx_a = self.post_a.project(torch.cat([w, x_a], -1))
        ctx_v = self.post_v.project(torch.cat([w, v], -1))

        h_av, h_a, h_v = state.h_av, state.h_a, state.h_v
        rows: list[tuple[Tensor, ...]] = []
        for t in range(T):  # the recurrence itself: only what depends on h_{t-1}
            q_av = self.post_av(h_av, ctx_av[:, t])
            z_av = _reparameterize(q_av, sample)
            q_a = self.post_a(torch.cat([h_a, z_av], -1), ctx_a[:, t])
            q_v = self.post_v(torch.cat([h_v, z_av], -1), ctx_v[:, t])
            z_a, z_v = _reparameterize(q_a, sample), _reparameterize(q_v, sample)
            rows.append((h_av, h_a, h_v, z_av, z_a, z_v, *q_av, *q_a, *q_v))  # h is h_{t-1}
            h_av, h_a, h_v = self.gru_av(z_av, h_av), self.gru_a(z_a, h_a), self.gru_v(z_v, h_v)
        (hp_av, hp_a, hp_v, z_av, z_a, z_v, qm_av, qv_av, qm_a, qv_a, qm_v, qv_v) = (
            torch.stack(column, 1) for column in zip(*rows))  # each (B, T, .)
        # the priors depend on h_{t-1} only: all frames at once after the loop
        p_av, p_a, p_v = self.prior_av(hp_av), self.prior_a(hp_a), self.prior_v(hp_v)
        x_a_hat, x_v_hat = self.decode(z_a, z_v, w, z_av)
        final = MDVAEState(h_av, h_a, h_v, w_mean[:, -1], w_var[:, -1])
        return MDVAESequence(w_mean, w_var, w, z_av, z_a, z_v, Gaussian(qm_av, qv_av),
                             Gaussian(qm_a, qv_a), Gaussian(qm_v, qv_v), p_av, p_a, p_v,
                             x_a_hat, x_v_hat, final)


# ---------------------------------------------------------------------------------------------
# The training objective
# ---------------------------------------------------------------------------------------------

class MDVAELoss(NamedTuple):
    total: Tensor  # () negative ELBO per frame
    audio_is: Tensor  # () IS divergence per frame (summed over bins)
    visual_se: Tensor  # () squared error per frame (summed over features)
    kl_w: Tensor  # () KL(q(w | x_<=t) || N(0, I)), averaged over prefixes t, per sequence
    kl_av: Tensor  # () per frame
    kl_a: Tensor
    kl_v: Tensor


def mdvae_loss(out: MDVAESequence, x_v: Tensor, audio_target: Tensor, log_power_hat: Tensor,
               beta: float = 1.0) -> MDVAELoss:
    """Negative ELBO per frame (beta 1 by default).

    x_v (B, T, 2048): the visual features the MDVAE read (targets of the squared error).
    audio_target (B, T, 513): the gain-normalised power P / g + floor (AudioVQVAE.normalized_target).
    log_power_hat (B, T, 513): AudioVQVAE.decode_log(out.x_a_hat), the spectrum the MDVAE's
    audio features decode to: the IS divergence is measured on spectra, as in the paper.

    Per-frame terms are averaged over B * T frames; KL(q(w) || p(w)) counts once per window of T
    frames (so it is divided by T), and, w being causal, it is the average over the window's
    prefixes of KL(q(w | x_<=t) || N(0, I)). (The paper's code divides the w term by B only, i.e.
    weights it T times more than the ELBO does; pass beta or scale it yourself to reproduce that.)
    """
    T = x_v.shape[1]
    audio_is = itakura_saito(audio_target, log_power_hat).mean()
    visual_se = (out.x_v_hat - x_v).pow(2).sum(-1).mean()
    zeros = torch.zeros_like(out.w_mean)
    kl_w = gaussian_kl(Gaussian(out.w_mean, out.w_var.log()), Gaussian(zeros, zeros)).mean()
    kl_av = gaussian_kl(out.q_av, out.p_av).mean()
    kl_a = gaussian_kl(out.q_a, out.p_a).mean()
    kl_v = gaussian_kl(out.q_v, out.p_v).mean()
    total = audio_is + visual_se + beta * (kl_w / T + kl_av + kl_a + kl_v)
    return MDVAELoss(total, audio_is, visual_se, kl_w, kl_av, kl_a, kl_v)
