"""The corpus's factors and names: emotions, intensities, clip ids, speaker ids, seeds.

Every random choice in the generator draws from a `numpy.random.Generator` seeded by
`derive_seed(seed, *keys)`: a SHA-256 of the corpus seed and the keys (speaker, sentence,
emotion, intensity, and what the draw is for). A clip's content therefore depends only on the
corpus seed and its own factors: not on which other clips are made, in which order, or by which
worker process.
"""

from __future__ import annotations

import hashlib

import numpy as np

EMOTIONS: tuple[str, ...] = (
    "angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
INTENSITIES: tuple[int, ...] = (1, 2, 3)
# How much of the full (intensity 3) expression and prosody change each level carries.
INTENSITY_SCALE: dict[int, float] = {1: 0.45, 2: 0.72, 3: 1.0}

FPS = 30
SAMPLE_RATE_HZ = 16_000
GENERATOR_VERSION = "synth-2"  # synth-2 (session 7): GRID identities, wider expressiveness, asymmetry


def speaker_id(index: int) -> str:
    """0-based speaker index → "S001"."""
    return f"S{index + 1:03d}"


def clip_id(speaker: str, sentence: int, emotion: str, intensity: int) -> str:
    return f"{speaker}_{sentence:02d}_{emotion}_{intensity}"


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit seed from the corpus seed and any keys (stable across runs and machines)."""
    text = "\x1f".join([str(int(seed))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *keys)))
