"""The MDVAE as a live pipeline stage: one causal step per frame with a face, and its messages.

`ModelStage.step(crop_rgb, spectrum)` runs the model on the aligned face crop (corrupted first
when `--noise` asks for it) and the frame's power spectrum, and returns the frame's `emotion`,
`video.denoised` and `latent` payloads plus an `emotion.change` payload when the smoothed label
changes. Frames without a face are not stepped: the state is held until the face is back.
Non-finite values anywhere in the step are caught by the model's `GuardedStream` (counted, the
state reset) and nothing is published for that frame.

The model needs PyTorch (`pip install 'streamav[train]'`); it is imported when the stage starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from streamav.emotion.events import EmotionChangeDetector
from streamav.errors import MissingDependencyError
from streamav.frontend.corruption import Corruption

log = logging.getLogger(__name__)

TORCH_HINT = ("the MDVAE needs PyTorch: pip install 'streamav[train]' (torch==2.13.0; "
              "elsewhere add --extra-index-url https://download.pytorch.org/whl/cpu)")


def default_model_folder() -> Path:
    """The model shipped inside the package (streamav/data/model), which may be absent."""
    return Path(str(files("streamav.data") / "model"))


@dataclass(frozen=True)
class ModelMessages:
    """What one stepped frame publishes (payloads without the envelope)."""

    emotion: dict
    denoised: dict
    denoised_rgb: np.ndarray  # (64, 64, 3) uint8, the raw buffer of `video.denoised`
    latent: dict
    change: dict | None
    noisy_rgb: np.ndarray  # the crop the model saw (corrupted when --noise is on)


@dataclass(frozen=True)
class EngineOptions:
    """Which engine runs the step (docs/engines.md); `auto` is ONNX Runtime on a CPU."""

    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    engine_dir: Path | None = None


class ModelStage:
    def __init__(self, folder: Path, noise: Corruption | None = None, fps: float = 30.0,
                 seed: int = 0, engine: EngineOptions | None = None) -> None:
        self.folder = Path(folder)
        self.engine_options = engine or EngineOptions()
        self.engine_label = ""
        self.noise = noise
        self.fps = fps
        self._rng = np.random.default_rng(seed)
        self._stream = None
        self._detector: EmotionChangeDetector | None = None
        self.labels: tuple[str, ...] = ()

    def start(self) -> None:
        try:
            import torch
        except ImportError:
            raise MissingDependencyError(TORCH_HINT) from None
        from streamav.corpus.dataset import face_to_model
        from streamav.model.io import load_model
        from streamav.model.streaming import GuardedStream

        options = self.engine_options
        torch.set_num_threads(options.threads)  # by default one: the others decode and track
        model = load_model(self.folder)
        self.labels = tuple(model.labels)
        self._torch, self._face_to_model = torch, face_to_model  # imported once, used per frame
        engine = self._open_engine(model)
        self.engine_label = engine.spec.label
        self._stream = GuardedStream(model, batch=1, step_fn=engine.step, device=engine.device)
        self._detector = EmotionChangeDetector(self.labels, fps=self.fps)
        log.info("model %s (%s preset) loaded; step on %s", self.folder, model.cfg.preset,
                 self.engine_label)

    def _open_engine(self, model):
        from streamav.engines import EngineCache
        from streamav.engines.registry import open_with_fallback

        options = self.engine_options
        return open_with_fallback(model, options.backend, options.device, options.precision,
                                  batch=1, cache=EngineCache(options.engine_dir),
                                  threads=options.threads)

    @property
    def nonfinite_frames(self) -> int:
        return 0 if self._stream is None else self._stream.nonfinite_count

    def reset(self) -> None:
        if self._stream is not None:
            self._stream.reset()
        if self._detector is not None:
            self._detector.reset()

    def stop(self) -> None:
        self._stream = None

    def step(self, crop_rgb: np.ndarray, spectrum: np.ndarray | None, frame_seq: int
             ) -> ModelMessages | None:
        """One frame; None when the step produced non-finite values (state already reset)."""
        assert self._stream is not None and self._detector is not None, "start() first"
        torch, face_to_model = self._torch, self._face_to_model
        seen = self.noise.apply(crop_rgb, self._rng) if self.noise is not None else crop_rgb
        face = torch.from_numpy(np.ascontiguousarray(face_to_model(seen)))[None]
        power = np.zeros(513, np.float32) if spectrum is None else spectrum
        out = self._stream.step(torch.from_numpy(np.ascontiguousarray(power))[None], face)
        if out is None:
            return None
        probs = out.emotion_probs[0].numpy().astype(np.float64)
        top = int(np.argmax(probs))
        denoised = ((out.face_hat[0].permute(1, 2, 0).numpy() + 0.5) * 255.0 + 0.5)
        denoised_rgb = np.ascontiguousarray(denoised.clip(0, 255).astype(np.uint8))
        change = self._detector.step(probs)
        return ModelMessages(
            emotion={"labels": list(self.labels), "probs": probs.round(5).tolist(),
                     "top": self.labels[top], "confidence": round(float(probs[top]), 5),
                     "frame_seq": frame_seq},
            denoised={"width": 64, "height": 64, "format": "rgb24", "frame_seq": frame_seq},
            denoised_rgb=denoised_rgb,
            latent={"w": out.w_mean[0].tolist(), "w_var": out.w_var[0].tolist(),
                    "z_av": out.z_av[0].tolist(), "z_a": out.z_a[0].tolist(),
                    "z_v": out.z_v[0].tolist(), "frame_seq": frame_seq},
            change=None if change is None else {
                "from": change.previous, "to": change.label,
                "confidence": round(change.confidence, 5), "frame_seq": frame_seq},
            noisy_rgb=seen,
        )
