"""One clip, start to finish: speech → soundtrack → lips, expression, motion → frames → files.

`make_clip` is what a worker process runs. Every random draw comes from streams seeded by the
corpus seed and the clip's id (`rng_for(seed, clip_id, purpose)`), one stream per purpose, so the
clip does not depend on anything but its own factors and its speaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.corpus.synth.audio_features import frame_rms, yin_pitch
from streamav.corpus.synth.audio_mix import mix
from streamav.corpus.synth.expressions import clip_expression
from streamav.corpus.synth.factors import FPS, INTENSITY_SCALE, clip_id, rng_for
from streamav.corpus.synth.identities import FRAME_SIZE_PX, Identity, SpeakerPlan
from streamav.corpus.synth.lips import lip_traces
from streamav.corpus.synth.motion import motion_traces, smooth_noise
from streamav.corpus.synth.mux import write_mp4, write_npz
from streamav.corpus.synth.render import FrameRenderer
from streamav.corpus.synth.rig import ACTION_INDEX, ACTIONS
from streamav.corpus.synth.sentences import sentence_text
from streamav.corpus.synth.voice import emotion_sox_effects, plan_utterance, synthesize

LIP_ROUND_GAIN = 0.8


@dataclass(frozen=True)
class ClipSpec:
    speaker: str
    sentence: int
    emotion: str
    intensity: int

    @property
    def clip_id(self) -> str:
        return clip_id(self.speaker, self.sentence, self.emotion, self.intensity)


@dataclass(frozen=True)
class ClipResult:
    clip_id: str
    n_frames: int
    duration_s: float
    text: str
    still_rgb: np.ndarray | None  # a representative frame, for the contact sheet


@dataclass(frozen=True, eq=False)
class ClipPlan:
    """Everything about a clip except its pixels: the soundtrack, the per-frame action weights
    and the ground-truth traces. Needs only the speaker's plan, not its rendered identity."""

    spec: ClipSpec
    text: str
    audio: np.ndarray  # (N,) float32 16 kHz
    n_frames: int
    weights: np.ndarray  # (T, A) float32 action weights
    head_deg: np.ndarray  # (T, 3) float32
    head_shift: np.ndarray  # (T, 2) float32
    traces: dict[str, np.ndarray]


def action_track(plan: SpeakerPlan, spec: ClipSpec, n_frames: int, lips_open: np.ndarray,
                 lips_round: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-frame action weights (T, A) and the motion traces they come from."""
    expr = clip_expression(spec.emotion, spec.intensity, plan.expressiveness, plan.asymmetry)
    motion = motion_traces(rng, n_frames, plan.motion, expr.head_deg, expr.gaze,
                           expr.blink_rate_factor)
    swell = 1.0 + 0.08 * smooth_noise(rng, n_frames, 0.25)  # the expression breathes a little
    mouth_open = np.clip(expr.mouth_base + plan.articulation * expr.articulation * lips_open,
                         0.0, 1.0)
    weights = np.outer(swell, expr.weights)  # (T, A)
    weights[:, ACTION_INDEX["jaw_open"]] += mouth_open
    weights[:, ACTION_INDEX["lips_round"]] += LIP_ROUND_GAIN * lips_round
    weights[:, ACTION_INDEX["blink_r"]] += motion.blink
    weights[:, ACTION_INDEX["blink_l"]] += motion.blink
    weights[:, ACTION_INDEX["gaze_x"]] += motion.gaze[:, 0]
    weights[:, ACTION_INDEX["gaze_y"]] += motion.gaze[:, 1]
    return {"weights": weights.astype(np.float32), "mouth_open": mouth_open.astype(np.float32),
            "head_deg": motion.head_deg, "head_shift": motion.head_shift,
            "blink": motion.blink, "gaze": motion.gaze}


def plan_clip(plan: SpeakerPlan, spec: ClipSpec, seed: int) -> ClipPlan:
    """Speak the sentence, mix the soundtrack, drive the lips from it, draw the expression,
    head, blinks and gaze, and measure the traces (no rendering)."""
    cid = spec.clip_id
    text = sentence_text(spec.sentence)
    utterance = plan_utterance(text, spec.emotion, spec.intensity, rng_for(seed, cid, "voice"))
    speech = synthesize(plan.voice, utterance,
                        emotion_sox_effects(spec.emotion, INTENSITY_SCALE[spec.intensity]))
    sound = mix(speech, rng_for(seed, cid, "mix"))
    n = sound.n_frames
    lips = lip_traces(sound.speech, n)
    track = action_track(plan, spec, n, lips.open, lips.round, rng_for(seed, cid, "motion"))
    traces = {
        "mouth_open": track["mouth_open"],
        "mouth_open_speech": lips.open,
        "lip_round": lips.round,
        "head_yaw_deg": track["head_deg"][:, 0],
        "head_pitch_deg": track["head_deg"][:, 1],
        "head_roll_deg": track["head_deg"][:, 2],
        "head_shift": track["head_shift"],
        "blink": track["blink"],
        "gaze_x": track["gaze"][:, 0],
        "gaze_y": track["gaze"][:, 1],
        "pitch_hz": yin_pitch(sound.audio, n),
        "envelope": frame_rms(sound.audio, n),
        "speech_envelope": frame_rms(sound.speech, n),
        "breath_envelope": frame_rms(sound.breath, n),
        "action_weights": track["weights"],
        "action_names": np.array(ACTIONS),
        "frame_time_s": np.arange(n, dtype=np.float32) / FPS,
    }
    traces = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in traces.items()}
    return ClipPlan(spec=spec, text=text, audio=sound.audio, n_frames=n,
                    weights=track["weights"], head_deg=track["head_deg"],
                    head_shift=track["head_shift"], traces=traces)


def _still_index(traces: dict[str, np.ndarray]) -> int:
    """A frame that shows the expression plainly: eyes open, head near its mean, the mouth
    about as open as it usually is in speech."""
    mouth = traces["mouth_open"]
    head = np.stack([traces["head_yaw_deg"], traces["head_pitch_deg"], traces["head_roll_deg"]], 1)
    speaking = mouth[mouth > mouth.min() + 0.05]
    target = float(np.quantile(speaking, 0.4)) if len(speaking) else float(mouth.mean())
    gaze = np.abs(traces["gaze_x"]) + np.abs(traces["gaze_y"])
    cost = (np.abs(mouth - target) * 4.0 + np.abs(head - head.mean(axis=0)).sum(axis=1) * 0.05
            + (traces["blink"] > 0.02) * 10.0 + gaze)
    return int(np.argmin(cost))


def _face_crop(image: np.ndarray, five_xy: np.ndarray, eye_dist_px: float) -> np.ndarray:
    """A square crop around the face (3.4 eye distances wide) for the contact sheet."""
    centre = five_xy.mean(axis=0) + [0.0, -0.15 * eye_dist_px]
    half = int(round(1.7 * eye_dist_px))
    x0 = int(np.clip(round(centre[0]) - half, 0, image.shape[1] - 2 * half))
    y0 = int(np.clip(round(centre[1]) - half, 0, image.shape[0] - 2 * half))
    return image[y0: y0 + 2 * half, x0: x0 + 2 * half].copy()


def make_clip(identity: Identity, spec: ClipSpec, seed: int, out_dir: Path,
              keep_still: bool = False) -> ClipResult:
    """Generate one clip's mp4 and traces npz under `out_dir` (clips/, traces/)."""
    clip = plan_clip(identity.plan, spec, seed)
    n = clip.n_frames
    renderer = FrameRenderer(identity)
    render_rng = rng_for(seed, spec.clip_id, "render")
    landmarks = np.zeros((n, 5, 2), np.float32)
    still_at = _still_index(clip.traces) if keep_still else -1
    still: list[np.ndarray] = []

    def frames():
        for t in range(n):
            image, five = renderer.render(clip.weights[t], clip.head_deg[t], clip.head_shift[t],
                                          render_rng)
            landmarks[t] = five
            if t == still_at:
                still.append(_face_crop(image, five, identity.eye_dist_px))
            yield image

    write_mp4(out_dir / "clips" / f"{spec.clip_id}.mp4", frames(), clip.audio,
              (FRAME_SIZE_PX, FRAME_SIZE_PX))
    write_npz(out_dir / "traces" / f"{spec.clip_id}.npz",
              dict(clip.traces, landmarks5_xy=landmarks))
    return ClipResult(clip_id=spec.clip_id, n_frames=n, duration_s=n / FPS, text=clip.text,
                      still_rgb=still[0] if still else None)
