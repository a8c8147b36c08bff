#!/usr/bin/env python3
"""Issue #10 item 1, design (a): face geometry as a third observed modality of the MDVAE.

An experiment, not part of the package. The shipped MDVAE (streamav/data/model/) is wrapped by
`GeometryMDVAE`: the frame's pose-normalised geometry (the 936 numbers of the estimator's
"geometry" group, streamav.emotion.features.geometry_features, standardised on the training
frames) enters

  - the evidence about w (added to the first layer of `w_evidence`),
  - the contexts of q(z_av) and q(z_v) (added to their first layers),

through a shared tanh encoder 936 -> 128 and three projections initialised at ZERO (so the
variant starts as exactly the shipped MDVAE), and is reconstructed from [z_v, w, z_av] (the
visual decoder's input) by a small decoder 104 -> 256 -> 936 with a unit-variance Gaussian
(squared error) term weighted by --geo-weight. w stays the causal exponentially-forgotten
product of Gaussians (docs/model.md "Causal w"); `forward(..., sample=False)` is the causal
path `run_sequence` uses. The VQ-VAEs are frozen; every MDVAE weight is fine-tuned on the
train split of the emotion cache (windows of 30 frames, half with a corrupted face input as
the shipped mdvae stage does), under a wall-time cap, checkpointed so that a rerun resumes.

Then the ablation of `streamav eval --emotion-train-cache` (streamav/evaluate/emotion.py,
`estimator_section`: `fit_estimator` per feature-group set on the cache's train / val speakers,
new person online at 0.5 / 1 / 2 s, ECE, per-user k = 2 one draw) on the fresh speakers of
--eval-cache, with w from the shipped MDVAE and from the variant side by side, and the
reconstruction of both on a few val clips.

    nice -n 10 .venv/bin/python scripts/ablate_mdvae_geometry.py --minutes 40
    (--minutes 2 --out out/geom_mdvae/smoke for a smoke run; --skip-train to only measure)
    nice -n 10 .venv/bin/python scripts/ablate_mdvae_geometry.py --control --minutes 40 \
        --out out/geom_mdvae/control   (the same fine-tuning with no geometry: separates what
                                        geometry brings from what fine-tuning on the corpus does)

Writes OUT/checkpoint.safetensors, OUT/progress.json (loss history), OUT/results.json and
OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from streamav.emotion.features import GEOMETRY_DIM, geometry_features
from streamav.model.io import load_model
from streamav.model.mdvae import (MDVAE, Gaussian, MDVAESequence, MDVAEState, _reparameterize,
                                  mdvae_loss, mlp, w_filter_scan, w_natural, w_posterior)
from streamav.model.streaming import StepOutputs, StreamingModel
from streamav.train.sequences import ClipSequence, load_clips

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "streamav" / "data" / "model"
GEO_HIDDEN = 128
GEO_DECODER_HIDDEN = 256


# ---------------------------------------------------------------------------------------------
# The variant
# ---------------------------------------------------------------------------------------------

class GeometryMDVAE(MDVAE):
    """The MDVAE with geometry (standardised, (B, T, 936)) as a third observed modality."""

    def __init__(self, cfg, geo_dim: int = GEOMETRY_DIM, use_geometry: bool = True) -> None:
        super().__init__(cfg)
        self.use_geometry = use_geometry  # False: the control (geometry input zero, not trained)
        W, Zav, Zv = cfg.w_dim, cfg.z_av_dim, cfg.z_v_dim
        self.register_buffer("geo_mean", torch.zeros(geo_dim))
        self.register_buffer("geo_scale", torch.ones(geo_dim))
        self.geo_encoder = nn.Sequential(nn.Linear(geo_dim, GEO_HIDDEN), nn.Tanh())
        self.geo_to_w = nn.Linear(GEO_HIDDEN, cfg.w_evidence_hidden, bias=False)
        self.geo_to_av = nn.Linear(GEO_HIDDEN, cfg.posterior_hidden[0], bias=False)
        self.geo_to_v = nn.Linear(GEO_HIDDEN, cfg.posterior_hidden[0], bias=False)
        for layer in (self.geo_to_w, self.geo_to_av, self.geo_to_v):
            nn.init.zeros_(layer.weight)  # the variant starts as the shipped MDVAE
        self.decoder_g = mlp((Zv + W + Zav, GEO_DECODER_HIDDEN, geo_dim), nn.ReLU, False)

    def standardise(self, geometry: Tensor, face_found: Tensor) -> Tensor:
        """(…, 936) geometry_features → standardised, 0 (the training mean) where no face."""
        if not self.use_geometry:
            return torch.zeros_like(geometry)
        g = (geometry - self.geo_mean) / self.geo_scale
        return g * face_found[..., None].to(g.dtype)

    def _w_evidence(self, x_a: Tensor, v: Tensor, gh: Tensor) -> tuple[Tensor, Tensor]:
        e = self.w_evidence
        hidden = torch.tanh(e.fc(torch.cat([x_a, v], -1)) + self.geo_to_w(gh))
        raw_mean, raw_prec = e.out(hidden).chunk(2, -1)
        mean = e.mean_bound * torch.tanh(raw_mean / e.mean_bound)
        prec = e.prec_min + (e.prec_max - e.prec_min) * torch.sigmoid(raw_prec)
        return mean, prec

    def forward(self, x_a: Tensor, x_v: Tensor, g: Tensor, state: MDVAEState | None = None,
                sample: bool = True) -> tuple[MDVAESequence, Tensor]:
        """MDVAE.forward with geometry g (B, T, 936) standardised; also returns g_hat."""
        B, T, _ = x_a.shape
        if state is None:
            state = self.initial_state(B, x_a.device, x_a.dtype)
        v = self.visual_features(x_v)
        gh = self.geo_encoder(g)
        ev_mean, ev_prec = self._w_evidence(x_a, v, gh)
        w_mean, w_var = w_posterior(*w_filter_scan(*w_natural(state.w_mean, state.w_var),
                                                     ev_mean, ev_prec, self.rho))
        w = w_mean + w_var.sqrt() * torch.randn_like(w_mean[:, :1]) if sample else w_mean
        ctx_av = self.post_av.project(torch.cat([w, x_a, v], -1)) + self.geo_to_av(gh)
        ctx_a = self.post_a.project(torch.cat([w, x_a], -1))
        ctx_v = self.post_v.project(torch.cat([w, v], -1)) + self.geo_to_v(gh)
        h_av, h_a, h_v = state.h_av, state.h_a, state.h_v
        rows = []
        for t in range(T):
            q_av = self.post_av(h_av, ctx_av[:, t])
            z_av = _reparameterize(q_av, sample)
            q_a = self.post_a(torch.cat([h_a, z_av], -1), ctx_a[:, t])
            q_v = self.post_v(torch.cat([h_v, z_av], -1), ctx_v[:, t])
            z_a, z_v = _reparameterize(q_a, sample), _reparameterize(q_v, sample)
            rows.append((h_av, h_a, h_v, z_av, z_a, z_v, *q_av, *q_a, *q_v))
            h_av, h_a, h_v = self.gru_av(z_av, h_av), self.gru_a(z_a, h_a), self.gru_v(z_v, h_v)
        (hp_av, hp_a, hp_v, z_av, z_a, z_v, qm_av, qv_av, qm_a, qv_a, qm_v, qv_v) = (
            torch.stack(column, 1) for column in zip(*rows))
        p_av, p_a, p_v = self.prior_av(hp_av), self.prior_a(hp_a), self.prior_v(hp_v)
        x_a_hat, x_v_hat = self.decode(z_a, z_v, w, z_av)
        g_hat = self.decoder_g(torch.cat([z_v, w, z_av], -1))
        final = MDVAEState(h_av, h_a, h_v, w_mean[:, -1], w_var[:, -1])
        seq = MDVAESequence(w_mean, w_var, w, z_av, z_a, z_v, Gaussian(qm_av, qv_av),
                            Gaussian(qm_a, qv_a), Gaussian(qm_v, qv_v), p_av, p_a, p_v,
                            x_a_hat, x_v_hat, final)
        return seq, g_hat


def geometry_se(g_hat: Tensor, g: Tensor, face_found: Tensor) -> Tensor:
    """Squared error summed over the 936 standardised numbers, averaged over frames with a face."""
    mask = face_found.to(g.dtype)
    return ((g_hat - g).pow(2).sum(-1) * mask).sum() / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Training data: every train window encoded once by the frozen encoders
# ---------------------------------------------------------------------------------------------

def clip_geometry(clip: ClipSequence) -> np.ndarray:
    """(T, 936) the estimator's geometry features (NaN mesh points as 0, as clip_frames does)."""
    return geometry_features(np.nan_to_num(clip.mesh_crop_xy))


def build_bank(model: StreamingModel, clips: list[ClipSequence], window: int, seed: int) -> dict:
    """Windows (stride window / 2, every frame with a face) of the train clips, encoded."""
    from streamav.corpus.dataset import face_to_model
    from streamav.train.stages import _corrupt_faces

    rng = np.random.default_rng(seed + 1)
    cols: dict[str, list[Tensor]] = {k: [] for k in
                                     ("x_a", "x_v_clean", "x_v_input", "audio_target", "geo")}
    with torch.no_grad():
        for clip in clips:
            found = clip.face_found
            geo = torch.from_numpy(clip_geometry(clip))
            spec = torch.from_numpy(clip.spectrum)
            faces = torch.from_numpy(face_to_model(clip.face_crop_rgb))
            x_a, target = model.audio.encode(spec), model.audio.normalized_target(spec)
            x_v = model.visual.encode(faces)
            for start in range(0, len(found) - window + 1, max(1, window // 2)):
                sl = slice(start, start + window)
                if not found[sl].all():
                    continue
                noisy = _corrupt_faces(faces[sl][None], rng)[0]
                cols["x_a"].append(x_a[sl])
                cols["audio_target"].append(target[sl])
                cols["x_v_clean"].append(x_v[sl])
                cols["x_v_input"].append(model.visual.encode(noisy))
                cols["geo"].append(geo[sl])
    # VQ features as float16 (half the memory, as the shipped mdvae stage); the IS target and
    # the geometry (small spreads around ~0.5) float32
    bank = {k: torch.stack(v).to(torch.float32 if k in ("audio_target", "geo") else torch.float16)
            for k, v in cols.items()}
    flat = torch.stack(cols["geo"]).reshape(-1, GEOMETRY_DIM).double()
    bank["geo_mean"] = flat.mean(0).float()
    bank["geo_scale"] = (flat.std(0) + 1e-3).float()
    return bank


# ---------------------------------------------------------------------------------------------
# Training under a wall-time cap, resumable
# ---------------------------------------------------------------------------------------------

GEO_PARTS = ("geo_mean", "geo_scale", "geo_encoder", "geo_to_w", "geo_to_av", "geo_to_v",
             "decoder_g")


def variant_from(shipped: StreamingModel, geo_mean: Tensor, geo_scale: Tensor,
                 use_geometry: bool = True) -> GeometryMDVAE:
    variant = GeometryMDVAE(shipped.cfg.mdvae, use_geometry=use_geometry)
    missing, unexpected = variant.load_state_dict(shipped.mdvae.state_dict(), strict=False)
    new = {n for n in missing if n.split(".")[0] in GEO_PARTS}
    assert not unexpected and set(missing) == new, (missing, unexpected)
    variant.geo_mean.copy_(geo_mean)
    variant.geo_scale.copy_(geo_scale)
    return variant


def train(args, shipped: StreamingModel, variant: GeometryMDVAE, bank: dict) -> dict:
    from streamav.train.loop import load_checkpoint, save_checkpoint

    out = Path(args.out)
    # the control trains the plain MDVAE's weights only (its geometry parts stay at zero)
    params = [p for n, p in variant.named_parameters()
              if variant.use_geometry or n.split(".")[0] not in GEO_PARTS]
    optimizer = torch.optim.Adam(params, lr=args.lr)
    progress = load_checkpoint(out, variant, optimizer) or {
        "step": 0, "seed": args.seed, "train_seconds": 0.0, "history": {}}
    history: dict[str, list[float]] = progress["history"]
    step, spent = int(progress["step"]), float(progress["train_seconds"])
    budget = args.minutes * 60.0
    n = len(bank["x_a"])
    variant.train()
    t0, last_ckpt = time.perf_counter(), time.perf_counter()
    logged: dict[str, float] = {}
    while spent + (time.perf_counter() - t0) < budget:
        torch.manual_seed(args.seed * 1_000_003 + step)
        rng = np.random.default_rng([args.seed, step])
        index = torch.from_numpy(rng.integers(n, size=args.batch))
        b = {k: bank[k][index].float()
             for k in ("x_a", "x_v_clean", "x_v_input", "audio_target", "geo")}
        face = torch.ones(b["geo"].shape[:2], dtype=torch.bool)
        g = variant.standardise(b["geo"], face)
        seq, g_hat = variant(b["x_a"], b["x_v_input"], g)
        terms = mdvae_loss(seq, b["x_v_clean"], b["audio_target"],
                           shipped.audio.decode_log(seq.x_a_hat))
        geo = geometry_se(g_hat, g, face)
        total = terms.total + (args.geo_weight * 0.5 * geo if variant.use_geometry else 0.0)
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss {total.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        parts = {"loss": total.item(), "geometry_se": geo.item(),
                 **{k: v.item() for k, v in terms._asdict().items()}}
        for k, v in parts.items():
            logged[k] = logged.get(k, 0.0) + v
        step += 1
        if step % args.log_every == 0:
            for k, v in logged.items():
                history.setdefault(k, []).append(v / args.log_every)
            logged = {}
            print(f"step {step} {spent + time.perf_counter() - t0:.0f}s "
                  + " ".join(f"{k} {history[k][-1]:.4g}" for k in
                             ("loss", "audio_is", "visual_se", "geometry_se", "kl_w")),
                  flush=True)
        if time.perf_counter() - last_ckpt > 120:
            progress.update(step=step, history=history,
                            train_seconds=spent + time.perf_counter() - t0)
            save_checkpoint(out, variant, optimizer, progress)
            last_ckpt = time.perf_counter()
    progress.update(step=step, history=history, train_seconds=spent + time.perf_counter() - t0)
    save_checkpoint(out, variant, optimizer, progress)
    variant.eval()
    return progress


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def both_ws(shipped: StreamingModel, variant: GeometryMDVAE, clip: ClipSequence,
            full: bool = False) -> dict:
    """The clip's causal per-frame w from both MDVAEs (posterior means, fresh state), and with
    full=True the outputs of `run_sequence`'s path (face_hat, spectrum_hat) for both."""
    from streamav.corpus.dataset import face_to_model

    spec = torch.from_numpy(np.ascontiguousarray(clip.spectrum))[None]
    faces = torch.from_numpy(np.ascontiguousarray(face_to_model(clip.face_crop_rgb)))[None]
    found = torch.from_numpy(np.asarray(clip.face_found))[None]
    g = variant.standardise(torch.from_numpy(clip_geometry(clip))[None], found)
    x_a, x_v = shipped.audio.encode(spec), shipped.visual.encode(faces)
    s = shipped.mdvae(x_a, x_v, sample=False)
    v, g_hat = variant(x_a, x_v, g, sample=False)
    result = {"w_shipped": s.w_mean[0].numpy(), "w_geometry": v.w_mean[0].numpy()}
    if full:
        means, _ = shipped.refine.scan(faces, shipped.refine.initial_state(1))
        gain = shipped.audio.gain(spec)
        for name, seq in (("shipped", s), ("geometry", v)):
            o = shipped._outputs(seq.w_mean, seq.w_var, seq.z_av, seq.z_a, seq.z_v, seq.x_a_hat,
                                 seq.x_v_hat, gain, faces, x_v, means)
            _, mdvae_face = shipped.decoded_faces(x_v, seq.x_v_hat)
            result[name] = {"out": StepOutputs(*(t[0] for t in o)), "mdvae_face": mdvae_face[0],
                            "visual_se": (seq.x_v_hat - x_v).pow(2).sum(-1)[0]}
        result["geometry_se"] = ((g_hat - g).pow(2).sum(-1))[0]
        result["geometry_var"] = g.pow(2).sum(-1)[0]
    return result


def reconstruction(shipped, variant, clips: list[ClipSequence]) -> dict:
    from streamav.evaluate.metrics import (log_spectral_distance_db, model_face_to_unit, psnr_db,
                                           uint8_to_unit)

    rows: dict[str, dict[str, list]] = {"shipped": {}, "geometry": {}}
    geo_se, geo_var = [], []
    for clip in clips:
        r = both_ws(shipped, variant, clip, full=True)
        found = clip.face_found
        clean = uint8_to_unit(clip.face_crop_rgb[found])
        audio = clip.spectrum.sum(axis=1) > 0
        for name in rows:
            o = r[name]["out"]
            m = rows[name]
            m.setdefault("face_hat_psnr_db", []).append(
                psnr_db(clean, model_face_to_unit(o.face_hat.numpy()[found])))
            m.setdefault("mdvae_face_psnr_db", []).append(
                psnr_db(clean, model_face_to_unit(r[name]["mdvae_face"].numpy()[found])))
            m.setdefault("audio_lsd_db", []).append(
                log_spectral_distance_db(clip.spectrum, o.spectrum_hat.numpy())[audio])
            m.setdefault("visual_feature_se", []).append(r[name]["visual_se"].numpy()[found])
        geo_se.append(r["geometry_se"].numpy()[found])
        geo_var.append(r["geometry_var"].numpy()[found])
    summary = {name: {k: float(np.mean(np.concatenate(v))) for k, v in m.items()}
               for name, m in rows.items()}
    se, var = np.concatenate(geo_se), np.concatenate(geo_var)
    if variant.use_geometry:  # the control reads and reconstructs no geometry
        summary["geometry"]["geometry_se_standardised"] = float(se.mean())
        summary["geometry"]["geometry_r2_vs_train_mean"] = float(1.0 - se.sum() / var.sum())
    summary["clips"] = [c.clip_id for c in clips]
    return summary


ROWS = (  # (row name, feature groups, which w)
    ("w (shipped MDVAE)", ("w",), "w_shipped"),
    ("w ({variant})", ("w",), "w_geometry"),
    ("geometry", ("geometry",), None),
    ("geometry + prosody (shipped design)", ("geometry", "prosody"), None),
    ("geometry + w (shipped MDVAE) [design b]", ("geometry", "w"), "w_shipped"),
    ("geometry + w ({variant})", ("geometry", "w"), "w_geometry"),
    ("geometry + prosody + w (shipped MDVAE) [design b]", ("geometry", "prosody", "w"),
     "w_shipped"),
    ("geometry + prosody + w ({variant})", ("geometry", "prosody", "w"), "w_geometry"),
)


def ablation(args, shipped, variant) -> list[dict]:
    """The ablation loop of streamav.evaluate.emotion.estimator_section, one row per ROWS entry,
    with the w of either MDVAE (estimator_section takes one w source per call)."""
    from streamav.emotion.estimator import EmotionEstimator
    from streamav.emotion.fit import clip_frames, fit_estimator
    from streamav.evaluate.emotion import _labelled, new_person_online, per_user
    from streamav.evaluate.inputs import list_clips, load_clip

    estimator = EmotionEstimator.load(MODEL)
    labels = estimator.labels
    train_clips = [c for c in load_clips(Path(args.cache), "train") if c.emotion_index >= 0]
    val_clips = [c for c in load_clips(Path(args.cache), "val") if c.emotion_index >= 0]
    refs, _ = list_clips(args.eval_cache, "all")
    test_clips = [load_clip(ref) for ref in refs]
    t0 = time.perf_counter()
    ws = {c.clip_id + "|" + tag: both_ws(shipped, variant, c)
          for tag, seqs in (("train", train_clips), ("val", val_clips), ("test", test_clips))
          for c in seqs}
    print(f"w of {len(ws)} clips: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    chosen = ROWS if not args.rows else [ROWS[int(i)] for i in args.rows.split(",")]
    for name, groups, source in chosen:
        t1 = time.perf_counter()

        def inputs(seqs, tag):
            return [clip_frames(c, groups, ws[c.clip_id + "|" + tag][source] if source else None)
                    for c in seqs]
        fitted = fit_estimator(inputs(train_clips, "train"), inputs(val_clips, "val"), labels,
                               replace(estimator.settings, groups=tuple(groups)), seed=args.seed)
        test = _labelled(inputs(test_clips, "test"), labels)
        online = new_person_online(fitted, test, seed=args.seed)
        k2 = per_user(fitted, test, ks=(2,), draws=1, seed=args.seed)["by_k"]["2"]["accuracy"]
        rows.append({"row": name.format(variant=args.variant_name), "groups": list(groups),
                     "w": source,
                     "online": online["accuracy"], "ece": online["calibration"]["ece"],
                     "per_user_k2": k2, "train_accuracy": fitted.metrics["train_accuracy"],
                     "seconds": round(time.perf_counter() - t1, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows, {"train_clips": len(train_clips), "val_clips": len(val_clips),
                  "test_clips": len(test_clips),
                  "test_speakers": len({c.speaker for c in test_clips})}


def markdown(results: dict) -> str:
    lines = ["| features | online 0.5 / 1 / 2 s | per-user k = 2 | ECE |", "|---|---|---:|---:|"]
    for r in results["ablation"]:
        o = r["online"]
        lines.append(f"| {r['row']} | {o['online_0.5s']:.3f} / {o['online_1s']:.3f} / "
                     f"{o['online_2s']:.3f} | {r['per_user_k2']:.3f} | {r['ece']:.3f} |")
    rec = results["reconstruction"]
    lines += ["", f"Reconstruction on {len(rec['clips'])} val clips of {results['cache']} "
              "(frames with a face; LSD on frames with audio):", "",
              "| MDVAE | face_hat PSNR dB | MDVAE face PSNR dB | visual feature SE "
              "| audio LSD dB |",
              "|---|---:|---:|---:|---:|"]
    for name in ("shipped", "geometry"):
        m = rec[name]
        label = "shipped" if name == "shipped" else results["variant"]
        lines.append(f"| {label} | {m['face_hat_psnr_db']:.2f} | {m['mdvae_face_psnr_db']:.2f} | "
                     f"{m['visual_feature_se']:.3f} | {m['audio_lsd_db']:.2f} |")
    g = rec["geometry"]
    tr = results["training"]
    if "geometry_se_standardised" in g:
        lines += ["", f"Geometry reconstruction ({results['variant']}): "
                  f"SE {g['geometry_se_standardised']:.1f} per frame over 936 standardised "
                  f"numbers, R^2 {g['geometry_r2_vs_train_mean']:.3f}."]
    lines += ["", f"Training: {tr['steps']} steps, {tr['train_seconds']:.0f} s, batch "
              f"{tr['batch']} x {tr['window']} frames, lr {tr['lr']}, geo weight "
              f"{tr['geo_weight']}; loss first/last log: {tr['loss_first']:.1f} / "
              f"{tr['loss_last']:.1f}; geometry SE {tr['geometry_se_first']:.1f} / "
              f"{tr['geometry_se_last']:.1f}.",
              f"Wall: {results['wall_s']}. loadavg start / end: {results['loadavg_start']} / "
              f"{results['loadavg_end']}.", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="out/emo/cache_synth20b")
    p.add_argument("--eval-cache", default="out/emo/cache_eval")
    p.add_argument("--out", default="out/geom_mdvae")
    p.add_argument("--minutes", type=float, default=40.0, help="training wall-time cap (total)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--geo-weight", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recon-clips", type=int, default=12)
    p.add_argument("--bank", default=None, help="encoded train windows (default "
                   "out/geom_mdvae/bank_wWINDOW.safetensors, made once)")
    p.add_argument("--rows", default=None, help="comma-separated ROWS indices (default all)")
    p.add_argument("--control", action="store_true",
                   help="the control: the same fine-tuning without geometry (input zero, no "
                   "geometry term), to separate geometry from fine-tuning on the corpus")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-ablation", action="store_true")
    args = p.parse_args()
    args.variant_name = "fine-tuned MDVAE, no geometry" if args.control else "geometry-MDVAE"
    torch.set_num_threads(1)
    os.chdir(ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": "nice -n 10 .venv/bin/python " + " ".join(sys.argv),
                     "loadavg_start": loadavg(), "wall_s": {}, "cache": args.cache,
                     "eval_cache": args.eval_cache}
    t0 = time.perf_counter()
    shipped = load_model(MODEL).eval()
    for prm in shipped.parameters():
        prm.requires_grad_(False)

    bank_file = Path(args.bank or f"out/geom_mdvae/bank_w{args.window}.safetensors")
    bank_file.parent.mkdir(parents=True, exist_ok=True)
    if bank_file.is_file():
        from safetensors.torch import load_file
        bank = load_file(str(bank_file))
    else:
        from safetensors.torch import save_file
        bank = build_bank(shipped, load_clips(Path(args.cache), "train"), args.window, args.seed)
        save_file(bank, str(bank_file))
    results["wall_s"]["encode_windows"] = round(time.perf_counter() - t0, 1)
    print(f"{len(bank['x_a'])} train windows ({results['wall_s']['encode_windows']} s)", flush=True)

    variant = variant_from(shipped, bank["geo_mean"], bank["geo_scale"],
                           use_geometry=not args.control).eval()
    results["variant"] = args.variant_name
    check = load_clips(Path(args.cache), "val")[0]
    from streamav.train.sequences import run_clip
    ref_w = run_clip(shipped, check.spectrum, check.face_crop_rgb).w_mean.numpy()
    ws = both_ws(shipped, variant, check)
    start_gap = float(np.abs(ws["w_geometry"] - ws["w_shipped"]).max())
    results["check"] = {"w_shipped_vs_run_clip_max_abs":
                        float(np.abs(ws["w_shipped"] - ref_w).max()),
                        "w_variant_at_init_vs_shipped_max_abs": start_gap}
    print("checks", results["check"], flush=True)

    t1 = time.perf_counter()
    if args.skip_train:
        from streamav.train.loop import load_checkpoint
        progress = load_checkpoint(out, variant, torch.optim.Adam(variant.parameters()))
        if progress is None:
            raise SystemExit(f"--skip-train: no checkpoint in {out}")
    else:
        progress = train(args, shipped, variant, bank)
    variant.eval()
    results["wall_s"]["train_this_run"] = round(time.perf_counter() - t1, 1)
    h = progress["history"]
    results["training"] = {
        "steps": progress["step"], "train_seconds": progress["train_seconds"],
        "batch": args.batch, "window": args.window, "lr": args.lr, "geo_weight": args.geo_weight,
        "log_every": args.log_every, "windows": len(bank["x_a"]),
        **{f"{k}_{w}": (h[k][0] if w == "first" else float(np.mean(h[k][-5:])))
           for k in ("loss", "audio_is", "visual_se", "geometry_se", "kl_w", "kl_av", "kl_v")
           for w in ("first", "last") if h.get(k)}}
    print("training", results["training"], flush=True)

    t2 = time.perf_counter()
    val = load_clips(Path(args.cache), "val")
    pick = [val[i] for i in np.linspace(0, len(val) - 1, args.recon_clips).round().astype(int)]
    results["reconstruction"] = reconstruction(shipped, variant, pick)
    results["wall_s"]["reconstruction"] = round(time.perf_counter() - t2, 1)
    print("reconstruction", json.dumps({k: v for k, v in results["reconstruction"].items()
                                        if k != "clips"}), flush=True)
    if not args.skip_ablation:
        t3 = time.perf_counter()
        results["ablation"], results["ablation_data"] = ablation(args, shipped, variant)
        results["wall_s"]["ablation"] = round(time.perf_counter() - t3, 1)
    results["wall_s"]["total"] = round(time.perf_counter() - t0, 1)
    results["loadavg_end"] = loadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if "ablation" in results:
        (out / "results.md").write_text(markdown(results))
        print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
