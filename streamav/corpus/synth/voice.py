"""Voices: espeak-ng speech with a speaker's voice and an emotion's prosody, through sox.

A speaker's `Voice` fixes the espeak-ng language (accent), voice variant (timbre), base pitch,
speaking rate and amplitude. An emotion at an intensity shifts pitch, pitch range, rate and
volume through SSML `<prosody>` (espeak-ng supports all four) and adds a sox effect (angry: a
little overdrive, sad: a duller low-pass, fear: a tremolo, happy: brighter treble). Each clip
also draws audio-only variation the face never shows: small pitch, range and rate offsets and
pitch accents on one or two words.

sox resamples espeak-ng's 22.05 kHz output to 16 kHz mono float32 (`-R`: repeatable, no dither
on float output), so the same inputs give the same samples.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from streamav.corpus.synth.factors import INTENSITY_SCALE, SAMPLE_RATE_HZ
from streamav.errors import InputError, MissingDependencyError

VARIANTS: dict[str, tuple[str, ...]] = {
    "male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "Andy", "Denis", "Marco", "antonio",
             "michel", "travis", "victor", "Lee", "sandro"),
    "female": ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty",
               "belinda", "linda", "steph", "steph2", "steph3"),
}
LANGUAGES: tuple[str, ...] = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029",
                              "en-us-nyc", "en-gb-x-gbclan")
_ESPEAK_HINT = ("the synthetic corpus needs espeak-ng (speech) and sox (audio effects): "
                "sudo apt-get install espeak-ng sox   (macOS: brew install espeak-ng sox)")


@dataclass(frozen=True)
class Voice:
    """One speaker's voice. `pitch` and `amplitude` are espeak-ng's -p (0..99) and -a (0..200)."""

    language: str
    variant: str
    gender: str
    pitch: int
    rate_wpm: int
    amplitude: int

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass(frozen=True)
class Prosody:
    """Relative changes in percent (0 = the speaker's own), as SSML <prosody> takes them."""

    pitch_pct: float = 0.0
    range_pct: float = 0.0
    rate_pct: float = 0.0
    volume_pct: float = 0.0

    def scaled(self, factor: float) -> "Prosody":
        return Prosody(self.pitch_pct * factor, self.range_pct * factor, self.rate_pct * factor,
                       self.volume_pct * factor)

    def plus(self, other: "Prosody") -> "Prosody":
        return Prosody(self.pitch_pct + other.pitch_pct, self.range_pct + other.range_pct,
                       self.rate_pct + other.rate_pct, self.volume_pct + other.volume_pct)


# Full-intensity (3) prosody of each emotion, after the acoustic correlates reported for acted
# emotional speech (Scherer 2003; Banse & Scherer 1996): high arousal raises pitch, range, rate
# and level; sadness lowers them all.
EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(),
    "happy": Prosody(pitch_pct=18, range_pct=70, rate_pct=8, volume_pct=10),
    "sad": Prosody(pitch_pct=-14, range_pct=-55, rate_pct=-24, volume_pct=-30),
    "angry": Prosody(pitch_pct=10, range_pct=55, rate_pct=12, volume_pct=40),
    "fear": Prosody(pitch_pct=28, range_pct=25, rate_pct=18, volume_pct=-5),
    "surprised": Prosody(pitch_pct=30, range_pct=100, rate_pct=-4, volume_pct=15),
    "disgusted": Prosody(pitch_pct=-10, range_pct=20, rate_pct=-18, volume_pct=0),
    "contempt": Prosody(pitch_pct=-6, range_pct=-30, rate_pct=-10, volume_pct=-10),
}


def emotion_sox_effects(emotion: str, scale: float) -> list[str]:
    """sox effects (before resampling) that colour the voice for an emotion at `scale` 0..1."""
    if emotion == "angry":
        return ["overdrive", f"{6.0 * scale:.2f}", "20", "treble", f"{4.0 * scale:.2f}"]
    if emotion == "sad":
        return ["lowpass", f"{5500.0 - 2500.0 * scale:.0f}"]
    if emotion == "fear":
        return ["tremolo", "6.5", f"{35.0 * scale:.1f}"]
    if emotion == "happy":
        return ["treble", f"{3.0 * scale:.2f}"]
    return []


@dataclass(frozen=True)
class Utterance:
    """Everything espeak-ng and sox are given for one clip (recorded in the traces)."""

    ssml: str
    prosody: Prosody
    word_gap_10ms: int
    accents: tuple[int, ...]  # indices of words with a pitch accent


def check_tools() -> None:
    """Raise MissingDependencyError (with how to install them) if espeak-ng or sox is missing."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise MissingDependencyError(f"{' and '.join(missing)} not found on PATH; {_ESPEAK_HINT}")


def tool_versions() -> dict[str, str]:
    out = {}
    for tool, flag in (("espeak-ng", "--version"), ("sox", "--version")):
        result = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
        out[tool] = (result.stdout or result.stderr).strip().splitlines()[0] if (
            result.stdout or result.stderr) else "unknown"
    return out


def draw_voice(rng: np.random.Generator, gender: str, variant: str | None = None) -> Voice:
    """A random voice of `gender` ("male" or "female"); `variant` fixes the espeak-ng variant."""
    base = (28, 58) if gender == "male" else (38, 72)
    if variant is None:
        variant = str(rng.choice(VARIANTS[gender]))
    return Voice(language=str(rng.choice(LANGUAGES)), variant=variant,
                 gender=gender, pitch=int(rng.integers(*base)),
                 rate_wpm=int(rng.integers(140, 185)), amplitude=int(rng.integers(50, 70)))


def plan_utterance(text: str, emotion: str, intensity: int, rng: np.random.Generator
                   ) -> Utterance:
    """The clip's prosody: the emotion's, scaled by intensity, plus audio-only random variation."""
    if emotion not in EMOTION_PROSODY:
        raise InputError(f"unknown emotion {emotion!r}")
    prosody = EMOTION_PROSODY[emotion].scaled(INTENSITY_SCALE[intensity]).plus(Prosody(
        pitch_pct=float(rng.normal(0.0, 4.0)), range_pct=float(rng.normal(0.0, 12.0)),
        rate_pct=float(rng.normal(0.0, 4.0)), volume_pct=0.0))
    words = text.split()
    n_accents = int(rng.integers(1, 3))
    accents = tuple(sorted(rng.choice(len(words), size=min(n_accents, len(words)),
                                      replace=False).tolist()))
    accent_pct = [int(rng.integers(12, 40)) for _ in accents]
    parts = []
    for i, word in enumerate(words):
        if i in accents:
            pct = accent_pct[accents.index(i)]
            parts.append(f'<prosody pitch="+{pct}%">{escape(word)}</prosody>')
        else:
            parts.append(escape(word))
    ssml = ("<speak><prosody "
            f'pitch="{prosody.pitch_pct:+.0f}%" range="{100 + prosody.range_pct:.0f}%" '
            f'rate="{100 + prosody.rate_pct:.0f}%" volume="{100 + prosody.volume_pct:.0f}%">'
            + " ".join(parts) + "</prosody></speak>")
    return Utterance(ssml=ssml, prosody=prosody, word_gap_10ms=int(rng.integers(0, 3)),
                     accents=accents)


def synthesize(voice: Voice, utterance: Utterance, sox_effects: list[str]) -> np.ndarray:
    """Speak `utterance` with `voice`: (N,) float32 mono at 16 kHz."""
    espeak = [
        "espeak-ng", "-m", "-v", voice.espeak_name, "-p", str(voice.pitch),
        "-s", str(voice.rate_wpm), "-a", str(voice.amplitude), "-g", str(utterance.word_gap_10ms),
        "--stdout", utterance.ssml,
    ]
    sox = ["sox", "-R", "-q", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32",
           "-L", "-c", "1", "-", *sox_effects, "rate", "-v", str(SAMPLE_RATE_HZ)]
    try:
        wav = subprocess.run(espeak, capture_output=True, check=True).stdout
        raw = subprocess.run(sox, input=wav, capture_output=True, check=True).stdout
    except FileNotFoundError as exc:
        raise MissingDependencyError(f"{exc.filename} not found; {_ESPEAK_HINT}") from None
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise InputError(f"{exc.cmd[0]} failed: {reason[-1] if reason else exc}") from None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
