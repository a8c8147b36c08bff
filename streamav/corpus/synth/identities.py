"""Speakers: who they are (plan, JSON-able) and what the renderer needs (built identity).

`plan_speakers` decides, from the corpus seed alone, each speaker's kind (photographic or
drawn, alternating when photos are available), photo source and restyling or drawn look,
proportions, layout in the frame, background, voice and motion habits. `build_identity` turns
a plan into the arrays a worker renders from: the portrait (RGB + alpha), its background, the
warp's control points in the portrait and at rest, the rig's action fields. Building needs
MediaPipe (the photos' mesh, the person cut-out, and a check that each drawn face is found);
rendering does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamav.corpus.synth import drawn, photo
from streamav.corpus.synth.background import draw_background
from streamav.corpus.synth.factors import derive_seed, rng_for, speaker_id
from streamav.corpus.synth.landmarks import StillFaceMesh, person_mask
from streamav.corpus.synth.motion import MotionStyle
from streamav.corpus.synth.mouth import MouthLook
from streamav.corpus.synth.pose import extra_points
from streamav.corpus.synth.rig import build_basis, spread
from streamav.corpus.synth.shape import draw_shape, shape_offsets
from streamav.corpus.synth.template import close_mouth, load_template, part_lips, to_face_local
from streamav.corpus.synth.voice import VARIANTS, Voice, draw_voice
from streamav.errors import InputError

FRAME_SIZE_PX = 256
N_MESH = 478
_HAIR_LAB = ((15.0, 2.0, 4.0), (28.0, 8.0, 14.0), (42.0, 12.0, 24.0), (62.0, 6.0, 30.0),
             (40.0, 28.0, 34.0), (60.0, 0.0, 3.0))


@dataclass(frozen=True)
class SpeakerPlan:
    """Everything that defines a speaker (written to speakers.json)."""

    speaker: str
    kind: str  # "photo" | "drawn"
    source: str  # photo source name, or "drawn"
    gender: str
    voice: Voice
    motion: MotionStyle
    shape: dict[str, float]
    origin_px: tuple[float, float]
    eye_dist_px: float
    expressiveness: float  # the speaker's gain on every emotion's action weights
    articulation: float
    mirror: bool = False
    skin_shift_lab: tuple[float, float, float] | None = None  # photo restyling (None: as is)
    hair_lab: tuple[float, float, float] | None = None
    clothes_hue_shift_deg: float = 0.0
    look: drawn.DrawnLook | None = None  # drawn faces
    seed: int = 0  # this speaker's own seed (background, painting details)
    # one-sided actions (the smile) stronger on the subject's right (> 0) or left (< 0) by this
    # fraction: real expressions are seldom symmetric, and a classifier must not need them to be
    asymmetry: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Identity:
    """A built speaker: what the renderer needs."""

    plan: SpeakerPlan
    portrait_rgb: np.ndarray  # (H, W, 3) uint8
    portrait_alpha: np.ndarray  # (H, W) float32
    background_rgb: np.ndarray  # (H, W, 3) uint8
    source_px: np.ndarray  # (P, 2) control points in the portrait (478 mesh + extras)
    rest_local: np.ndarray  # (P, 3) their rest positions, face-local units
    turns: np.ndarray  # (P,) bool: moves with the head
    basis: np.ndarray  # (A, 478, 3) action fields
    origin_px: np.ndarray  # (2,) where face-local (0, 0) is in the frame
    eye_dist_px: float
    mouth: MouthLook = field(default_factory=MouthLook)


def plan_speakers(n_speakers: int, seed: int, photo_sources: list[photo.PhotoSource]
                  ) -> list[SpeakerPlan]:
    """Plans for `n_speakers` speakers: odd-numbered ones (S001, S003, ...) photographic when
    photos are available, the others drawn. The first use of each photo keeps the person as
    photographed (new background only); later uses restyle skin, hair, clothes and mirror."""
    plans = []
    photo_uses = 0
    # Voice variants are dealt from a shuffled deck per gender, so speakers of a gender get
    # distinct variants until the deck runs out (15-16 each); base pitch and accent vary anyway.
    decks = {gender: [str(v) for v in rng_for(seed, "voice-deck", gender).permutation(variants)]
             for gender, variants in VARIANTS.items()}
    dealt = {gender: 0 for gender in decks}

    def next_variant(gender: str) -> str:
        dealt[gender] += 1
        return decks[gender][(dealt[gender] - 1) % len(decks[gender])]

    for index in range(n_speakers):
        rng = rng_for(seed, "speaker", index)
        use_photo = bool(photo_sources) and index % 2 == 0
        common = dict(
            speaker=speaker_id(index),
            origin_px=(float(FRAME_SIZE_PX / 2 + rng.normal(0.0, 4.0)),
                       float(100.0 + rng.normal(0.0, 4.0))),
            eye_dist_px=float(rng.uniform(43.0, 50.0)),
            motion=MotionStyle(yaw_sd_deg=float(rng.uniform(2.5, 5.5)),
                               pitch_sd_deg=float(rng.uniform(1.5, 3.5)),
                               roll_sd_deg=float(rng.uniform(1.0, 2.5)),
                               blinks_per_min=float(rng.uniform(10.0, 24.0)),
                               gaze_sd=float(rng.uniform(0.2, 0.4))),
            # people differ several-fold in how much they show (0.45..1.25, log-uniform: a
            # subtle speaker is as likely as a broad one); until session 7 0.85..1.15
            expressiveness=float(np.exp(rng.uniform(np.log(0.45), np.log(1.25)))),
            articulation=float(rng.uniform(0.85, 1.2)),
            seed=derive_seed(seed, "speaker-seed", index),
            asymmetry=float(rng_for(seed, "speaker-asymmetry", index).uniform(-0.3, 0.3)),
        )
        if use_photo:
            source = photo_sources[photo_uses % len(photo_sources)]
            restyled = photo_uses >= len(photo_sources)
            photo_uses += 1
            gender = source.gender
            plans.append(SpeakerPlan(
                kind="photo", source=source.name, gender=gender,
                voice=draw_voice(rng, gender, next_variant(gender)),
                shape=draw_shape(rng, 0.6 if restyled else 0.3),
                mirror=bool(restyled and rng.random() < 0.5),
                skin_shift_lab=(float(rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 12.0)),
                                float(rng.uniform(-3.0, 3.0)), float(rng.uniform(-4.0, 4.0)))
                if restyled else None,
                hair_lab=_HAIR_LAB[int(rng.integers(len(_HAIR_LAB)))] if restyled else None,
                clothes_hue_shift_deg=float(rng.uniform(60.0, 300.0)) if restyled else 0.0,
                **common))
        else:
            gender = "female" if rng.random() < 0.5 else "male"
            plans.append(SpeakerPlan(
                kind="drawn", source="drawn", gender=gender,
                voice=draw_voice(rng, gender, next_variant(gender)),
                shape=draw_shape(rng), look=drawn.draw_look(rng, gender), **common))
    return plans


def _neutral_mouth(local: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Close the lips and put the mouth corners at the template's height relative to the lip
    line (a photo taken smiling gets a neutral rest mouth; the rig adds expressions to it)."""
    out = close_mouth(local)
    inner = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 95, 88, 178, 87, 14, 317, 402,
             318, 324]
    ref_t = template[inner, 1].mean()
    ref = out[inner, 1].mean()
    idx = np.array([61, 291, 78, 308])
    disp = np.zeros((len(idx), 2))
    disp[:, 1] = (template[idx, 1] - ref_t) - (out[idx, 1] - ref)
    disp[:, 1] = np.clip(disp[:, 1], -0.02, 0.12)  # lower raised corners; never raise them
    below_nose = (out[:, 1] > 0.8).astype(float)
    out[:N_MESH, :2] += spread(out[:N_MESH, :2], idx, disp, 0.15, below_nose)
    return out


def _photo_portrait(plan: SpeakerPlan, detector: StillFaceMesh
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = photo.load_photo(plan.source)
    if image is None:
        raise InputError(f"photo source {plan.source!r} is not available on this machine")
    if plan.mirror:
        image = np.ascontiguousarray(image[:, ::-1])
    mesh = detector.detect(image)
    if mesh is None:
        raise InputError(f"no face found in photo source {plan.source!r}")
    origin = np.array(plan.origin_px)
    portrait = photo.normalise(image, mesh, FRAME_SIZE_PX, origin, plan.eye_dist_px)
    mesh = detector.detect(portrait)
    if mesh is None:
        raise InputError(f"no face found in the normalised photo {plan.source!r}")
    alpha = photo.green_screen_alpha(portrait)
    if alpha is not None:
        portrait = photo.despill(portrait)
    else:
        alpha = person_mask(portrait)
    if plan.skin_shift_lab is not None or plan.hair_lab is not None or plan.clothes_hue_shift_deg:
        portrait = photo.restyle(portrait, alpha, mesh, plan.eye_dist_px, plan.skin_shift_lab,
                                 plan.hair_lab, plan.clothes_hue_shift_deg)
    return portrait, alpha.astype(np.float32), mesh


def build_identity(plan: SpeakerPlan, detector: StillFaceMesh) -> Identity:
    """Make the portrait, the control points and the rig of one planned speaker."""
    template, _ = load_template()
    rng = np.random.Generator(np.random.PCG64(plan.seed))
    background = draw_background(rng, FRAME_SIZE_PX, FRAME_SIZE_PX)
    if plan.kind == "photo":
        portrait, alpha, mesh = _photo_portrait(plan, detector)
        local, origin, eye_dist, _ = to_face_local(mesh)
        rest = _neutral_mouth(local, template)
        rest = rest + shape_offsets(rest, plan.shape)
        source_mesh_px = mesh[:, :2]
    else:
        origin, eye_dist = np.array(plan.origin_px), float(plan.eye_dist_px)
        shape = dict(plan.shape, lip_fullness=plan.shape.get("lip_fullness", 0.0) + 0.2,
                     eye_size=plan.shape.get("eye_size", 0.0) + 0.1)
        rest = part_lips(template + shape_offsets(template, shape), 0.012)
        rest_px = np.concatenate([origin + rest[:, :2] * eye_dist, rest[:, 2:] * eye_dist], 1)
        for attempt in range(4):
            portrait, alpha = drawn.paint_portrait(rest_px, plan.look, FRAME_SIZE_PX, origin,
                                                   eye_dist, rng)
            composite = (portrait * alpha[..., None] + background * (1.0 - alpha[..., None]))
            if detector.detect(composite.astype(np.uint8)) is not None:
                break
        else:
            raise InputError(f"{plan.speaker}: MediaPipe finds no face in the drawn portrait")
        source_mesh_px = rest_px[:, :2]
    extra, extra_turns = extra_points(FRAME_SIZE_PX, FRAME_SIZE_PX, origin, eye_dist)
    source_px = np.concatenate([source_mesh_px, origin + extra[:, :2] * eye_dist])
    rest_local = np.concatenate([rest, extra])
    turns = np.concatenate([np.ones(N_MESH, bool), extra_turns])
    teeth = float(rng.uniform(0.85, 1.05))
    mouth = MouthLook(cavity_rgb=tuple(float(c) for c in rng.uniform(0.8, 1.2) * np.array(
                          MouthLook.cavity_rgb)),
                      teeth_rgb=tuple(float(min(c * teeth, 255.0)) for c in MouthLook.teeth_rgb))
    return Identity(plan=plan, portrait_rgb=portrait, portrait_alpha=alpha,
                    background_rgb=background, source_px=source_px, rest_local=rest_local,
                    turns=turns, basis=build_basis(rest), origin_px=np.asarray(origin, float),
                    eye_dist_px=float(eye_dist), mouth=mouth)


def build_identities(plans: list[SpeakerPlan]) -> list[Identity]:
    with StillFaceMesh() as detector:
        return [build_identity(plan, detector) for plan in plans]
