"""The canonical labels of every corpus: the 8 MEAD emotions, a 1..3 intensity scale, the splits.

Each corpus names its emotions and intensities its own way; the indexers map them here so that a
model trained on one corpus reads the labels of another. The emotion index of a label is its
position in `EMOTIONS` (the datasets and heads use that index; never reorder the tuple).

    index  emotion     MEAD folder  CREMA-D  RAVDESS
      0    angry       angry        ANG      05 angry
      1    contempt    contempt     -        -
      2    disgusted   disgusted    DIS      07 disgust
      3    fear        fear         FEA      06 fearful
      4    happy       happy        HAP      03 happy
      5    neutral     neutral      NEU      01 neutral
      6    sad         sad          SAD      04 sad
      7    surprised   surprised    -        08 surprised
                                             02 calm: not a MEAD emotion, left out (see docs)

Intensity: 1 low, 2 medium, 3 high, None unknown (MEAD level_n → n; CREMA-D LO/MD/HI → 1/2/3,
XX → None; RAVDESS 01 normal → 2, 02 strong → 3).
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = (
    "angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")

INTENSITIES: tuple[int, ...] = (1, 2, 3)  # low, medium, high

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Spellings seen in corpora and label files (lowercase) → canonical emotion.
_EMOTION_ALIASES: dict[str, str] = {
    **{name: name for name in EMOTIONS},
    "anger": "angry", "ang": "angry",
    "con": "contempt", "contemptuous": "contempt",
    "disgust": "disgusted", "dis": "disgusted",
    "fearful": "fear", "fea": "fear", "afraid": "fear", "scared": "fear",
    "happiness": "happy", "hap": "happy", "joy": "happy",
    "neu": "neutral",
    "sadness": "sad",
    "surprise": "surprised", "sur": "surprised",
}

# CREMA-D: {actor}_{sentence}_{EMO}_{level}
CREMA_D_EMOTIONS: dict[str, str] = {
    "ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy", "NEU": "neutral",
    "SAD": "sad"}
CREMA_D_LEVELS: dict[str, int | None] = {"LO": 1, "MD": 2, "HI": 3, "XX": None}

# RAVDESS: MM-VV-EE-II-SS-RR-AA; "02" (calm) maps to None: it has no MEAD counterpart.
RAVDESS_EMOTIONS: dict[str, str | None] = {
    "01": "neutral", "02": None, "03": "happy", "04": "sad", "05": "angry", "06": "fear",
    "07": "disgusted", "08": "surprised"}
RAVDESS_INTENSITIES: dict[str, int] = {"01": 2, "02": 3}  # normal → medium, strong → high

# Spellings of intensity in label files (lowercase) → 1..3 or None (explicitly unknown).
_INTENSITY_ALIASES: dict[str, int | None] = {
    "1": 1, "2": 2, "3": 3, "level_1": 1, "level_2": 2, "level_3": 3,
    "lo": 1, "low": 1, "weak": 1, "md": 2, "mid": 2, "medium": 2, "normal": 2,
    "hi": 3, "high": 3, "strong": 3,
    "": None, "xx": None, "unspecified": None, "unknown": None, "none": None, "na": None,
    "nan": None,
}

_SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "dev": "val", "test": "test", "testing": "test"}


def normalize_emotion(text: str) -> str | None:
    """The canonical emotion for a corpus's spelling of it, or None when it is not one of the 8."""
    return _EMOTION_ALIASES.get(text.strip().lower())


UNLABELLED = ""  # the emotion of a clip that has no label (an unlabelled folder corpus)


def emotion_index(emotion: str) -> int:
    """The emotion's class index (its position in EMOTIONS), -1 for UNLABELLED. Raises
    ValueError if not canonical."""
    return -1 if emotion == UNLABELLED else EMOTIONS.index(emotion)


def emotion_name(index: int) -> str:
    """Inverse of `emotion_index`."""
    return UNLABELLED if index < 0 else EMOTIONS[index]


def parse_intensity(text: str) -> int | None:
    """1..3 or None for a label file's intensity cell. Raises ValueError for anything else."""
    key = text.strip().lower()
    if key not in _INTENSITY_ALIASES:
        raise ValueError(f"unknown intensity {text!r} (use 1, 2, 3, low/medium/high, or leave "
                         f"it empty)")
    return _INTENSITY_ALIASES[key]


def normalize_split(text: str) -> str | None:
    """"train", "val" or "test" for a label file's split cell, None when empty; else ValueError."""
    key = text.strip().lower()
    if not key:
        return None
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {text!r} (use train, val or test)")
    return _SPLIT_ALIASES[key]
