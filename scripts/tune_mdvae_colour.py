#!/usr/bin/env python3
"""Where the identity path keeps the MDVAE face, how much of its low spatial frequencies to take
from the VQ-VAE face of the input (RefineConfig.mdvae_low_pass_from_vq_px; docs/model.md "v2.6").

    streamav corpus synth --out out/tune9/synth --speakers 8 --sentences 1 --seed 3100 \\
        --emotions neutral,happy,angry --intensities 2
    streamav corpus cache --format synth out/tune9/synth --out out/tune9/cache
    python scripts/tune_mdvae_colour.py --fresh out/tune9/cache --grid <training cache> \\
        --sigmas 0,2,4,8,16 --corruptions occlude_mouth,occlude_eyes,lowlight [--json r.json]

Tuning data only, never an evaluation's: a fresh synthetic seed (new to every network) and the
GRID clips of the model's training cache. Each variant is the shipped model with that sigma
(`S`, or `S:W` to also set mdvae_face_weight W); frames 5-150 of each clip; PSNR of AV on the
whole crop, and for an occlusion AV and V-only (silence) inside the box, with the VQ-VAE alone
there for scale. ~4 min per variant and corruption on 2 cores. Needs torch (`train` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from streamav.corpus.dataset import face_to_model
from streamav.data import default_model_folder
from streamav.evaluate.baselines import vqvae_alone
from streamav.evaluate.metrics import psnr_db
from streamav.frontend.corruption import parse_corruption
from streamav.model.io import load_model
from streamav.model.streaming import StreamingModel
from streamav.train.sequences import load_clips

FRAMES = 150
SKIP = 5


def variant(base, spec: str) -> StreamingModel:
    sigma, weight = (float(v) for v in (spec.split(":") + ["1"])[:2])
    refine = dataclasses.replace(base.cfg.refine, mdvae_low_pass_from_vq_px=sigma,
                                 mdvae_face_weight=weight)
    model = StreamingModel(dataclasses.replace(base.cfg, refine=refine))
    model.load_state_dict(base.state_dict())
    return model.eval()


@torch.no_grad()
def face_out(model, spectrum: np.ndarray, faces_u8: np.ndarray) -> np.ndarray:
    out, _ = model.run_sequence(torch.from_numpy(spectrum)[None],
                                torch.from_numpy(face_to_model(faces_u8))[None])
    return out.face_hat[0].numpy().transpose(0, 2, 3, 1) + 0.5


def db(clean: np.ndarray, out: np.ndarray, box=None) -> float:
    if box is not None:
        clean, out = clean[:, box], out[:, box]
    return float(psnr_db(clean, out)[SKIP:].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", type=Path, required=True, help="fresh synthetic cache")
    parser.add_argument("--grid", type=Path, required=True,
                        help="a cache whose grid-* speakers the model trained on")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sigmas", default="0,8")
    parser.add_argument("--corruptions", default="occlude_mouth,occlude_eyes,lowlight")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_model(args.model or default_model_folder())
    models = {spec: variant(base, spec) for spec in args.sigmas.split(",")}
    groups = {"fresh": load_clips(args.fresh, "all"),
              "grid": [c for c in load_clips(args.grid, "all") if c.speaker.startswith("grid")]}
    results = {}
    for group, clips in groups.items():
        for name in args.corruptions.split(","):
            corruption = None if name == "clean" else parse_corruption(name)
            box = (corruption.region_mask(64) if corruption is not None
                   and name.startswith("occlude") else None)
            rows: dict[str, list[float]] = {}
            for clip in clips:
                crops = clip.face_crop_rgb[:FRAMES]
                spectrum = clip.spectrum[:FRAMES].astype(np.float32)
                clean = crops / 255.0
                noisy = (corruption.apply(crops, np.random.default_rng(0)) if corruption
                         else crops)
                if box is not None:
                    rows.setdefault("VQ-VAE alone, box", []).append(
                        db(clean, vqvae_alone(base, noisy), box))
                for spec, model in models.items():
                    av = face_out(model, spectrum, noisy)
                    rows.setdefault(f"{spec} AV", []).append(db(clean, av))
                    if box is not None:
                        silent = face_out(model, np.zeros_like(spectrum), noisy)
                        rows.setdefault(f"{spec} AV box", []).append(db(clean, av, box))
                        rows.setdefault(f"{spec} V-only box", []).append(db(clean, silent, box))
            results[f"{group} {name}"] = {k: round(float(np.mean(v)), 2) for k, v in rows.items()}
            print(group, name, len(clips), "clips:", results[f"{group} {name}"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
