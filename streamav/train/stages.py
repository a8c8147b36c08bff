"""The four training stages of `streamav train`, on a feature cache, into one model folder.

    vqvae-audio   the audio VQ-VAE on single frames' power spectra (Itakura-Saito)
    vqvae-visual  the visual VQ-VAE on single frames' face crops (squared error)
    mdvae         the MDVAE on 1 s windows of the frozen encoders' features; the visual input is
                  corrupted (DENOISE_CORRUPTIONS) on half the windows while the target stays
                  clean, so that it learns to denoise
    refine        the identity path's fusion (streamav/model/refine.py) on windows of corrupted
                  crops (REFINE_CORRUPTIONS, clean included) with the clean crop as target and
                  the audio zeroed on a quarter of them, everything else frozen
    emotion       the emotion estimator (geometry + prosody, streamav.emotion) and the w head

Each stage reads the model folder `--out` if it exists (the earlier stages' weights), trains its
part, and writes the folder back (safetensors + config.json). Training state for resume lives in
`OUT/train/STAGE/` (checkpoint, progress, loss.png).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamav.corpus.dataset import CacheWindowDataset, face_to_model
from streamav.errors import InputError
from streamav.frontend.corruption import parse_corruption
from streamav.model.config import preset as model_preset
from streamav.model.io import load_model, save_model
from streamav.model.mdvae import mdvae_loss
from streamav.model.streaming import StreamingModel
from streamav.train.loop import LoopConfig, run_loop

STAGES = ("vqvae-audio", "vqvae-visual", "mdvae", "refine", "emotion")
DENOISE_CORRUPTIONS = ("gaussian:0.1", "gaussian:0.2", "occlude_mouth", "occlude_eyes",
                       "lowlight", "blur", "jpeg:20")


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch_size: int
    learning_rate: float
    window_frames: int = 1


DEFAULTS = {
    "vqvae-audio": StageSettings(steps=1500, batch_size=64, learning_rate=1e-3),
    "vqvae-visual": StageSettings(steps=2000, batch_size=32, learning_rate=1e-3),
    "mdvae": StageSettings(steps=1500, batch_size=8, learning_rate=5e-4, window_frames=30),
    "refine": StageSettings(steps=1500, batch_size=4, learning_rate=1e-3, window_frames=48),
}
# What the identity path trains on, with their probabilities: what it meets live, clean included.
# "gaussian" draws sigma uniformly in 0.02..0.3 per window, "blur" 0.8..2.5 px, "jpeg" 10..40.
REFINE_CORRUPTIONS = {"clean": 0.20, "gaussian": 0.30, "lowlight": 0.07, "blur": 0.07,
                      "jpeg": 0.06, "occlude_mouth": 0.15, "occlude_eyes": 0.15}
REFINE_AUDIO_DROP = 0.25  # windows whose audio is zeroed (V-only: no microphone, or silence)
# Real faces (every speaker not named like the synthetic generator's S001) are a few percent of
# the windows but what the model meets live: a batch draws them with this probability.
REFINE_REAL_FRACTION = 0.35
# Synthetic heads move all the time, real ones sit still for seconds (GRID: the best baseline
# averages over 1 s): a share of the windows is played slowed down (each frame held 2-8 frames,
# with fresh noise on every copy), so the gates learn to use the long means when the face is still.
REFINE_SLOW_FRACTION = 0.3
REFINE_SLOW_FACTORS = (2, 3, 4, 8)
_SYNTHETIC_SPEAKER = re.compile(r"^S\d+$")


def open_model(folder: Path, preset: str) -> StreamingModel:
    """The model folder's model, or a fresh one of `preset` when the folder has none yet."""
    if (folder / "config.json").is_file():
        return load_model(folder)
    try:
        return StreamingModel(model_preset(preset)).eval()
    except ValueError as exc:
        raise InputError(str(exc)) from None


class _Batches:
    """Seeded random batches of windows: batch `step` is the same whatever ran before."""

    def __init__(self, dataset: CacheWindowDataset, batch_size: int, seed: int,
                 device: str) -> None:
        if len(dataset) == 0:
            raise InputError("the cache's training split has no usable windows")
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        items = [self.dataset[int(i)] for i in rng.integers(len(self.dataset), size=self.batch_size)]
        return {key: torch.stack([item[key] for item in items]).to(self.device)
                for key in ("spectrum", "face")}


class _FeatureWindows:
    """The MDVAE's training data: every training window encoded once by the frozen encoders.

    Stage 2 never changes the encoders, so each window's audio features, clean visual features
    and the visual features of a corrupted copy (one seeded corruption, on half the windows) are
    computed once and kept as float16; a batch is then a gather, not 3 encoder passes.
    """

    def __init__(self, model: StreamingModel, dataset: CacheWindowDataset, batch_size: int,
                 seed: int, device: str) -> None:
        from rich.progress import track

        if len(dataset) == 0:
            raise InputError("the cache's training split has no usable windows")
        self.batch_size, self.seed, self.device = batch_size, seed, device
        rng = np.random.default_rng(seed + 1)
        columns: dict[str, list[torch.Tensor]] = {
            "x_a": [], "x_v_clean": [], "x_v_input": [], "audio_target": []}
        model.audio.eval()
        model.visual.eval()
        with torch.no_grad():
            for i in track(range(len(dataset)), description="encoding windows"):
                item = dataset[i]
                spectrum, face = item["spectrum"].to(device), item["face"]
                columns["x_a"].append(model.audio.encode(spectrum))
                columns["audio_target"].append(model.audio.normalized_target(spectrum))
                columns["x_v_clean"].append(model.visual.encode(face.to(device)))
                noisy = _corrupt_faces(face[None], rng)[0].to(device)
                columns["x_v_input"].append(model.visual.encode(noisy))
        # Features as float16 (half the memory); the IS target keeps float32 (wide range).
        self.bank = {k: torch.stack(v).to(torch.float32 if k == "audio_target" else torch.float16)
                     for k, v in columns.items()}

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        index = torch.from_numpy(rng.integers(len(self.bank["x_a"]), size=self.batch_size))
        return {k: v[index].to(self.device, torch.float32) for k, v in self.bank.items()}


def _faces_to_crops(faces: torch.Tensor) -> np.ndarray:
    """(..., 3, 64, 64) in -0.5..0.5 → (..., 64, 64, 3) uint8 (the inverse of face_to_model)."""
    return np.moveaxis(((faces.numpy() + 0.5) * 255.0 + 0.5).clip(0, 255).astype(np.uint8), -3, -1)


def _corrupt_faces(faces: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, T, 3, 64, 64) in -0.5..0.5 → the same with one random corruption per window on half."""
    crops = _faces_to_crops(faces)
    out = crops.copy()
    for b in range(crops.shape[0]):
        if rng.random() < 0.5:
            out[b] = parse_corruption(rng.choice(DENOISE_CORRUPTIONS)).apply(crops[b], rng)
    return torch.from_numpy(face_to_model(out))


def refine_corruption(rng: np.random.Generator) -> str | None:
    """One window's corruption spec for the refine stage (None: clean)."""
    names = list(REFINE_CORRUPTIONS)
    name = names[rng.choice(len(names), p=np.array(list(REFINE_CORRUPTIONS.values())))]
    if name == "clean":
        return None
    if name == "gaussian":
        return f"gaussian:{rng.uniform(0.02, 0.3):.3f}"
    if name == "blur":
        return f"blur:{rng.uniform(0.8, 2.5):.2f}"
    if name == "jpeg":
        return f"jpeg:{int(rng.integers(10, 41))}"
    return name


class _RefineWindows(_Batches):
    """Seeded windows for the refine stage: clean and corrupted faces, audio (zeroed at random)."""

    def __init__(self, dataset: CacheWindowDataset, batch_size: int, seed: int,
                 device: str) -> None:
        super().__init__(dataset, batch_size, seed, device)
        synthetic = np.array([bool(_SYNTHETIC_SPEAKER.match(speaker))
                              for speaker in dataset.window_speakers()], bool)
        self.synthetic, self.real = np.flatnonzero(synthetic), np.flatnonzero(~synthetic)

    def _window(self, rng: np.random.Generator) -> int:
        if len(self.real) and len(self.synthetic):
            pool = self.real if rng.random() < REFINE_REAL_FRACTION else self.synthetic
            return int(pool[rng.integers(len(pool))])
        return int(rng.integers(len(self.dataset)))

    @staticmethod
    def _maybe_slowed(item: dict, rng: np.random.Generator) -> dict:
        """The window as is, or (REFINE_SLOW_FRACTION) its start played slowed down."""
        if rng.random() >= REFINE_SLOW_FRACTION:
            return item
        factor = int(rng.choice(REFINE_SLOW_FACTORS))
        frames = torch.arange(item["face"].shape[0]) // factor
        return {**item, "face": item["face"][frames], "spectrum": item["spectrum"][frames]}

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 7, step])
        items = [self._maybe_slowed(self.dataset[self._window(rng)], rng)
                 for _ in range(self.batch_size)]
        clean = torch.stack([item["face"] for item in items])  # (B, T, 3, 64, 64)
        spectrum = torch.stack([item["spectrum"] for item in items])  # (B, T, 513)
        crops = _faces_to_crops(clean)
        noisy = crops.copy()
        for b in range(len(items)):
            spec = refine_corruption(rng)
            if spec is not None:
                noisy[b] = parse_corruption(spec).apply(crops[b], rng)
            if rng.random() < REFINE_AUDIO_DROP:
                spectrum[b] = 0.0
        return {"spectrum": spectrum.to(self.device), "face_clean": clean.to(self.device),
                "face_input": torch.from_numpy(face_to_model(noisy)).to(self.device)}


def refine_loss(model: StreamingModel, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Squared error of the refined face against the clean crop; the rest of the model frozen."""
    spectrum, face = batch["spectrum"], batch["face_input"]
    with torch.no_grad():
        x_a, x_v = model.audio.encode(spectrum), model.visual.encode(face)
        seq = model.mdvae(x_a, x_v, sample=False)
        vq_face, mdvae_face = model.decoded_faces(x_v, seq.x_v_hat)
        B = face.shape[0]
        means, _ = model.refine.scan(face, model.refine.initial_state(B, face.device))
    flat = (-1, 3, 64, 64)
    refined = model.refine.fuse(face.reshape(flat), means.reshape(-1, *means.shape[-3:]),
                                vq_face.reshape(flat), mdvae_face.reshape(flat))
    mse = (refined - batch["face_clean"].reshape(flat)).pow(2).mean()
    return mse, {"mse": mse.item(), "psnr_db": float(-10 * torch.log10(mse.detach()))}


def train_stage(stage: str, cache: Path, out: Path, *, preset: str = "default",
                steps: int | None = None, batch_size: int | None = None,
                learning_rate: float | None = None, seed: int = 0, device: str = "cpu",
                threads: int = 1, window_frames: int | None = None,
                estimator_only: bool = False) -> dict:
    """Run one stage on `device` ("cpu" or "cuda"); returns a summary (steps, seconds, losses).

    `estimator_only` (the emotion stage): fit only the emotion estimator, written next to the
    model; the weights (the step's w head with them) are not touched, so an exported step.onnx
    stays valid. The w head's refit runs the model over every training clip (~20 min for 42
    synthetic speakers on this machine); the estimator's fit takes a minute or two.

    `threads`: PyTorch's CPU threads. 1 by default: these small models gain little from a
    second thread, and on a shared 2-core machine oversubscribed threads made steps 3-70x
    slower (measured: an MDVAE step 0.38 s on 1 thread, 1.2-27 s on 2 under load).
    """
    torch.set_num_threads(threads)
    if stage not in STAGES:
        raise InputError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if estimator_only and stage != "emotion":
        raise InputError("--estimator-only is for the emotion stage")
    if estimator_only and not (out / "config.json").is_file():
        raise InputError(f"--estimator-only fits next to a trained model: {out} has none")
    torch.manual_seed(seed)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available to PyTorch here")
    model = open_model(out, preset)
    if stage == "emotion":
        from streamav.train.emotion import fit_model_emotion_head, fit_model_estimator

        if estimator_only:
            return {"stage": "emotion", **fit_model_estimator(model, cache, out, seed=seed)}
        summary = fit_model_emotion_head(model, cache)
        summary.update(fit_model_estimator(model, cache, out, seed=seed))
    else:
        model.to(device)
        summary = _train_network(stage, model, cache, out, steps, batch_size, learning_rate, seed,
                                 device, window_frames)
        model.to("cpu")
    save_model(model, out, extra=_training_notes(out, stage, summary))
    return summary


def _train_network(stage: str, model: StreamingModel, cache: Path, out: Path,
                   steps: int | None, batch_size: int | None, learning_rate: float | None,
                   seed: int, device: str, window_frames: int | None = None) -> dict:
    defaults = DEFAULTS[stage]
    if window_frames is not None and (stage not in ("mdvae", "refine") or window_frames < 2):
        raise InputError("--window-frames is for the mdvae and refine stages, at least 2 frames")
    settings = StageSettings(steps or defaults.steps, batch_size or defaults.batch_size,
                             learning_rate or defaults.learning_rate,
                             window_frames or defaults.window_frames)
    dataset = CacheWindowDataset(cache, "train", window_frames=settings.window_frames,
                                 stride_frames=max(1, settings.window_frames // 2),
                                 require_face=True)
    batches = _Batches(dataset, settings.batch_size, seed, device)
    if stage == "vqvae-audio":
        part = model.audio

        def loss(batch):
            result = part(batch["spectrum"].reshape(-1, batch["spectrum"].shape[-1]))
            return result.loss, {"is": result.is_loss.item(),
                                 "perplexity": result.vq.perplexity.item()}
    elif stage == "refine":
        part = model.refine
        for frozen in (model.audio, model.visual, model.mdvae):
            frozen.eval()
        batches = _RefineWindows(dataset, settings.batch_size, seed, device)

        def loss(batch):
            return refine_loss(model, batch)
    elif stage == "vqvae-visual":
        part = model.visual

        def loss(batch):
            result = part(batch["face"].reshape(-1, *batch["face"].shape[-3:]))
            return result.loss, {"mse": result.mse.item(), "perplexity": result.vq.perplexity.item()}
    else:
        part = model.mdvae
        batches = _FeatureWindows(model, dataset, settings.batch_size, seed, device)

        def loss(batch):
            result = part(batch["x_a"], batch["x_v_input"])
            log_power_hat = model.audio.decode_log(result.x_a_hat)
            terms = mdvae_loss(result, batch["x_v_clean"], batch["audio_target"], log_power_hat)
            return terms.total, {k: v.item() for k, v in terms._asdict().items() if k != "total"}
    loop = LoopConfig(steps=settings.steps, learning_rate=settings.learning_rate, seed=seed,
                      checkpoint_every=max(10, settings.steps // 20),
                      log_every=max(1, min(10, settings.steps // 20)))
    result = run_loop(stage, out / "train" / stage, part, list(part.parameters()), batches, loss,
                      loop)
    part.eval()
    final = {key: values[-1] for key, values in result.history.items() if values}
    return {"stage": stage, "steps": result.steps_done, "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 1), "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate, "train_windows": len(dataset),
            "final": final}


def _training_notes(out: Path, stage: str, summary: dict) -> dict:
    """What config.json's "extra" says about how the folder's weights were trained."""
    notes: dict = {}
    config = out / "config.json"
    if config.is_file():
        import json

        notes = json.loads(config.read_text()).get("extra", {})
    notes.setdefault("training", {})[stage] = {**summary, "finished": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return notes
