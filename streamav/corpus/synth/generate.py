"""`synthesize_corpus`: the synthetic audiovisual emotional-speech corpus, end to end.

Layout of OUT (the `--format synth` loader reads exactly this):

    clips/{clip_id}.mp4     30 fps H.264 yuv420p 256x256, AAC 16 kHz mono speech
    traces/{clip_id}.npz    per-frame float32 ground truth (see docs/corpus.md)
    labels.csv              clip, speaker, sentence, emotion, intensity, split, + extras
    speakers.json           every speaker's plan (kind, source, voice, look, proportions, ...)
    manifest.json           seed, generator version, parameters, tools, sha256 of every file

clip_id = f"{speaker}_{sentence:02d}_{emotion}_{intensity}" (e.g. S001_00_happy_3). The split
is speaker-disjoint (train / val / test), drawn from the seed. The same seed and parameters
give byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from streamav.corpus.synth import photo
from streamav.corpus.synth.clip import ClipResult, ClipSpec, make_clip
from streamav.corpus.synth.contact_sheet import write_contact_sheet
from streamav.corpus.synth.factors import (
    EMOTIONS, FPS, GENERATOR_VERSION, INTENSITIES, SAMPLE_RATE_HZ, rng_for)
from streamav.corpus.synth.identities import (
    FRAME_SIZE_PX, Identity, SpeakerPlan, build_identities, plan_speakers)
from streamav.corpus.synth.voice import check_tools, tool_versions
from streamav.errors import InputError
from streamav.host import file_sha256 as _sha256

LABEL_COLUMNS = ("clip", "speaker", "sentence", "emotion", "intensity", "split",
                 "identity_kind", "source", "gender", "voice", "text", "n_frames", "duration_s")
CONTACT_SHEET_SPEAKERS = 4

_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class CorpusSummary:
    out: Path
    n_clips: int
    n_speakers: int
    elapsed_s: float
    identities_s: float
    clips_per_min: float
    workers: int


def speaker_splits(speakers: Sequence[str], seed: int) -> dict[str, str]:
    """Speaker-disjoint split: ~70 % train, ~15 % val, ~15 % test (at least one each from 3
    speakers up; with 2 speakers one train and one test)."""
    order = list(speakers)
    rng_for(seed, "split").shuffle(order)
    n = len(order)
    if n == 1:
        return {order[0]: "train"}
    if n == 2:
        return {order[0]: "train", order[1]: "test"}
    n_test = max(1, round(0.15 * n))
    n_val = max(1, round(0.15 * n))
    splits = {}
    for i, speaker in enumerate(order):
        splits[speaker] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def _check_args(speakers: int, sentences: int, emotions: Sequence[str] | None,
                intensities: Sequence[int] | None, workers: int
                ) -> tuple[list[str], list[int]]:
    if speakers < 1:
        raise InputError(f"--speakers must be at least 1, got {speakers}")
    if sentences < 1:
        raise InputError(f"--sentences must be at least 1, got {sentences}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    chosen_emotions = list(EMOTIONS) if emotions is None else [e.strip().lower() for e in emotions]
    bad = [e for e in chosen_emotions if e not in EMOTIONS]
    if bad or not chosen_emotions:
        raise InputError(f"unknown emotion(s) {', '.join(bad) or '(none)'}; choose from "
                         f"{', '.join(EMOTIONS)}")
    chosen_int = list(INTENSITIES) if intensities is None else [int(i) for i in intensities]
    if not chosen_int or any(i not in INTENSITIES for i in chosen_int):
        raise InputError(f"intensities must be among 1, 2, 3, got {chosen_int}")
    return ([e for e in EMOTIONS if e in chosen_emotions],
            [i for i in INTENSITIES if i in chosen_int])


def _check_out(out: Path) -> None:
    """OUT must be new, empty, or hold a previous synth corpus (which is then replaced)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        manifest = out / "manifest.json"
        try:
            ours = json.loads(manifest.read_text())["generator"] == "streamav.corpus.synth"
        except (OSError, ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise InputError(f"{out} is not empty and holds no synth corpus; choose an empty "
                             "or new folder")


def _prepare_out(out: Path) -> None:
    """Create OUT's folders, removing a previous synth corpus's files."""
    _check_out(out)
    if out.exists():
        for name in ("clips", "traces"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("labels.csv", "speakers.json", "manifest.json"):
            (out / name).unlink(missing_ok=True)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "traces").mkdir(parents=True, exist_ok=True)


def _init_worker(identities: dict[str, Identity], seed: int, out: str) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER.update(identities=identities, seed=seed, out=Path(out))


def _run_clip(task: tuple[ClipSpec, bool]) -> ClipResult:
    spec, keep_still = task
    return make_clip(_WORKER["identities"][spec.speaker], spec, _WORKER["seed"], _WORKER["out"],
                     keep_still=keep_still)




def _library_versions() -> dict[str, str]:
    import av
    import cv2
    import numpy

    versions = {"av": av.__version__, "opencv": cv2.__version__, "numpy": numpy.__version__}
    try:
        import mediapipe

        versions["mediapipe"] = mediapipe.__version__
    except ImportError:  # reported by the identity builder if it is needed
        pass
    return versions


def _run_all(tasks: list[tuple[ClipSpec, bool]], identities: dict[str, Identity], seed: int,
             out: Path, workers: int) -> list[ClipResult]:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = Console(stderr=True)
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    results: list[ClipResult] = []
    with Progress(*columns, console=console, transient=False,
                  disable=not console.is_terminal and len(tasks) < 2) as progress:
        bar = progress.add_task("clips", total=len(tasks))
        if workers == 1:
            _init_worker(identities, seed, str(out))
            for task in tasks:
                results.append(_run_clip(task))
                progress.advance(bar)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker,
                              initargs=(identities, seed, str(out))) as pool:
                for result in pool.imap_unordered(_run_clip, tasks, chunksize=1):
                    results.append(result)
                    progress.advance(bar)
    return sorted(results, key=lambda r: r.clip_id)


def _write_tables(out: Path, plans: list[SpeakerPlan], splits: dict[str, str],
                  specs: list[ClipSpec], results: dict[str, ClipResult]) -> None:
    by_speaker = {p.speaker: p for p in plans}
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        for spec in specs:
            plan, result = by_speaker[spec.speaker], results[spec.clip_id]
            writer.writerow([spec.clip_id, spec.speaker, spec.sentence, spec.emotion,
                             spec.intensity, splits[spec.speaker], plan.kind, plan.source,
                             plan.gender, plan.voice.espeak_name, result.text, result.n_frames,
                             f"{result.duration_s:.4f}"])
    speakers_json = [dict(plan.to_json(), split=splits[plan.speaker]) for plan in plans]
    (out / "speakers.json").write_text(json.dumps(speakers_json, indent=1, sort_keys=True) + "\n")


def _write_manifest(out: Path, seed: int, params: dict[str, Any], plans: list[SpeakerPlan],
                    n_clips: int) -> None:
    files = sorted([p for p in (out / "clips").glob("*.mp4")]
                   + [p for p in (out / "traces").glob("*.npz")]
                   + [out / "labels.csv", out / "speakers.json"])
    manifest = {
        "generator": "streamav.corpus.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "parameters": params,
        "n_clips": n_clips,
        "video": {"fps": FPS, "size_px": [FRAME_SIZE_PX, FRAME_SIZE_PX], "codec": "h264",
                  "pix_fmt": "yuv420p"},
        "audio": {"sample_rate_hz": SAMPLE_RATE_HZ, "channels": 1, "codec": "aac"},
        "photo_sources": sorted({p.source for p in plans if p.kind == "photo"}),
        "tools": tool_versions(),
        "libraries": _library_versions(),
        "files": {str(p.relative_to(out)): _sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def synthesize_corpus(out: Path, *, speakers: int = 4, sentences: int = 4, seed: int = 0,
                      emotions: Sequence[str] | None = None,
                      intensities: Sequence[int] | None = None, workers: int = 2,
                      contact_sheet: Path | None = None) -> CorpusSummary:
    """Generate speakers x sentences x emotions x intensities clips under `out`.

    emotions / intensities: subsets of the 8 MEAD emotions and of 1..3 (None: all).
    workers: processes rendering clips (1: in this process). The files do not depend on it.
    contact_sheet: also write a PNG of one still per (speaker, emotion) for the first four
    speakers, at the highest intensity generated, sentence 0.
    Raises InputError for bad arguments, MissingDependencyError without espeak-ng or sox.
    """
    chosen_emotions, chosen_intensities = _check_args(speakers, sentences, emotions,
                                                      intensities, workers)
    check_tools()
    out = Path(out)
    _check_out(out)
    started = time.perf_counter()
    plans = plan_speakers(speakers, seed, photo.available_sources())
    identities = {ident.plan.speaker: ident for ident in build_identities(plans)}
    identities_s = time.perf_counter() - started
    _prepare_out(out)
    splits = speaker_splits([p.speaker for p in plans], seed)
    specs = [ClipSpec(p.speaker, s, e, i) for p in plans for s in range(sentences)
             for e in chosen_emotions for i in chosen_intensities]
    sheet_speakers = [p.speaker for p in plans[:CONTACT_SHEET_SPEAKERS]]
    top = max(chosen_intensities)
    keep = {ClipSpec(s, 0, e, top).clip_id for s in sheet_speakers for e in chosen_emotions}
    tasks = [(spec, contact_sheet is not None and spec.clip_id in keep) for spec in specs]
    results = _run_all(tasks, identities, seed, out, min(workers, len(tasks)))
    by_id = {r.clip_id: r for r in results}
    _write_tables(out, plans, splits, specs, by_id)
    params = {"speakers": speakers, "sentences": sentences, "emotions": chosen_emotions,
              "intensities": chosen_intensities}
    _write_manifest(out, seed, params, plans, len(specs))
    if contact_sheet is not None:
        stills = {(r.clip_id.split("_")[0], r.clip_id.split("_")[2]): r.still_rgb
                  for r in results if r.still_rgb is not None}
        labels = {p.speaker: f"{p.kind} {p.gender}" for p in plans}
        write_contact_sheet(Path(contact_sheet), stills, sheet_speakers, chosen_emotions, labels)
    elapsed = time.perf_counter() - started
    clip_s = max(elapsed - identities_s, 1e-9)
    summary = CorpusSummary(out=out, n_clips=len(specs), n_speakers=speakers,
                            elapsed_s=elapsed, identities_s=identities_s,
                            clips_per_min=60.0 * len(specs) / clip_s, workers=workers)
    print(f"synth: {summary.n_clips} clips ({speakers} speakers) in {elapsed:.1f} s "
          f"(identities {identities_s:.1f} s, {summary.clips_per_min:.0f} clips/min with "
          f"{workers} worker{'s' if workers > 1 else ''}) -> {out}", file=sys.stderr)
    return summary


__all__ = ["synthesize_corpus", "CorpusSummary", "speaker_splits", "LABEL_COLUMNS"]
