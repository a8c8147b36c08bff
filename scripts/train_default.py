#!/usr/bin/env python3
"""Train the default model end to end and install it in the package.

    1. a synthetic corpus (`streamav corpus synth`), speakers split train/val/test by the seed;
    2. one folder corpus of the synthetic clips plus the real CREMA-D clips of ../shared/data
       (the real clips go to the training split: they teach the model real faces and voices);
    3. the feature cache of it (`streamav corpus cache`) and of CREMA-D alone (for the real-data
       evaluation);
    4. the stages (`streamav train vqvae-audio | vqvae-visual | mdvae | refine`), then
       `streamav train emotion` on a cache of the synthetic corpus alone (the emotion estimator
       and the step's w head never see CREMA-D's labels, the real test, nor GRID's "neutral");
    5. the evaluation (`streamav eval`) on the held-out synthetic speakers and on CREMA-D;
    6. the model, as fp16 safetensors, into streamav/data/model/, with the evaluation JSON and a
       summary that MODEL_CARD.md quotes, and its exported step (step.onnx, scripts/export_step.py).

Everything is resumable: run it again and finished steps are reused. Usage:
    python scripts/train_default.py --work out/default_model [--speakers 8 --sentences 2]
                                    [--steps-scale 1.0] [--install]

The shipped v2 (MODEL_CARD.md): v1's stages 1-2 and head (`--init-from`), then the identity
path alone, 67 min on the 2-core CPU (2 threads) plus ~6 min of caching and ~10 of evaluation:
    python scripts/train_default.py --work out/model_v2 --synth out/synth20 \
        --eval-synth out/synth_eval --init-from out/model_v1 --refine-steps 2100 --threads 2
(v2 itself ran its first 1,600 refine steps before real-face windows were drawn with
probability 0.35; the recipe now draws them from the start). v2.1 (the emotion estimator) is v2
plus `streamav train emotion --cache <synth20 cache>` (5 min: the w head runs the model over
480 clips; the estimator's own fit is ~15 s). v2.3 is v2.2's weights unchanged with the
motion-adaptive filter in the identity path (`--motion-share 0.8`, MDVAE gate threshold 0.25,
the MDVAE face only inside an ellipse over eyes and mouth; all defaults now; no training:
set_motion_share rewrites the folder's config). v2.5 is v2.4 with the filter made
noise-adaptive (NOISE_ADAPTIVE, again only the config). v2.6 is v2.5 with the MDVAE face's low
frequencies taken from the VQ-VAE face (MDVAE_LOW_PASS_FROM_VQ_PX, only the config). v2.7 is
v2.6 with the emotion estimator alone refitted on a 120-speaker synthetic corpus (`streamav
corpus synth --speakers 120 --sentences 1 --seed 0`, cached with --split-seed 0, then `streamav
train emotion --estimator-only --cache <it> --out <model>`: MODEL_CARD.md); v2.8 is the same
refit on 240 speakers (`--speakers 240`, whose first 120 are v2.7's). All stages take
--device cuda through `streamav train` unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STAGE_STEPS = {"vqvae-audio": 1500, "vqvae-visual": 2000, "mdvae": 1500, "refine": 1500}
FROM_EARLIER_MODEL = ("vqvae-audio", "vqvae-visual", "mdvae")  # --init-from reuses these
# GRID (../shared/data/grid, CC BY 4.0): the sample clips' speakers (two clips are one man), and
# the three speakers kept out of training for the real-face denoising check.
GRID_SPEAKERS = {"id2_vcd_swwp2s": "pwij3p"}
GRID_HELD_OUT = ("lbax4n", "lwbsza", "swiz3n")


# The motion-adaptive filter's share of the identity path's gates (RefineConfig.motion_share):
# chosen on the training cache's validation speakers and its GRID training clips, never on the
# evaluation's (docs/model.md, "The motion-adaptive candidate").
MOTION_SHARE = 0.8
# ... and the MDVAE face's gate below which it gives its weight to the filter
# (RefineConfig.mdvae_gate_threshold), chosen the same way.
MDVAE_GATE_THRESHOLD = 0.25
# ... and the part of the crop where the MDVAE face may be used at all (RefineConfig.mdvae_region:
# an ellipse over the eyes and the mouth, from the template's geometry, not searched).
MDVAE_REGION = (0.49, 0.52, 0.375, 0.344)
# ... and, where the MDVAE face keeps its gate, its share against the VQ-VAE's face of the input
# (RefineConfig.mdvae_face_weight). 0.5 won on the validation speakers and GRID training clips but
# lost on fresh synthetic speakers (AV under V-only in the mouth box): 1.0, the MDVAE face alone
# (docs/model.md, "v2.4 candidate").
MDVAE_FACE_WEIGHT = 1.0
# ... and the sigma (px) below which the MDVAE face's spatial frequencies are replaced by the VQ-VAE
# face's (RefineConfig.mdvae_low_pass_from_vq_px): the MDVAE keeps the shape of the lips and eyes,
# the person's colour and shading come from their own features. 0 / 2 / 4 / 8 / 16 compared on
# a fresh synthetic seed (3100) and the GRID training clips, never on the evaluation's
# (docs/model.md, "v2.6").
MDVAE_LOW_PASS_FROM_VQ_PX = 8.0
# ... and the filter's noise adaptation (RefineConfig.motion_noise_adaptive and the fields after
# it): the thresholds and the blur follow the frame's estimated noise, the frame itself is kept
# where it differs from the filtered face by more than its noise, and the learned residual is
# scaled by the noise (and the MDVAE gate). Chosen the same way (docs/model.md, "v2.5").
NOISE_ADAPTIVE = {"motion_noise_adaptive": True, "motion_threshold": 0.002,
                  "motion_threshold_per_noise": 0.45, "motion_input_threshold_per_noise": 0.5,
                  "motion_noise_full_blur": 0.06, "residual_noise_range": (0.02, 0.1)}


def set_motion_share(model: Path, share: float, threshold: float = MDVAE_GATE_THRESHOLD) -> None:
    """Rewrite the model folder with the filter's share and noise adaptation, the MDVAE face's
    gate threshold and region (no weights change; idempotent)."""
    import dataclasses

    from streamav.model.io import load_model, save_model
    from streamav.model.streaming import StreamingModel

    trained = load_model(model)
    on = share > 0
    refine = dataclasses.replace(trained.cfg.refine, motion_filter=on,
                                 motion_share=share if on else trained.cfg.refine.motion_share,
                                 mdvae_gate_threshold=threshold if on else 0.0,
                                 mdvae_region=MDVAE_REGION if on else (),
                                 mdvae_face_weight=MDVAE_FACE_WEIGHT if on else 1.0,
                                 mdvae_low_pass_from_vq_px=MDVAE_LOW_PASS_FROM_VQ_PX if on else 0.0,
                                 **(NOISE_ADAPTIVE if on else {}))
    if refine == trained.cfg.refine:
        return
    shared = StreamingModel(dataclasses.replace(trained.cfg, refine=refine))
    shared.load_state_dict(trained.state_dict())
    meta = json.loads((model / "config.json").read_text())
    save_model(shared, model, half=meta.get("weights_dtype") == "float16",
               extra=meta.get("extra", {}))
    print(f"+ motion_share {share}, mdvae_gate_threshold {refine.mdvae_gate_threshold}, "
          f"mdvae_face_weight {refine.mdvae_face_weight}, low pass from the VQ-VAE face "
          f"{refine.mdvae_low_pass_from_vq_px} px, noise-adaptive "
          f"{refine.motion_noise_adaptive} in {model}", flush=True)


def run(*args: str) -> None:
    """One streamav command, its output shown; stops the script if it fails."""
    command = [sys.executable, "-m", "streamav", *args]
    print("+ streamav " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def synth_rows(synth: Path, max_speakers: int | None, sentences_used: int | None) -> list[dict]:
    """The synthetic clips: from labels.csv, or (a corpus still being written) from the names
    S001_01_angry_1.mp4 of the speakers whose clips are all there, split 2 test / 1 val."""
    rows = []
    if (synth / "labels.csv").is_file():
        with open(synth / "labels.csv") as f:
            rows = [dict(r) for r in csv.DictReader(f)]
    else:
        per_speaker: dict[str, list[dict]] = {}
        for path in sorted((synth / "clips").glob("*.mp4")):
            speaker, sentence, emotion, intensity = path.stem.split("_")
            if (synth / "traces" / f"{path.stem}.npz").is_file():
                per_speaker.setdefault(speaker, []).append(
                    {"clip": path.stem, "speaker": speaker, "sentence": sentence,
                     "emotion": emotion, "intensity": intensity})
        most = max(len(v) for v in per_speaker.values())
        speakers = [s for s, v in per_speaker.items() if len(v) == most]
        splits = {s: ("test" if i < 2 else "val" if i == 2 else "train")
                  for i, s in enumerate(sorted(speakers))}
        rows = [dict(r, split=splits[r["speaker"]]) for s in speakers for r in per_speaker[s]]
    speakers = sorted({r["speaker"] for r in rows})[:max_speakers]
    return [r for r in rows if r["speaker"] in speakers
            and (sentences_used is None or int(r["sentence"]) < sentences_used)]


def combined_corpus(synth: Path, out: Path, max_speakers: int | None,
                    sentences_used: int | None) -> Path:
    """A folder corpus (labels.csv) of the synthetic clips and the real CREMA-D clips."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in synth_rows(synth, max_speakers, sentences_used):
        rows.append({"clip": row["clip"], "path": str(synth / "clips" / f"{row['clip']}.mp4"),
                     "speaker": row["speaker"], "emotion": row["emotion"],
                     "intensity": row["intensity"], "split": row["split"],
                     "traces": str(synth / "traces" / f"{row['clip']}.npz")})
    with open(SHARED / "crema-d" / "labels.csv") as f:
        for row in csv.DictReader(f):
            rows.append({"clip": row["clip"], "path": str(SHARED / "crema-d" / f"{row['clip']}.flv"),
                         "speaker": f"cremad-{row['actor']}", "emotion": row["emotion"],
                         "intensity": "", "split": "train", "traces": ""})
    rows += grid_rows(held_out=False)
    _write_labels(out, rows)
    return out


def grid_rows(held_out: bool) -> list[dict]:
    """The GRID sample clips of ../shared/data/grid (neutral read speech), training or held out."""
    rows = []
    for path in sorted((SHARED / "grid").glob("*.mpg")):
        speaker = GRID_SPEAKERS.get(path.stem, path.stem)
        if (speaker in GRID_HELD_OUT) == held_out:
            rows.append({"clip": f"grid_{path.stem}", "path": str(path), "speaker": f"grid-{speaker}",
                         "emotion": "neutral", "intensity": "",
                         "split": "test" if held_out else "train", "traces": ""})
    return rows


def _write_labels(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def init_from(earlier: Path, model: Path) -> None:
    """Start the model folder from an earlier model's trained stages (any format version): its
    VQ-VAEs, MDVAE and emotion head; the parts it lacks (the identity path) start fresh."""
    from dataclasses import asdict

    from safetensors.torch import load_file

    from streamav.model.config import ModelConfig, RefineConfig
    from streamav.model.io import save_model
    from streamav.model.streaming import StreamingModel

    meta = json.loads((earlier / "config.json").read_text())
    config = dict(meta["model"])
    config.setdefault("refine", asdict(RefineConfig()))
    fresh = StreamingModel(ModelConfig.from_dict(config))
    tensors = {k: v.float() for k, v in load_file(str(earlier / meta["weights_file"])).items()}
    missing, unexpected = fresh.load_state_dict(tensors, strict=False)
    if unexpected or any(not k.startswith("refine.") for k in missing):
        raise SystemExit(f"{earlier}: not a model this recipe can start from "
                         f"(unexpected {unexpected[:3]}, missing {missing[:3]})")
    notes = {"initialised_from": {"folder": earlier.name, "weights_sha256": meta["weights_sha256"],
                                  "training": meta.get("extra", {}).get("training", {})}}
    save_model(fresh, model, extra=notes)
    print(f"model folder {model} started from {earlier} ({len(tensors)} tensors; new: "
          f"{len(missing)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "out" / "default_model")
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synth", type=Path, default=None,
                        help="use this synthetic corpus instead of generating one")
    parser.add_argument("--max-speakers", type=int, default=None)
    parser.add_argument("--sentences-used", type=int, default=None)
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every stage's steps (0.1 for a quick smoke run)")
    parser.add_argument("--mdvae-steps", type=int, default=None,
                        help="MDVAE steps (default: 1500 x --steps-scale); a larger number on a "
                             "finished run trains the MDVAE on from its checkpoint")
    parser.add_argument("--mdvae-window", type=int, default=30,
                        help="frames per MDVAE training window (clips are ~3 s = 90 frames)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this earlier model folder: reuse its VQ-VAEs, MDVAE and "
                             "emotion head, train only the identity path (refine)")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="refine steps (default: 1500 x --steps-scale)")
    parser.add_argument("--eval-synth", type=Path, default=None,
                        help="a synthetic corpus of a fresh seed, all of it held out: the "
                             "evaluation's synthetic test speakers (default: the test split)")
    parser.add_argument("--motion-share", type=float, default=MOTION_SHARE,
                        help="after the refine stage: the share of the learned gates (all but "
                             "the MDVAE face's) given to the motion-adaptive filter (0: off)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per stage")
    parser.add_argument("--install", action="store_true",
                        help="copy the model (fp16) into streamav/data/model/")
    args = parser.parse_args()
    work = args.work.resolve()
    started = time.time()
    timings: dict[str, float] = {}

    def timed(name: str, *command: str) -> None:
        t0 = time.time()
        run(*command)
        timings[name] = round(time.time() - t0, 1)

    synth = args.synth.resolve() if args.synth else work / "synth"
    if args.synth is None and not (synth / "manifest.json").is_file():
        timed("synth", "corpus", "synth", "--out", str(synth), "--speakers", str(args.speakers),
              "--sentences", str(args.sentences), "--seed", str(args.seed))
    corpus = combined_corpus(synth, work / "corpus", args.max_speakers, args.sentences_used)
    if args.eval_synth is not None and args.synth is None and not (synth / "manifest.json").is_file():
        raise SystemExit("--eval-synth needs the training corpus too")
    timed("cache", "corpus", "cache", str(corpus), "--format", "folder", "--out",
          str(work / "cache"), "--split-seed", str(args.seed))
    timed("cache_crema", "corpus", "cache", str(SHARED / "crema-d"), "--format", "crema-d",
          "--out", str(work / "cache_crema"))
    _write_labels(work / "grid_held_out", grid_rows(held_out=True))
    timed("cache_grid", "corpus", "cache", str(work / "grid_held_out"), "--format", "folder",
          "--out", str(work / "cache_grid"))
    if args.eval_synth is not None:
        timed("cache_eval_synth", "corpus", "cache", str(args.eval_synth.resolve()), "--format",
              "synth", "--out", str(work / "cache_eval_synth"))
    # The emotion estimator learns from synthetic labels only: CREMA-D's labels are the real
    # test and GRID's "neutral" must not be taught (issue #10).
    timed("cache_emotion", "corpus", "cache", str(synth), "--format", "synth", "--out",
          str(work / "cache_emotion"), "--split-seed", str(args.seed))
    model = work / "model"
    if args.init_from is not None and not (model / "config.json").is_file():
        init_from(args.init_from.resolve(), model)
    for stage, steps in STAGE_STEPS.items():
        if args.init_from is not None and stage in FROM_EARLIER_MODEL:
            continue
        steps = max(10, int(steps * args.steps_scale))
        if stage == "mdvae" and args.mdvae_steps is not None:
            steps = args.mdvae_steps
        if stage == "refine" and args.refine_steps is not None:
            steps = args.refine_steps
        timed(stage, "train", stage, "--cache", str(work / "cache"), "--out", str(model),
              "--steps", str(steps), "--seed", str(args.seed),
              "--threads", str(args.threads),
              *(["--window-frames", str(args.mdvae_window)] if stage == "mdvae" else []))
    set_motion_share(model, args.motion_share)
    timed("emotion", "train", "emotion", "--cache", str(work / "cache_emotion"), "--out",
          str(model))
    if args.eval_synth is not None:
        timed("eval_synth", "eval", "--model", str(model), "--cache",
              str(work / "cache_eval_synth"), "--split", "all", "--json",
              str(work / "eval_synth_fresh.json"), "--plots", str(work / "plots_synth"),
              "--identity-gallery", str(work / "cache"))
    else:
        timed("eval_synth", "eval", "--model", str(model), "--cache", str(work / "cache"),
              "--split", "test", "--json", str(work / "eval_synth_test.json"), "--plots",
              str(work / "plots_synth"))
    timed("eval_crema", "eval", "--model", str(model), "--cache", str(work / "cache_crema"),
          "--split", "all", "--json", str(work / "eval_crema.json"), "--plots",
          str(work / "plots_crema"))
    timed("eval_grid", "eval", "--model", str(model), "--cache", str(work / "cache_grid"),
          "--split", "all", "--json", str(work / "eval_grid.json"), "--plots",
          str(work / "plots_grid"))
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "timings_s": timings,
               "total_s": round(time.time() - started, 1)}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.install:
        from streamav.model.io import load_model, save_model
        from streamav.model_stage import default_model_folder

        target = default_model_folder()
        shutil.rmtree(target, ignore_errors=True)
        meta = json.loads((model / "config.json").read_text())
        save_model(load_model(model), target, half=True, extra=meta.get("extra", {}))
        from streamav.emotion.estimator import EmotionEstimator

        EmotionEstimator.load(model).save(target)
        from streamav.engines.ship import write_shipped_step
        from streamav.offline_features import OfflineInputs

        # step.onnx + step.json: the runtime without PyTorch
        write_shipped_step(target, OfflineInputs())
        print(f"installed the model in {target}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
