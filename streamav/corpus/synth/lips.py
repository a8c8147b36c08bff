"""Lips driven by the speech: mouth opening and rounding per video frame, from the audio.

The jaw follows the speech envelope (louder → more open, on a dB scale from 35 dB below the
clip's loudest frames to 5 dB below them), modulated by the spectrum: open vowels put more
energy in the first-formant band (300..1000 Hz) than close ones; rounded vowels have little
energy between 1 and 3 kHz. Visual articulators are slower than the sound, so both traces are
smoothed with a fast attack and a slower release. Nothing else drives the lips, so the mouth and
the audio share their dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamav.corpus.synth.audio_features import band_energies, frame_rms

_BANDS_HZ = [(150.0, 300.0), (300.0, 1000.0), (1000.0, 3000.0), (3000.0, 7500.0)]


@dataclass(frozen=True)
class LipTraces:
    open: np.ndarray  # (T,) float32 0..1: jaw opening from the speech
    round: np.ndarray  # (T,) float32 0..1: lip rounding


def _attack_release(x: np.ndarray, attack: float, release: float) -> np.ndarray:
    out = np.empty_like(x)
    state = 0.0
    for t, value in enumerate(x):
        rate = attack if value > state else release
        state += rate * (value - state)
        out[t] = state
    return out


def lip_traces(speech: np.ndarray, n_frames: int) -> LipTraces:
    rms = frame_rms(speech, n_frames).astype(np.float64)
    ref = max(float(np.percentile(rms, 97)), 1e-9)
    level_db = 20.0 * np.log10(rms / ref + 1e-9)
    level = np.clip((level_db + 35.0) / 30.0, 0.0, 1.0)
    bands = band_energies(speech, n_frames, _BANDS_HZ) + 1e-12  # (T, 4)
    total = bands.sum(axis=1)
    f1_share = bands[:, 1] / total
    openness = np.clip((f1_share - 0.2) / 0.5, 0.0, 1.0)
    mid_share = bands[:, 2] / (bands[:, 1] + bands[:, 2])
    rounding = np.clip((0.35 - mid_share) / 0.3, 0.0, 1.0) * (level > 0.3)
    hiss = bands[:, 3] / total  # fricatives: lips apart a little, teeth close
    target = level * (0.6 + 0.4 * openness)
    target = np.maximum(target, 0.25 * level * np.clip(hiss / 0.5, 0.0, 1.0))
    mouth = _attack_release(target, attack=0.75, release=0.5)
    rounded = _attack_release(rounding * level, attack=0.6, release=0.4)
    return LipTraces(open=np.clip(mouth, 0.0, 1.0).astype(np.float32),
                     round=np.clip(rounded, 0.0, 1.0).astype(np.float32))
