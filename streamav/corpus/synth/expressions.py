"""Emotions in the face: action-unit weights of each of the 8 MEAD emotions, and how the
emotion sets the head, the gaze, the blink rate and how wide the mouth moves in speech.

The weights are the full (intensity 3) expression after the FACS prototypes of Ekman, Friesen &
Hager (2002) and Matsumoto & Ekman's contempt (unilateral AU14, here a one-sided smile);
intensities 1 and 2 scale them by `INTENSITY_SCALE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamav.corpus.synth.factors import EMOTIONS, INTENSITY_SCALE
from streamav.corpus.synth.rig import action_weights
from streamav.errors import InputError


@dataclass(frozen=True)
class EmotionLook:
    """How one emotion shows at full intensity (everything but `actions` is an offset or gain)."""

    actions: dict[str, float] = field(default_factory=dict)
    mouth_base: float = 0.0  # jaw opening held between words (0..1)
    articulation: float = 1.0  # gain on the speech-driven jaw opening
    head_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # yaw, pitch, roll offsets
    gaze: tuple[float, float] = (0.0, 0.0)  # gaze_x, gaze_y offsets
    blink_rate_factor: float = 1.0


EMOTION_LOOKS: dict[str, EmotionLook] = {
    "neutral": EmotionLook(),
    "happy": EmotionLook(
        actions=dict(smile_r=1.0, smile_l=1.0, cheek_raise=1.0, lid_tight=0.35,
                     upper_lip_raise=0.25, brow_outer_up=0.15),
        mouth_base=0.12, articulation=1.1, head_deg=(0.0, 3.0, 0.0), blink_rate_factor=1.1),
    "sad": EmotionLook(
        actions=dict(brow_inner_up=1.0, brow_lower=0.45, frown=1.0, chin_raise=0.6, lid_up=-0.45),
        articulation=0.7, head_deg=(0.0, -8.0, 0.0), gaze=(0.0, 0.55), blink_rate_factor=0.8),
    "angry": EmotionLook(
        actions=dict(brow_lower=1.0, lid_up=0.55, lid_tight=0.5, lip_press=1.0,
                     nose_wrinkle=0.25, chin_raise=0.3),
        articulation=0.85, head_deg=(0.0, -4.0, 0.0), blink_rate_factor=0.7),
    "fear": EmotionLook(
        actions=dict(brow_inner_up=1.0, brow_outer_up=0.6, brow_lower=0.45, lid_up=1.0,
                     lip_stretch=1.0),
        mouth_base=0.18, articulation=0.9, head_deg=(0.0, 3.0, 0.0), blink_rate_factor=1.4),
    "surprised": EmotionLook(
        actions=dict(brow_inner_up=1.0, brow_outer_up=1.0, lid_up=1.0, lips_round=0.25),
        mouth_base=0.45, articulation=0.8, head_deg=(0.0, 5.0, 0.0), blink_rate_factor=0.6),
    "disgusted": EmotionLook(
        actions=dict(nose_wrinkle=1.0, upper_lip_raise=1.0, brow_lower=0.6, frown=0.5,
                     cheek_raise=0.45, lid_tight=0.5, chin_raise=0.3),
        articulation=0.85, head_deg=(-4.0, 2.0, 0.0), gaze=(-0.2, 0.0)),
    "contempt": EmotionLook(
        actions=dict(smile_l=1.4, lip_press=0.4, lid_tight=0.35, brow_outer_up=0.25,
                     brow_lower=0.15),
        articulation=0.85, head_deg=(5.0, 4.0, 4.0), gaze=(-0.25, 0.0), blink_rate_factor=0.9),
}
assert set(EMOTION_LOOKS) == set(EMOTIONS)


def check_emotion(emotion: str, intensity: int) -> None:
    if emotion not in EMOTION_LOOKS:
        raise InputError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    if intensity not in INTENSITY_SCALE:
        raise InputError(f"intensity must be 1, 2 or 3, got {intensity!r}")


@dataclass(frozen=True)
class ClipExpression:
    """An emotion at an intensity, as the renderer and the motion processes use it."""

    weights: np.ndarray  # (A,) action weights
    mouth_base: float
    articulation: float
    head_deg: np.ndarray  # (3,) yaw, pitch, roll offsets
    gaze: np.ndarray  # (2,)
    blink_rate_factor: float


def clip_expression(emotion: str, intensity: int, expressiveness: float = 1.0,
                    asymmetry: float = 0.0) -> ClipExpression:
    """The expression of `emotion` at `intensity`; `expressiveness` is the speaker's own gain,
    `asymmetry` makes one-sided actions stronger on the subject's right (> 0) or left (< 0)."""
    check_emotion(emotion, intensity)
    look = EMOTION_LOOKS[emotion]
    scale = INTENSITY_SCALE[intensity] * expressiveness
    sides = dict(smile_r=1.0 + asymmetry, smile_l=1.0 - asymmetry)
    actions = {name: value * sides.get(name, 1.0) for name, value in look.actions.items()}
    return ClipExpression(
        weights=action_weights(**actions) * scale,
        mouth_base=look.mouth_base * scale,
        articulation=1.0 + (look.articulation - 1.0) * scale,
        head_deg=np.array(look.head_deg) * scale,
        gaze=np.array(look.gaze) * scale,
        blink_rate_factor=1.0 + (look.blink_rate_factor - 1.0) * scale,
    )
