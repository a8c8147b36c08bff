"""The MDVAE as a live pipeline stage: one causal step per frame with a face, and its messages.

`ModelStage.step(crop_rgb, spectrum, frame_seq, mesh_crop_xy)` runs the model on the aligned
face crop (corrupted first when `--noise` asks for it) and the frame's power spectrum, and the
emotion estimator (streamav.emotion) on the face's geometry and the voice's prosody; it returns
the frame's `emotion`, `video.denoised` and `latent` messages (streamav.wire.messages, at full
precision: the wire rounds) plus an `emotion.change` message when the smoothed label changes
(never while the estimate is `uncertain`). Frames without a face are not stepped: the state is
held until the face is back. `reset()` is a new person: the model's recurrent state and w, the
identity path's running means, the emotion baseline and smoothing and the change detector start
again; the pipeline calls it (`LivePipeline.reset`: a source that came back, the face lost for
longer than `[run] face_lost_reset_s`, the control socket's `reset`). Non-finite values anywhere
in the step are caught by the runner's guard (counted, the state reset) and nothing is
published for that frame. The stage is a `streamav.stage.Stage` (start, step, reset, stop).

The step runs through `streamav.model_runner`: on the engine asked for when PyTorch is
installed, else on the model folder's shipped step.onnx with ONNX Runtime alone (no torch).
In a many-stream run (streamav.multi_live) the stage is given its stream's `slot` of the
run's shared `SlotRunner` instead of opening an engine of its own; `stop()` frees it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.data import default_model_folder
from streamav.emotion.estimator import (EmotionEstimator, EmotionReading, EmotionSettings,
                                        EmotionStream)
from streamav.emotion.events import EmotionChangeDetector
from streamav.emotion.features import frame_features
from streamav.errors import InputError
from streamav.frontend.corruption import Corruption
from streamav.engines.choice import EngineChoice
from streamav.engines.inputs import EngineInputs
from streamav.model.inputs import SPECTRUM_BINS, face_to_model
from streamav.model_runner import StepRunner, check_choice_here, open_runner
from streamav.stream_slots import SlotHandle
from streamav.wire.messages import Emotion, EmotionChange, Latent, VideoDenoised

__all__ = ["DEFAULT_FPS", "ModelMessages", "ModelStage", "default_model_folder"]

# the frame rate the emotion smoothing and the change detector assume unless told (a live run's
# stage is built before its source's rate is known)
DEFAULT_FPS = 30.0

log = logging.getLogger(__name__)


def step_head_reading(probs: np.ndarray, labels: tuple[str, ...],
                      uncertain_below: float) -> EmotionReading:
    probs = np.asarray(probs, np.float64)
    top = int(np.argmax(probs))
    return EmotionReading(probs, labels[top], float(probs[top]), probs[top] < uncertain_below)


@dataclass(frozen=True)
class ModelMessages:
    """What one stepped frame publishes (typed messages, full precision: the wire rounds)."""

    emotion: Emotion
    denoised: VideoDenoised
    denoised_rgb: np.ndarray  # (64, 64, 3) uint8, the raw buffer of `video.denoised`
    latent: Latent
    change: EmotionChange | None
    noisy_rgb: np.ndarray  # the crop the model saw (corrupted when --noise is on)


class ModelStage:
    """`engine`: the engine choice (default: auto on the CPU); `threads`: the step's intra-op
    threads; `engine_dir`: the engine cache; `engine_inputs`: real frames for an engine built
    on first use (streamav.offline_features.OfflineInputs)."""

    def __init__(self, folder: Path, noise: Corruption | None = None, fps: float = DEFAULT_FPS,
                 seed: int = 0, engine: EngineChoice | None = None, threads: int = 1,
                 engine_dir: Path | None = None, engine_inputs: EngineInputs | None = None,
                 profile: str | None = None, slot: SlotHandle | None = None) -> None:
        self.folder = Path(folder)
        self.engine = engine or EngineChoice()
        check_choice_here(self.engine)  # now, before the run binds or opens anything
        self.threads = threads
        self.engine_dir = engine_dir
        self.engine_inputs = engine_inputs
        self.engine_label = ""
        self.noise = noise
        self.fps = fps
        self._rng = np.random.default_rng(seed)
        self._runner: StepRunner | None = None
        self._detector: EmotionChangeDetector | None = None
        self._emotion: EmotionStream | None = None
        self.profile_name = profile
        self.labels: tuple[str, ...] = ()
        self._slot = slot

    def start(self) -> None:
        if self._slot is not None:  # a slot of a many-stream run's shared engine
            runner: StepRunner = self._slot
        else:
            runner = open_runner(self.folder, self.engine, self.threads, self.engine_dir,
                                 self.engine_inputs)
        if EmotionEstimator.present(self.folder):
            estimator = EmotionEstimator.load(self.folder)
            self._emotion = estimator.stream(self.fps, self._load_profile(estimator))
            self.labels = tuple(estimator.labels)
        else:  # a folder from `streamav train` before its emotion stage
            if self.profile_name is not None:
                raise InputError(f"--profile: the model {self.folder} has no emotion estimator "
                                 "(streamav train emotion)")
            log.warning("%s has no emotion estimator: emotion from the step's w head "
                        "(fit one with `streamav train emotion`)", self.folder)
            self.labels = runner.labels
        self._runner = runner
        self.engine_label = runner.label
        self._detector = EmotionChangeDetector(self.labels, fps=self.fps)
        log.info("model %s loaded; step on %s", self.folder, self.engine_label)

    def _load_profile(self, estimator: EmotionEstimator):
        if self.profile_name is None:
            return None
        from streamav.emotion.profiles import load_profile

        return load_profile(self.profile_name, estimator)

    def use_profile(self, name: str | None) -> None:
        """Switch to another calibration profile (None: none) from the next frame on."""
        if self._emotion is None:
            log.warning("profile %s not loaded: the model has no emotion estimator", name)
            return
        self.profile_name = name
        estimator = self._emotion.estimator
        self._emotion = estimator.stream(self.fps, self._load_profile(estimator))
        if self._detector is not None:
            self._detector.reset()

    def snapshot_state(self) -> dict:
        """A copy of the stage's own state besides the model's (the runner's): the emotion
        baseline and smoothing, the change detector; for `restore_state` in another process
        (a serve replica's stream moving to another replica)."""
        emotion = None if self._emotion is None else {
            k: copy.deepcopy(v) for k, v in vars(self._emotion).items() if k != "estimator"}
        detector = None if self._detector is None else copy.deepcopy(vars(self._detector))
        return {"emotion": emotion, "detector": detector}

    def restore_state(self, state: dict) -> None:
        """Put back what `snapshot_state` took (after `start()`; the estimator is this
        stage's own)."""
        if self._emotion is not None and state.get("emotion") is not None:
            vars(self._emotion).update(copy.deepcopy(state["emotion"]))
        if self._detector is not None and state.get("detector") is not None:
            vars(self._detector).update(copy.deepcopy(state["detector"]))

    @property
    def nonfinite_frames(self) -> int:
        return 0 if self._runner is None else self._runner.nonfinite_count

    def reset(self) -> None:
        """A new person: the model's state (its recurrent states, w, the identity path's running
        means: the runner's initial state), the emotion baseline and smoothing, and the change
        detector. Works before `start()` and after `stop()` (nothing to reset then)."""
        if self._runner is not None:
            self._runner.reset()
        if self._detector is not None:
            self._detector.reset()
        if self._emotion is not None:
            self._emotion.reset()

    def idle(self) -> None:
        """A frame without a face: not stepped (the state is held); a many-stream tick does
        not wait for this stream."""
        if self._runner is not None:
            self._runner.idle()

    def stop(self) -> None:
        """The stream leaves: its slot is freed (a many-stream run's next stream may take it)."""
        runner, self._runner = self._runner, None
        if runner is None:
            runner = self._slot
        if runner is not None:
            runner.leave()

    def step(self, crop_rgb: np.ndarray, spectrum: np.ndarray | None, frame_seq: int,
             mesh_crop_xy: np.ndarray) -> ModelMessages | None:
        """One frame with a face; None when the step produced non-finite values (state
        already reset)."""
        assert self._runner is not None and self._detector is not None, "start() first"
        settings = (self._emotion.estimator.settings if self._emotion is not None
                    else EmotionSettings())
        seen = self.noise.apply(crop_rgb, self._rng) if self.noise is not None else crop_rgb
        face = np.ascontiguousarray(face_to_model(seen))[None]
        power = np.zeros(SPECTRUM_BINS, np.float32) if spectrum is None else spectrum
        out = self._runner.step(np.ascontiguousarray(power, np.float32)[None], face)
        if out is None:
            return None
        if self._emotion is not None:
            features = frame_features(settings.groups, mesh_crop_xy=mesh_crop_xy,
                                      spectrum=power, w=out["w_mean"][0])
            reading = self._emotion.step(features)
        else:
            reading = step_head_reading(out["emotion_probs"][0], self.labels,
                                        settings.uncertain_below)
        probs = reading.probs
        denoised = ((out["face_hat"][0].transpose(1, 2, 0) + 0.5) * 255.0 + 0.5)
        denoised_rgb = np.ascontiguousarray(denoised.clip(0, 255).astype(np.uint8))
        change = None if reading.uncertain else self._detector.step(probs)
        baseline_s = float("inf") if self._emotion is None else self._emotion.baseline_age_s
        return ModelMessages(
            emotion=Emotion(labels=tuple(map(str, self.labels)), probs=_floats(probs),
                            top=str(reading.top), confidence=float(reading.confidence),
                            uncertain=bool(reading.uncertain),
                            baseline_s=None if baseline_s == float("inf") else float(baseline_s),
                            profile=self.profile_name, frame_seq=frame_seq),
            denoised=VideoDenoised(width=denoised_rgb.shape[1], height=denoised_rgb.shape[0],
                                   format="rgb24", frame_seq=frame_seq),
            denoised_rgb=denoised_rgb,
            latent=Latent(w=_floats(out["w_mean"][0]), w_var=_floats(out["w_var"][0]),
                          z_av=_floats(out["z_av"][0]), z_a=_floats(out["z_a"][0]),
                          z_v=_floats(out["z_v"][0]), frame_seq=frame_seq),
            change=None if change is None else EmotionChange(
                from_=None if change.previous is None else str(change.previous),
                to=str(change.label), confidence=float(change.confidence),
                frame_seq=frame_seq),
            noisy_rgb=seen,
        )


def _floats(array: np.ndarray) -> tuple[float, ...]:
    return tuple(np.asarray(array, np.float64).ravel().tolist())
