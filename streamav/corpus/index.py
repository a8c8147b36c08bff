"""Corpus indexers: read a corpus's own layout and file names into one list of labelled clips.

Every format (MEAD, CREMA-D, RAVDESS, a generic folder with a labels CSV, and this project's
synthetic corpus) gives the same `ClipRecord`s with canonical labels (streamav.corpus.labels).
A file that cannot be used (a bad name, an unknown emotion, missing audio, a duplicate) becomes an
`IndexProblem` for that file and the rest of the corpus is indexed; files left out on purpose
(RAVDESS "calm", song, video-only copies of full-AV clips) are listed as `ignored`. Only a bad
root, an unknown format or an unreadable labels file stop the whole index (InputError).

Indexing reads names and directory listings only; it does not decode media (the cache does, and
reports clips whose files turn out to be unreadable).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from streamav.corpus.labels import (
    UNLABELLED, CREMA_D_EMOTIONS, CREMA_D_LEVELS, EMOTIONS, RAVDESS_EMOTIONS, RAVDESS_INTENSITIES,
    normalize_emotion, normalize_split, parse_intensity)
from streamav.errors import InputError

FORMATS: tuple[str, ...] = ("mead", "crema-d", "ravdess", "grid", "folder", "synth")
_FORMAT_ALIASES = {"cremad": "crema-d", "crema_d": "crema-d", "crema": "crema-d"}

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg",
                                   ".mpeg")
MEAD_AUDIO_SUFFIXES: tuple[str, ...] = (".m4a", ".wav", ".aac", ".mp3")

# Per-frame ground-truth traces written by `streamav corpus synth` (ROOT/traces/{clip}.npz).
SYNTH_TRACE_NAMES: tuple[str, ...] = (
    "mouth_open", "head_yaw_deg", "head_pitch_deg", "head_roll_deg", "blink", "gaze_x", "gaze_y",
    "pitch_hz", "envelope")

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_MEAD_LEVEL = re.compile(r"^level_(\d+)$")
_MEAD_FILE = re.compile(r"^(\d+)$")
_CREMA_D_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{2,3})_([A-Z]{2})$")
_RAVDESS_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_RAVDESS_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")


@dataclass(frozen=True)
class ClipRecord:
    """One usable clip: where its media are and what it is labelled."""

    clip_id: str  # unique in the corpus, safe as a file name
    video_path: Path
    audio_path: Path | None  # None: the audio is the video file's own track
    speaker: str
    emotion: str  # one of labels.EMOTIONS
    intensity: int | None  # 1 low, 2 medium, 3 high, None unknown
    sentence: str | None
    corpus: str  # the format it was indexed with
    split: str | None = None  # the corpus's own "train" / "val" / "test", if it has one
    traces_path: Path | None = None  # per-frame ground-truth traces (.npz), synth corpora

    def to_json(self) -> dict:
        return {
            "clip_id": self.clip_id, "video_path": str(self.video_path),
            "audio_path": str(self.audio_path) if self.audio_path else None,
            "speaker": self.speaker, "emotion": self.emotion, "intensity": self.intensity,
            "sentence": self.sentence, "corpus": self.corpus, "split": self.split,
            "traces_path": str(self.traces_path) if self.traces_path else None,
        }

    @classmethod
    def from_json(cls, item: dict) -> "ClipRecord":
        def as_path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(clip_id=item["clip_id"], video_path=Path(item["video_path"]),
                   audio_path=as_path(item.get("audio_path")), speaker=item["speaker"],
                   emotion=item["emotion"], intensity=item.get("intensity"),
                   sentence=item.get("sentence"), corpus=item["corpus"],
                   split=item.get("split"), traces_path=as_path(item.get("traces_path")))


@dataclass(frozen=True)
class IndexProblem:
    """A file (or labels-file row) that was not indexed, and why."""

    path: str
    reason: str
    kind: str  # short code to group by: bad-name, unknown-emotion, missing-audio, ...

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class CorpusIndex:
    """The result of indexing one corpus root."""

    root: Path
    format: str
    clips: tuple[ClipRecord, ...]
    problems: tuple[IndexProblem, ...]  # unusable files: the data is wrong or incomplete
    ignored: tuple[IndexProblem, ...] = ()  # left out by design (e.g. RAVDESS calm)

    @property
    def speakers(self) -> list[str]:
        return sorted({clip.speaker for clip in self.clips})

    def emotion_counts(self) -> dict[str, int]:
        counts = Counter(clip.emotion for clip in self.clips)
        return {emotion: counts.get(emotion, 0) for emotion in EMOTIONS}

    def to_json(self) -> dict:
        return {
            "format": self.format, "root": str(self.root), "n_clips": len(self.clips),
            "n_speakers": len(self.speakers), "emotions": self.emotion_counts(),
            "clips": [clip.to_json() for clip in self.clips],
            "problems": [problem.to_json() for problem in self.problems],
            "ignored": [item.to_json() for item in self.ignored],
        }


@dataclass
class _Collector:
    """What an indexer found so far."""

    corpus: str
    clips: list[ClipRecord] = field(default_factory=list)
    problems: list[IndexProblem] = field(default_factory=list)
    ignored: list[IndexProblem] = field(default_factory=list)

    def problem(self, path: Path | str, kind: str, reason: str) -> None:
        self.problems.append(IndexProblem(str(path), reason, kind))

    def ignore(self, path: Path | str, kind: str, reason: str) -> None:
        self.ignored.append(IndexProblem(str(path), reason, kind))


# -- entry points ----------------------------------------------------------------------------


def index_corpus(root: str | Path, format: str) -> CorpusIndex:
    """Index the corpus at `root` laid out as `format` (one of FORMATS)."""
    corpus = _FORMAT_ALIASES.get(format.strip().lower(), format.strip().lower())
    if corpus not in FORMATS:
        raise InputError(f"unknown corpus format {format!r} (known: {', '.join(FORMATS)})")
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"no such corpus folder: {root}")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder (give the corpus root)")
    root = root.resolve()
    found = _Collector(corpus)
    _INDEXERS[corpus](root, found)
    clips = _unique(found)
    return CorpusIndex(root=root, format=corpus, clips=tuple(sorted(clips, key=_clip_key)),
                       problems=tuple(found.problems), ignored=tuple(found.ignored))


def write_index_json(result: CorpusIndex, path: str | Path) -> None:
    """Write the index (clips, problems, ignored files) as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    partial.replace(path)


def print_index(result: CorpusIndex, console=None, max_listed: int = 12) -> None:
    """A rich summary: clips per emotion, intensity and speaker, then the problems."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    speakers = Counter(clip.speaker for clip in result.clips)
    console.print(f"[bold]{result.format}[/] corpus at {result.root}: [bold]{len(result.clips)}"
                  f"[/] clips, {len(speakers)} speakers, {len(result.problems)} problems, "
                  f"{len(result.ignored)} ignored")
    by_emotion = Table(title="clips per emotion")
    by_emotion.add_column("emotion")
    for level in ("low", "medium", "high", "unknown"):
        by_emotion.add_column(level, justify="right")
    by_emotion.add_column("total", justify="right")
    cells = Counter((clip.emotion, clip.intensity) for clip in result.clips)
    for emotion, total in result.emotion_counts().items():
        levels = [cells.get((emotion, level), 0) for level in (1, 2, 3, None)]
        by_emotion.add_row(emotion, *(str(n) if n else "-" for n in levels), str(total))
    console.print(by_emotion)
    if speakers:
        by_speaker = Table(title="clips per speaker")
        by_speaker.add_column("speaker")
        by_speaker.add_column("clips", justify="right")
        ranked = sorted(speakers.items())
        for speaker, count in ranked[:max_listed]:
            by_speaker.add_row(speaker, str(count))
        if len(ranked) > max_listed:
            counts = sorted(speakers.values())
            by_speaker.add_row(f"... {len(ranked) - max_listed} more",
                               f"{counts[0]}..{counts[-1]}")
        console.print(by_speaker)
    _print_issues(console, "problems", result.problems, max_listed, "red")
    _print_issues(console, "ignored by design", result.ignored, 3, "dim")


def _print_issues(console, title: str, items: Iterable[IndexProblem], max_listed: int,
                  style: str) -> None:
    items = list(items)
    if not items:
        return
    kinds = Counter(item.kind for item in items)
    summary = ", ".join(f"{kind}: {count}" for kind, count in kinds.most_common())
    console.print(f"[{style}]{title} ({len(items)}): {summary}[/]")
    for item in items[:max_listed]:
        console.print(f"  [{style}]{item.path}[/]: {item.reason}", highlight=False)
    if len(items) > max_listed:
        console.print(f"  ... and {len(items) - max_listed} more (--json lists them all)")


# -- helpers ---------------------------------------------------------------------------------


def _clip_key(clip: ClipRecord) -> tuple[str, str]:
    return clip.speaker, clip.clip_id


def safe_clip_id(text: str) -> str:
    """A clip id usable as a file name: other characters become '_'."""
    cleaned = _SAFE_ID.sub("_", text.strip()).lstrip(".")
    return cleaned or "_"


def _unique(found: _Collector) -> list[ClipRecord]:
    """The clips with unique ids; later duplicates become problems."""
    seen: dict[str, ClipRecord] = {}
    for clip in found.clips:
        if clip.clip_id in seen:
            found.problem(clip.video_path, "duplicate",
                          f"clip id {clip.clip_id} already used by {seen[clip.clip_id].video_path}")
            continue
        seen[clip.clip_id] = clip
    return list(seen.values())


def _media_files(folder: Path, suffixes: tuple[str, ...], recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _is_empty(path: Path, found: _Collector) -> bool:
    if path.stat().st_size == 0:
        found.problem(path, "empty-file", "the file is empty (0 bytes)")
        return True
    return False


# -- MEAD ------------------------------------------------------------------------------------


def _index_mead(root: Path, found: _Collector) -> None:
    """`{id}/video/front/{emotion}/level_{n}/{nnn}.mp4` with its audio in
    `{id}/audio/{emotion}/level_{n}/{nnn}.m4a`.

    `root` holds the speaker folders (M003, W009, ...), or is one speaker folder itself. Only the
    frontal view is indexed; the other camera angles are not face-on.
    """
    speaker_dirs = [root] if (root / "video" / "front").is_dir() else sorted(
        p for p in root.iterdir() if p.is_dir() and (p / "video" / "front").is_dir())
    for speaker_dir in speaker_dirs:
        front = speaker_dir / "video" / "front"
        for path in _media_files(front, VIDEO_SUFFIXES, recursive=True):
            _index_mead_file(speaker_dir, path.relative_to(front), path, found)


def _index_mead_file(speaker_dir: Path, relative: Path, path: Path, found: _Collector) -> None:
    parts = relative.parts
    level_match = _MEAD_LEVEL.match(parts[1]) if len(parts) == 3 else None
    number_match = _MEAD_FILE.match(Path(parts[2]).stem) if len(parts) == 3 else None
    if not (level_match and number_match):
        found.problem(path, "bad-name", "expected video/front/{emotion}/level_{n}/{nnn}.mp4")
        return
    emotion = normalize_emotion(parts[0])
    if emotion is None or parts[0] != parts[0].lower():
        found.problem(path, "unknown-emotion", f"unknown MEAD emotion folder {parts[0]!r}")
        return
    level = int(level_match.group(1))
    if level not in (1, 2, 3):
        found.problem(path, "bad-name", f"MEAD levels are level_1..level_3, not {parts[1]}")
        return
    if _is_empty(path, found):
        return
    number = number_match.group(1)
    audio_stem = speaker_dir / "audio" / parts[0] / parts[1] / number
    audio = next((audio_stem.with_suffix(s) for s in MEAD_AUDIO_SUFFIXES
                  if audio_stem.with_suffix(s).is_file()), None)
    if audio is None:
        found.problem(path, "missing-audio", f"no audio file {audio_stem}.m4a")
        return
    speaker = speaker_dir.name
    found.clips.append(ClipRecord(
        clip_id=safe_clip_id(f"{speaker}_{emotion}_level_{level}_{number}"), video_path=path,
        audio_path=audio, speaker=speaker, emotion=emotion, intensity=level, sentence=number,
        corpus="mead"))


# -- CREMA-D ---------------------------------------------------------------------------------


def _index_crema_d(root: Path, found: _Collector) -> None:
    """`VideoFlash/{actor}_{sentence}_{EMO}_{level}.flv`, or the same files directly in `root`.

    The audio is the flv's own track (CREMA-D's AudioWAV folder holds the same audio).
    """
    folder = next((root / name for name in ("VideoFlash", "VideoMP4") if (root / name).is_dir()),
                  root)
    for path in _media_files(folder, VIDEO_SUFFIXES, recursive=False):
        match = _CREMA_D_NAME.match(path.stem)
        if match is None:
            found.problem(path, "bad-name", "expected {actor}_{sentence}_{EMO}_{level}, "
                                            "e.g. 1001_DFA_ANG_XX.flv")
            continue
        actor, sentence, code, level_code = match.groups()
        if code not in CREMA_D_EMOTIONS:
            found.problem(path, "unknown-emotion", f"unknown CREMA-D emotion code {code!r}")
            continue
        if level_code not in CREMA_D_LEVELS:
            found.problem(path, "bad-name", f"unknown CREMA-D level {level_code!r} "
                                            f"(LO, MD, HI or XX)")
            continue
        if _is_empty(path, found):
            continue
        found.clips.append(ClipRecord(
            clip_id=path.stem, video_path=path, audio_path=None, speaker=actor,
            emotion=CREMA_D_EMOTIONS[code], intensity=CREMA_D_LEVELS[level_code],
            sentence=sentence, corpus="crema-d"))


# -- RAVDESS ---------------------------------------------------------------------------------


def _index_ravdess(root: Path, found: _Collector) -> None:
    """`Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4`, searched anywhere under `root`.

    MM modality (01 full AV, 02 video-only, 03 audio-only), VV vocal channel (01 speech,
    02 song), EE emotion, II intensity, SS statement, RR repetition, AA actor.
    """
    paths = _media_files(root, VIDEO_SUFFIXES, recursive=True)
    stems = {path.stem for path in paths}
    for path in paths:
        match = _RAVDESS_NAME.match(path.stem)
        if match is None:
            found.problem(path, "bad-name", "expected MM-VV-EE-II-SS-RR-AA.mp4, "
                                            "e.g. 01-01-05-02-01-01-12.mp4")
            continue
        modality, vocal, emotion_code, intensity_code, statement, repetition, actor = \
            match.groups()
        folder = _RAVDESS_ACTOR_DIR.match(path.parent.name)
        if folder and folder.group(1) != actor:
            found.problem(path, "bad-name", f"actor {actor} in the name but in {path.parent.name}")
            continue
        if not _ravdess_usable(path, modality, vocal, emotion_code, intensity_code, stems, found):
            continue
        if _is_empty(path, found):
            continue
        found.clips.append(ClipRecord(
            clip_id=path.stem, video_path=path, audio_path=None, speaker=f"Actor_{actor}",
            emotion=RAVDESS_EMOTIONS[emotion_code], intensity=RAVDESS_INTENSITIES[intensity_code],
            sentence=statement, corpus="ravdess"))


def _ravdess_usable(path: Path, modality: str, vocal: str, emotion_code: str,
                    intensity_code: str, stems: set[str], found: _Collector) -> bool:
    if modality == "03":
        found.ignore(path, "audio-only", "audio-only recording (modality 03): no video")
        return False
    if modality == "02":
        if "01" + path.stem[2:] in stems:
            found.ignore(path, "video-only-copy", "video-only copy of an indexed full-AV clip")
        else:
            found.problem(path, "missing-audio",
                          "video-only recording (modality 02, no audio) without its full-AV "
                          f"twin 01{path.stem[2:]}")
        return False
    if modality != "01":
        found.problem(path, "bad-name", f"unknown RAVDESS modality {modality!r}")
        return False
    if vocal == "02":
        found.ignore(path, "song", "sung, not spoken (vocal channel 02)")
        return False
    if vocal != "01":
        found.problem(path, "bad-name", f"unknown RAVDESS vocal channel {vocal!r}")
        return False
    if emotion_code not in RAVDESS_EMOTIONS:
        found.problem(path, "unknown-emotion", f"unknown RAVDESS emotion code {emotion_code!r}")
        return False
    if RAVDESS_EMOTIONS[emotion_code] is None:
        found.ignore(path, "calm", "RAVDESS 'calm' (02) is not one of the 8 MEAD emotions")
        return False
    if intensity_code not in RAVDESS_INTENSITIES:
        found.problem(path, "bad-name", f"unknown RAVDESS intensity {intensity_code!r}")
        return False
    return True


# -- folder and synth (a labels CSV) ---------------------------------------------------------

_COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "clip": ("clip", "clip_id", "id", "name"),
    "path": ("path", "video", "video_path", "file"),
    "speaker": ("speaker", "speaker_id", "actor", "actor_id", "identity"),
    "emotion": ("emotion", "label"),
    "intensity": ("intensity", "level"),
    "sentence": ("sentence", "statement", "text"),
    "split": ("split", "subset"),
    "audio": ("audio", "audio_path"),
    "traces": ("traces", "traces_path"),
}


def _labels_csv(root: Path) -> Path:
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    candidates = sorted(root.glob("*.csv"))
    if len(candidates) == 1:
        return candidates[0]
    raise InputError(f"{root} has no labels.csv (a folder corpus needs one with at least the "
                     f"columns clip or path, speaker, emotion)")


def _read_rows(csv_path: Path) -> tuple[dict[str, str], list[tuple[int, dict[str, str]]]]:
    """The canonical column → header name mapping, and the rows with their line numbers."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            rows = [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items()
                                       if k is not None}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {csv_path}: {exc}") from None
    lowered = {name.lower(): name for name in header}
    columns: dict[str, str] = {}
    for canonical, aliases in _COLUMN_ALIASES.items():
        name = next((lowered[a] for a in aliases if a in lowered), None)
        if name is not None:
            columns[canonical] = name
    missing = [c for c in ("speaker", "emotion") if c not in columns]
    if "clip" not in columns and "path" not in columns:
        missing.insert(0, "clip or path")
    if missing:
        raise InputError(f"{csv_path} lacks the column(s) {', '.join(missing)} "
                         f"(it has: {', '.join(header) or 'no header'})")
    return columns, rows


def _find_video(root: Path, clip: str) -> Path | None:
    """ROOT/{clip}, else ROOT/{clip}.{ext}, else ROOT/clips/{clip}.{ext} (first that exists)."""
    direct = root / clip
    if direct.is_file():
        return direct
    for folder in (root, root / "clips", root / "videos"):
        for suffix in VIDEO_SUFFIXES:
            candidate = folder / f"{clip}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _index_table(root: Path, found: _Collector,
                 resolve_video: Callable[[str], Path | None],
                 resolve_traces: Callable[[str, str], Path | None]) -> None:
    csv_path = _labels_csv(root)
    columns, rows = _read_rows(csv_path)
    for line, row in rows:
        cell = {canonical: row.get(name, "") for canonical, name in columns.items()}
        where = f"{csv_path}:{line}"
        path_cell = cell.get("path") or ""
        clip_cell = cell.get("clip") or ""
        video = (root / path_cell if path_cell else resolve_video(clip_cell)) \
            if (path_cell or clip_cell) else None
        if video is None or not video.is_file():
            found.problem(video or where, "missing-video",
                          f"no video file for row {line} ({clip_cell or path_cell or 'empty'})")
            continue
        record = _row_record(root, found, cell, where, video, resolve_traces)
        if record is not None:
            found.clips.append(record)


def _id_from_path(root: Path, path: Path) -> str:
    """`a/b.mp4` (relative to ROOT) → `a__b`; a path outside ROOT → its stem."""
    if path.is_absolute():
        try:
            path = path.relative_to(root)
        except ValueError:
            return path.stem
    return str(path.with_suffix("")).replace("/", "__")


def _row_record(root: Path, found: _Collector, cell: dict[str, str], where: str, video: Path,
                resolve_traces: Callable[[str, str], Path | None]) -> ClipRecord | None:
    clip_id = safe_clip_id(cell.get("clip") or _id_from_path(root, Path(cell["path"])))
    emotion = normalize_emotion(cell["emotion"])
    if emotion is None:
        found.problem(video, "unknown-emotion",
                      f"unknown emotion {cell['emotion']!r} ({where}; known: "
                      f"{', '.join(EMOTIONS)})")
        return None
    if not cell["speaker"]:
        found.problem(video, "bad-row", f"empty speaker ({where})")
        return None
    try:
        intensity = parse_intensity(cell.get("intensity", ""))
        split = normalize_split(cell.get("split", ""))
    except ValueError as exc:
        found.problem(video, "bad-row", f"{exc} ({where})")
        return None
    audio = None
    if cell.get("audio"):
        audio = root / cell["audio"]
        if not audio.is_file():
            found.problem(video, "missing-audio", f"no audio file {audio} ({where})")
            return None
    traces = resolve_traces(clip_id, cell.get("traces", ""))
    if traces is not None and not traces.is_file():
        found.problem(video, "missing-traces", f"no traces file {traces} ({where})")
        return None
    if _is_empty(video, found):
        return None
    return ClipRecord(clip_id=clip_id, video_path=video, audio_path=audio,
                      speaker=cell["speaker"], emotion=emotion, intensity=intensity,
                      sentence=cell.get("sentence") or None, corpus=found.corpus, split=split,
                      traces_path=traces)


def _index_videos_by_folder(root: Path, found: _Collector, *, speaker_prefix: str,
                           emotion: str, sentence_from_name: bool) -> None:
    """Every video under ROOT; its speaker the first sub-folder of ROOT it is in, else its own
    name; its id the path below ROOT joined with '_'."""
    for path in _media_files(root, VIDEO_SUFFIXES, recursive=True):
        if _is_empty(path, found):
            continue
        relative = path.relative_to(root)
        speaker = relative.parts[0] if len(relative.parts) > 1 else path.stem
        found.clips.append(ClipRecord(
            clip_id=safe_clip_id("_".join(relative.with_suffix("").parts)), video_path=path,
            audio_path=None, speaker=speaker_prefix + safe_clip_id(speaker), emotion=emotion,
            intensity=None, sentence=path.stem if sentence_from_name else None,
            corpus=found.corpus))


def _index_grid(root: Path, found: _Collector) -> None:
    """GRID (Cooke et al. 2006): `ROOT/s{N}/{sentence}.mpg` as the corpus lays it out (the speaker
    is the folder), or loose clips in ROOT (each its own speaker, named after the clip). Every
    GRID sentence is read in a neutral voice: emotion `neutral`, intensity unknown."""
    _index_videos_by_folder(root, found, speaker_prefix="grid-", emotion="neutral",
                            sentence_from_name=True)


def _index_folder(root: Path, found: _Collector) -> None:
    """Any folder with a labels CSV (ROOT/labels.csv, or the only .csv in ROOT); without one,
    every video under ROOT, unlabelled (emotion ""), its speaker the first sub-folder of ROOT
    it is in, else its own name: anyone's own clips, for the unsupervised measurements."""
    if not (root / "labels.csv").is_file() and len(list(root.glob("*.csv"))) != 1:
        _index_videos_by_folder(root, found, speaker_prefix="", emotion=UNLABELLED,
                                sentence_from_name=False)
        if not found.clips:
            raise InputError(f"{root} has no labels.csv and no video file")
        return
    _index_table(root, found, resolve_video=lambda clip: _find_video(root, clip),
                 resolve_traces=lambda clip, cell: root / cell if cell else None)


def _index_synth(root: Path, found: _Collector) -> None:
    """`ROOT/clips/{clip}.mp4`, `ROOT/traces/{clip}.npz`, `ROOT/labels.csv` (with the split)."""
    if not (root / "labels.csv").is_file():
        raise InputError(f"{root} has no labels.csv: is it a `streamav corpus synth` output?")
    _index_table(root, found, resolve_video=lambda clip: root / "clips" / f"{clip}.mp4",
                 resolve_traces=lambda clip, cell: root / (cell or f"traces/{clip}.npz"))


_INDEXERS: dict[str, Callable[[Path, _Collector], None]] = {
    "mead": _index_mead, "crema-d": _index_crema_d, "ravdess": _index_ravdess,
    "grid": _index_grid, "folder": _index_folder, "synth": _index_synth,
}
