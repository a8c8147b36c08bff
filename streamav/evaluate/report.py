"""`evaluate(model_folder, cache, settings)`: every measurement of `streamav eval`, as one
JSON-ready dict (schema in docs/evaluation.md), plus the PNGs when asked.

Passes over the clips of the split (each clip read from its shard when it is run):
1. latents: every clip (at most `max_clips`, a seeded choice) once through the causal model:
   reconstruction (visual PSNR, audio LSD), w / z per frame for the heads and the
   disentanglement, the model's own emotion head;
2. sequences for the few-shot heads when they are not whole clips: fixed-length segments, or
   clip halves for the within-actor protocol, each run from a fresh state;
3. denoising on at most `denoise_clips` clips, 14 runs each (clean and 6 corruptions, AV and
   V-only).
Everything is seeded: the same inputs and settings give the same JSON (but `wall_s`, `timing_s`
and `created_utc`).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from streamav.evaluate import plots
from streamav.evaluate.batch import run_many
from streamav.evaluate.denoise import EXAMPLE_COLUMNS, denoising
from streamav.evaluate.disentangle import disentanglement
from streamav.evaluate.heads import (WSequence, fewshot_speaker_disjoint, fewshot_within_actor,
                                     identity_accuracy, readout_points, unavailable)
from streamav.evaluate.inputs import ClipRef, list_clips, load_clip, open_model, subsample
from streamav.evaluate.metrics import (finite_or_none, log_spectral_distance_db,
                                       model_face_to_unit, psnr_db, uint8_to_unit)
from streamav.errors import InputError
from streamav.frontend.corruption import EVAL_CORRUPTIONS, parse_corruption
from streamav.model.streaming import StepOutputs, StreamingModel
from streamav.train.sequences import ClipSequence

SCHEMA = "streamav-eval"
SCHEMA_VERSION = 1
RECON_EXAMPLE_CLIPS = 3
RECON_EXAMPLE_FRAMES = 8


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    seed: int = 0
    max_clips: int | None = 300  # clips of the split run for latents, heads, disentanglement
    denoise_clips: int = 12  # clips for the denoising metrics (14 runs each), spread over speakers
    denoise_max_frames: int = 150  # first frames of each of those clips (5 s at 30 fps)
    corruptions: tuple[str, ...] = EVAL_CORRUPTIONS
    k_shots: tuple[int, ...] = (1, 5, 10)
    draws: int = 5  # seeded repetitions of the few-shot and identity splits
    online_s: tuple[float, ...] = (0.5, 1.0, 2.0)
    head_min_context_s: float = 1.0  # head training frames start here (as `train emotion`)
    head_max_frames_per_sequence: int = 60
    fewshot_unit: str = "auto"  # auto, clip or segment
    segment_s: float = 3.0
    within_actor: bool | None = None  # None: only when the split has a single speaker
    identity_gallery: str | None = None  # a cache whose speakers' mean faces join the identity check
    emotion_train_cache: str | None = None  # the estimator's training cache: adds the ablation

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)
        need(self.max_clips is None or self.max_clips >= 1, "--max-clips must be >= 1")
        need(self.denoise_clips >= 0, "--denoise-clips must be >= 0")
        need(self.denoise_max_frames >= 1, "--denoise-max-frames must be >= 1")
        need(bool(self.k_shots) and all(k >= 1 for k in self.k_shots), "k shots must be >= 1")
        need(self.draws >= 1, "--draws must be >= 1")
        need(all(s > 0 for s in self.online_s), "online read-out times must be > 0 s")
        need(self.fewshot_unit in ("auto", "clip", "segment"),
             "--fewshot-unit must be auto, clip or segment")
        need(self.segment_s > 0, "--segment-s must be > 0")
        for spec in self.corruptions:
            parse_corruption(spec)


# -- progress ------------------------------------------------------------------------------------


class _Progress:
    """A rich progress display on stderr, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None

    @contextmanager
    def task(self, description: str, total: int) -> Iterator:
        if not self.enabled:
            yield lambda: None
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True)) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)


# -- pass 1: latents and reconstruction --------------------------------------------------------


@dataclass
class _ClipResult:
    ref: ClipRef
    fps: float
    face_found: np.ndarray
    w: np.ndarray
    latents: dict[str, np.ndarray]
    traces: dict[str, np.ndarray]
    emotion_probs: np.ndarray
    visual_psnr: np.ndarray  # (T,) per frame (all frames; scored where a face was found)
    audio_lsd: np.ndarray  # (frames with audio,)


CLIPS_PER_BATCH = 8


def _chunks(refs: Sequence[ClipRef], size: int = CLIPS_PER_BATCH) -> Iterator[list[ClipRef]]:
    for start in range(0, len(refs), size):
        yield list(refs[start:start + size])


def _latent_pass(model: StreamingModel, refs: Sequence[ClipRef], progress: _Progress
                 ) -> tuple[list[_ClipResult], list[dict]]:
    results, examples = [], []
    with progress.task("latents + reconstruction", len(refs)) as advance:
        for group in _chunks(refs):
            clips = [load_clip(ref) for ref in group]
            outs = run_many(model, [(c.spectrum, c.face_crop_rgb) for c in clips])
            for ref, clip, out in zip(group, clips, outs):
                results.append(_clip_result(ref, clip, out))
                if len(examples) < RECON_EXAMPLE_CLIPS:
                    examples.append(_recon_example(ref, clip, results[-1], out))
                advance()
    return results, examples


def _clip_result(ref: ClipRef, clip: ClipSequence, out: StepOutputs) -> _ClipResult:
    recon = model_face_to_unit(out.face_hat.numpy())
    return _ClipResult(
        ref, clip.fps, clip.face_found, out.w_mean.numpy().astype(np.float32),
        {"z_av": out.z_av.numpy(), "z_v": out.z_v.numpy(), "z_a": out.z_a.numpy()},
        clip.traces, out.emotion_probs.numpy(),
        psnr_db(uint8_to_unit(clip.face_crop_rgb), recon),
        # frames with audio only: a clip without an audio track (all-zero spectra) has no LSD
        log_spectral_distance_db(clip.spectrum, out.spectrum_hat.numpy())[
            clip.spectrum.sum(axis=1) > 0])


def _recon_example(ref: ClipRef, clip: ClipSequence, result: _ClipResult,
                   out: StepOutputs) -> dict:
    found = np.flatnonzero(clip.face_found)
    frames = found[np.unique(np.linspace(0, len(found) - 1, RECON_EXAMPLE_FRAMES)
                             .round().astype(int))]
    recon = model_face_to_unit(out.face_hat[frames].numpy())
    return {"clip_id": ref.clip_id, "frames": frames.tolist(),
            "clean": clip.face_crop_rgb[frames],
            "recon": (recon * 255.0 + 0.5).astype(np.uint8),
            "psnr": result.visual_psnr[frames]}


def _context_bins(online_s: Sequence[float]) -> list[tuple[str, float, float]]:
    edges = [0.0, *sorted(online_s)]
    bins = [(f"{a:g}-{b:g}s", a, b) for a, b in zip(edges[:-1], edges[1:])]
    return bins + [(f"{edges[-1]:g}s-end", edges[-1], math.inf)]


def _reconstruction(results: Sequence[_ClipResult], online_s: Sequence[float]) -> dict:
    psnr = np.concatenate([r.visual_psnr[r.face_found] for r in results])
    lsd = np.concatenate([r.audio_lsd for r in results])
    by_context = {}
    for name, start, stop in _context_bins(online_s):
        values = [r.visual_psnr[(t >= start) & (t < stop) & r.face_found]
                  for r in results for t in [np.arange(len(r.w)) / r.fps]]
        values = np.concatenate(values) if values else np.zeros(0)
        by_context[name] = finite_or_none(values.mean(), 3) if values.size else None
    return {"visual_psnr_db": finite_or_none(psnr.mean(), 3),
            "visual_psnr_db_by_context": by_context,
            "audio_lsd_db": finite_or_none(lsd.mean(), 3) if lsd.size else None,
            "visual_frames": int(psnr.size), "audio_frames": int(lsd.size),
            "clips": len(results)}


def _sequence(result: _ClipResult) -> WSequence:
    return WSequence(result.ref.clip_id, result.ref.clip_id, result.ref.speaker,
                     result.ref.emotion, result.fps, result.w, result.face_found)


# -- pass 2: segments and halves ---------------------------------------------------------------


def _part(out: StepOutputs, clip: ClipSequence, ref: ClipRef, start: int, stop: int,
          suffix: str) -> WSequence:
    return WSequence(f"{ref.clip_id}{suffix}", ref.clip_id, ref.speaker, ref.emotion, clip.fps,
                     out.w_mean.numpy().astype(np.float32), clip.face_found[start:stop])


def _run_parts(model: StreamingModel, refs: Sequence[ClipRef], progress: _Progress,
               description: str, cuts) -> list[list[WSequence]]:
    """For each clip, its parts [(start, stop, suffix), ...] = cuts(n_frames, fps), each run
    from a fresh state; returns the parts' w per clip."""
    per_clip: list[list[WSequence]] = []
    with progress.task(description, len(refs)) as advance:
        for group in _chunks(refs):
            clips = [load_clip(ref) for ref in group]
            jobs = [(ref, clip, a, b, suffix) for ref, clip in zip(group, clips)
                    for a, b, suffix in cuts(len(clip.spectrum), clip.fps)]
            outs = run_many(model, [(clip.spectrum[a:b], clip.face_crop_rgb[a:b])
                                    for _, clip, a, b, _ in jobs])
            for ref in group:
                per_clip.append([_part(out, clip, r, a, b, suffix)
                                 for (r, clip, a, b, suffix), out in zip(jobs, outs) if r is ref])
                advance()
    return per_clip


def _segments(model: StreamingModel, refs: Sequence[ClipRef], segment_s: float,
              progress: _Progress) -> list[WSequence]:
    """Consecutive segments of `segment_s` (a clip shorter than that: the whole clip)."""
    def cuts(n: int, fps: float):
        length = max(1, int(round(segment_s * fps)))
        starts = range(0, max(1, n - length + 1), length)
        return [(s, min(n, s + length), f"#seg{i}") for i, s in enumerate(starts)]
    parts = _run_parts(model, refs, progress, f"few-shot segments ({segment_s:g} s)", cuts)
    return [seq for clip in parts for seq in clip]


def _halves(model: StreamingModel, refs: Sequence[ClipRef], progress: _Progress
            ) -> list[tuple[WSequence, WSequence]]:
    """Each clip's first and second half (clips of fewer than 2 frames are left out)."""
    def cuts(n: int, fps: float):
        return [(0, n // 2, "#first"), (n // 2, n, "#second")] if n >= 2 else []
    parts = _run_parts(model, refs, progress, "within-actor halves", cuts)
    return [(clip[0], clip[1]) for clip in parts if len(clip) == 2]


# -- the model's own head ----------------------------------------------------------------------


def _model_head(model: StreamingModel, results: Sequence[_ClipResult], trained: bool,
                online_s: Sequence[float], split: str) -> dict:
    if not trained:
        return unavailable("the model folder's emotion head was never fitted (streamav train "
                           "emotion)", accuracy=None)
    labels = list(model.labels)
    scored = [r for r in results if r.ref.emotion in labels]
    if not scored:
        return unavailable("no clip of the split has an emotion the model's head knows",
                           accuracy=None)
    accuracy = {}
    for name, at_s in readout_points(online_s):
        hits = []
        for r in scored:
            index = len(r.w) - 1 if at_s is None else min(int(round(at_s * r.fps)), len(r.w) - 1)
            hits.append(labels[int(np.argmax(r.emotion_probs[index]))] == r.ref.emotion)
        accuracy[name] = finite_or_none(float(np.mean(hits)))
    return {"available": True, "reason": None, "split": split, "clips": len(scored),
            "labels": labels, "accuracy": accuracy,
            "note": "the head installed by `streamav train emotion` (fitted on the train split)"}


# -- targets -----------------------------------------------------------------------------------


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or tree.get(key) is None:
            return None
        tree = tree[key]
    return tree


def _targets(report: dict) -> list[dict]:
    # One class (e.g. a folder of neutral clips): few-shot accuracy is 1 by construction: n/a.
    few = report["emotion"]["fewshot_speaker_disjoint"] \
        if len(report["emotion"]["classes"]) >= 2 else {}
    denoise = report["denoising"]
    den = denoise["corruptions"] if denoise.get("available") else {}
    identity = _get(denoise, "identity", "by_corruption") or {}
    est = report["emotion"].get("estimator") or {}
    neutral = est.get("neutral_speech") or {}
    rows = [
        ("fewshot_k5_online_2s_accuracy", ">=", 0.85,
         _get(few, "by_k", "5", "accuracy", "online_2s", "mean")),
        ("fewshot_k5_gap_offline_minus_online_2s", "<=", 0.05,
         _get(few, "by_k", "5", "gap_offline_minus_online_2s")),
        ("denoise_clean_av_db", ">=", 28.0, _get(denoise, "clean", "av_db")),
        ("denoise_gaussian_0.2_av_minus_noisy_db", ">=", 10.0,
         _get(den, "gaussian:0.2", "av_minus_noisy_db")),
        ("denoise_gaussian_0.2_av_minus_blur_temporal_db", ">=", 0.0,
         _get(den, "gaussian:0.2", "av_minus_blur_temporal_db")),
        ("denoise_occlude_mouth_region_av_minus_v_only_db", ">=", 3.0,
         _get(den, "occlude_mouth", "region", "av_minus_v_only_db")),
        *((f"identity_kept_{key}_fraction", ">=", 1.0,
           v["kept"] / v["speakers"] if v["speakers"] >= 2 else None)
          for key, v in identity.items()),
        ("disentangle_mouth_z_av_over_z_v", ">=", 2.0,
         _get(report["disentanglement"], "mouth", "ratio_z_av_over_z_v")),
        ("emotion_new_person_online_2s_accuracy", ">=", 0.85,
         _get(est, "new_person", "accuracy", "online_2s")),
        ("emotion_per_user_k2_accuracy", ">=", 0.92, _get(est, "per_user", "by_k", "2", "accuracy")),
        ("emotion_ece", "<=", 0.08, _get(est, "new_person", "calibration", "ece")),
        ("emotion_neutral_speech_neutral_or_uncertain_fraction", ">=", 10 / 11,
         None if not neutral else neutral["neutral_or_uncertain"] / neutral["clips"]),
        ("emotion_neutral_speech_confident_non_neutral", "<=", 0,
         _get(neutral, "confident_non_neutral")),
        ("emotion_neutral_speech_max_changes_per_clip", "<=", 2,
         _get(neutral, "max_changes_per_clip")),
    ]
    out = []
    for name, op, threshold, value in rows:
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"name": name, "op": op, "threshold": threshold,
                    "value": finite_or_none(value), "met": met})
    return out


# -- the whole evaluation ----------------------------------------------------------------------


def _estimator_section(model: StreamingModel, model_folder, refs, results, settings) -> dict:
    from streamav.evaluate.emotion import estimator_section
    from streamav.train.sequences import run_clip

    def train_w(clip) -> np.ndarray:
        return run_clip(model, clip.spectrum, clip.face_crop_rgb).w_mean.numpy()

    train_cache = Path(settings.emotion_train_cache) if settings.emotion_train_cache else None
    return estimator_section(model_folder, [r.ref for r in results],
                             {r.ref.clip_id: r.w for r in results}, seed=settings.seed,
                             draws=settings.draws, train_cache=train_cache, train_w=train_w)


def _fewshot_unit(settings: EvalSettings, refs: Sequence[ClipRef]) -> str:
    if settings.fewshot_unit != "auto":
        return settings.fewshot_unit
    counts = [sum(1 for r in refs if r.emotion == e) for e in {r.emotion for r in refs}]
    return "clip" if min(counts) >= 2 * max(settings.k_shots) else "segment"


def evaluate(model_folder: str | Path, cache: str | Path,
             settings: EvalSettings = EvalSettings(), *, plots_dir: str | Path | None = None,
             progress: bool = False) -> dict:
    """Run every measurement; returns the report (JSON-ready). InputError on bad inputs."""
    settings.validate()
    started = time.perf_counter()
    timing: dict[str, float] = {}
    model, model_info = open_model(model_folder)
    all_refs, cache_info = list_clips(cache, settings.split)
    refs = subsample(all_refs, settings.max_clips, settings.seed)
    show = _Progress(progress)

    t0 = time.perf_counter()
    results, recon_examples = _latent_pass(model, refs, show)
    timing["latents"] = time.perf_counter() - t0
    classes = [e for e in cache_info["emotions_in_split"] if any(r.ref.emotion == e for r in results)]
    speakers = sorted({r.ref.speaker for r in results})
    chance = 1.0 / len(classes) if classes else None
    cache_info.update(clips_used=len(results), speakers_used=len(speakers),
                      frames_used=int(sum(len(r.w) for r in results)),
                      fps_median=finite_or_none(float(np.median([r.fps for r in results])), 3))

    t0 = time.perf_counter()
    unit = _fewshot_unit(settings, refs)
    confusion_at = "online_2s" if 2.0 in settings.online_s else "offline"
    confusion_k = 5 if 5 in settings.k_shots else max(settings.k_shots)
    clip_seqs = [_sequence(r) for r in results]
    if len(speakers) < 2:
        unit = None
    if unit == "segment":
        fewshot_seqs = _segments(model, refs, settings.segment_s, show)
    else:
        fewshot_seqs = clip_seqs
    if len(classes) < 2:  # unlabelled clips, or one emotion only: accuracy means nothing
        reason = (f"the split has {len(classes)} labelled emotion class(es); few-shot accuracy "
                  "needs at least 2")
        disjoint = unavailable(reason, by_k=None, confusion=None, draws=settings.draws)
        within = unavailable(reason, accuracy=None, confusion=None)
    else:
        disjoint = fewshot_speaker_disjoint(
            fewshot_seqs, classes, ks=settings.k_shots, draws=settings.draws,
            online_s=settings.online_s, seed=settings.seed,
            min_context_s=settings.head_min_context_s,
            max_frames_per_sequence=settings.head_max_frames_per_sequence,
            confusion_k=confusion_k, confusion_at=confusion_at)
        disjoint.update(unit=unit, segment_s=settings.segment_s if unit == "segment" else None,
                        sequences=len(fewshot_seqs))
        run_within = (settings.within_actor if settings.within_actor is not None
                      else len(speakers) < 2)
        if run_within:
            within = fewshot_within_actor(
                _halves(model, refs, show), classes, online_s=settings.online_s,
                min_context_s=settings.head_min_context_s,
                max_frames_per_sequence=settings.head_max_frames_per_sequence,
                confusion_at=confusion_at)
        else:
            within = unavailable(f"not run: the split has {len(speakers)} speakers and the "
                                 "speaker-disjoint protocol ran (settings.within_actor / "
                                 "--within-actor runs it too)", accuracy=None, confusion=None)
    emotion = {"classes": classes, "chance": chance,
               "readouts": [name for name, _ in readout_points(settings.online_s)],
               "fewshot_speaker_disjoint": disjoint, "within_actor": within,
               "model_head": _model_head(model, results, "emotion" in model_info["trained_stages"],
                                         settings.online_s, settings.split)}
    t1 = time.perf_counter()
    emotion["estimator"] = _estimator_section(model, model_folder, refs, results, settings)
    timing["emotion_estimator"] = time.perf_counter() - t1
    identity = identity_accuracy(clip_seqs, draws=settings.draws, online_s=settings.online_s,
                                 seed=settings.seed, min_context_s=settings.head_min_context_s,
                                 max_frames_per_sequence=settings.head_max_frames_per_sequence)
    disentangle = disentanglement(
        [{"latents": r.latents, "traces": r.traces, "face_found": r.face_found} for r in results],
        settings.seed)
    timing["heads"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    denoise_refs = spread_over_speakers(refs, settings.denoise_clips, settings.seed + 1)
    if denoise_refs and settings.corruptions:
        gallery = (speaker_mean_faces(settings.identity_gallery, settings.denoise_max_frames)
                   if settings.identity_gallery else None)
        with show.task("denoising", len(denoise_refs)) as advance:
            section, denoise_examples = denoising(
                model, [load_clip(r) for r in denoise_refs], settings.corruptions,
                seed=settings.seed, max_frames=settings.denoise_max_frames, advance=advance,
                gallery=gallery)
        denoise = {"available": True, "reason": None, **section}
    else:
        denoise = unavailable("no clip or no corruption to measure (--denoise-clips 0)",
                              corruptions={}, clean=None)
        denoise_examples = {}
    timing["denoising"] = time.perf_counter() - t0

    reconstruction = _reconstruction(results, settings.online_s)
    from streamav import __version__

    report: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "streamav_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**asdict(settings), "corruptions": list(settings.corruptions),
                     "k_shots": list(settings.k_shots), "online_s": list(settings.online_s)},
        "model": model_info, "cache": cache_info,
        "recon_psnr_db": reconstruction["visual_psnr_db"],
        "audio_lsd_db": reconstruction["audio_lsd_db"],
        "reconstruction": reconstruction, "denoising": denoise, "emotion": emotion,
        "identity": identity, "disentanglement": disentangle,
    }
    report["targets"] = _targets(report)
    if plots_dir is not None:
        t0 = time.perf_counter()
        report["plots"] = _write_plots(Path(plots_dir), report, recon_examples, denoise_examples)
        timing["plots"] = time.perf_counter() - t0
    else:
        report["plots"] = None
    report["timing_s"] = {k: round(v, 2) for k, v in timing.items()}
    report["wall_s"] = round(time.perf_counter() - started, 2)
    return report


def spread_over_speakers(refs: Sequence[ClipRef], count: int, seed: int) -> list[ClipRef]:
    """At most `count` clips, taken in turn from each speaker (seeded order within a speaker), so
    that as many speakers as possible are measured; kept in manifest order."""
    rng = np.random.default_rng([seed, 103])
    by_speaker: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        by_speaker.setdefault(ref.speaker, []).append(i)
    queues = [list(rng.permutation(v)) for _, v in sorted(by_speaker.items())]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return [refs[i] for i in sorted(chosen)]


def speaker_mean_faces(cache: str | Path, max_frames: int, clips_per_speaker: int = 2
                       ) -> dict[str, np.ndarray]:
    """{speaker: mean clean face crop (64, 64, 3) 0..1} over the first clips of each speaker of a
    cache (every split): the gallery of other people for the identity check."""
    refs, _ = list_clips(cache, "all")
    faces: dict[str, list[np.ndarray]] = {}
    for ref in refs:
        if len(faces.setdefault(ref.speaker, [])) < clips_per_speaker:
            clip = load_clip(ref)
            found = clip.face_found[:max_frames]
            if found.any():
                faces[ref.speaker].append(
                    (clip.face_crop_rgb[:max_frames][found].astype(np.float32) / 255.0).mean(0))
    return {k: np.mean(v, 0) for k, v in faces.items() if v}


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _write_plots(folder: Path, report: dict, recon_examples: list[dict],
                 denoise_examples: dict[str, list[dict]]) -> dict[str, Any]:
    written: dict[str, Any] = {"denoising": {}}
    tag = f"{report['model']['preset']} {report['model']['config_sha256']}, " \
          f"{Path(report['cache']['folder']).name}:{report['cache']['split']}"
    if recon_examples:
        written["reconstruction"] = str(plots.reconstruction_grid(
            recon_examples, folder / "recon.png",
            f"clean input → AV reconstruction (mean {report['recon_psnr_db']} dB) — {tag}"))
    for key, rows in denoise_examples.items():
        if not rows:
            continue
        entry = report["denoising"]["corruptions"][key]
        means = [None, entry["noisy_db"], entry["av_db"], entry["v_only_db"], entry["vq_db"], None]
        written["denoising"][key] = str(plots.denoising_grid(
            rows, folder / f"denoise_{_safe_name(key)}.png", f"{key} — {tag}", means,
            EXAMPLE_COLUMNS))
    emotion = report["emotion"]
    disjoint, within = emotion["fewshot_speaker_disjoint"], emotion["within_actor"]
    source = ("speaker-disjoint", disjoint) if disjoint.get("confusion") else \
        ("within-actor", within) if within.get("confusion") else None
    if source is not None:
        name, block = source
        conf = block["confusion"]
        k = f"k={conf['k']}, " if "k" in conf else ""
        accuracy = block["accuracy"] if "accuracy" in block and block["accuracy"] else \
            block["by_k"][str(conf["k"])]["accuracy"]
        title = (f"emotion, {name} few-shot ({k}w {conf['at'].replace('_', ' ')}): "
                 f"acc {accuracy[conf['at']]['mean']:.3f}")
        written["confusion"] = str(plots.confusion_matrix(
            conf["labels"], np.array(conf["counts"]), folder / "confusion.png", title))
    series = {}
    if disjoint.get("available"):
        series.update({f"k={k} (speaker-disjoint)": v["accuracy"]
                       for k, v in disjoint["by_k"].items()})
    if within.get("available"):
        series["within-actor (halves)"] = within["accuracy"]
    if series:
        written["fewshot"] = str(plots.fewshot_curve(
            series, emotion["chance"], folder / "fewshot.png",
            f"few-shot emotion accuracy vs context — {tag}"))
    return written


def write_report(report: dict, path: str | Path) -> Path:
    """The report as JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    partial.replace(path)
    return path


def print_summary(report: dict, console=None) -> None:
    """A short table of the headline numbers (rich)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        import sys

        console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=f"streamav eval — {report['cache']['folder']} ({report['cache']['split']},"
                        f" {report['cache']['clips_used']} clips)", show_lines=False)
    table.add_column("measure")
    table.add_column("value", justify="right")

    def fmt(value: Any, unit: str = "") -> str:
        return "—" if value is None else f"{value:.3f}{unit}" if isinstance(value, float) \
            else f"{value}{unit}"

    table.add_row("visual recon PSNR", fmt(report["recon_psnr_db"], " dB"))
    table.add_row("audio LSD", fmt(report["audio_lsd_db"], " dB"))
    if report["denoising"].get("available"):
        den = report["denoising"]
        table.add_row("denoise clean: AV / V-only / VQ-VAE",
                      f"{fmt(den['clean']['av_db'])} / {fmt(den['clean']['v_only_db'])} / "
                      f"{fmt(den['clean']['vq_db'])} dB")
        for key, e in den["corruptions"].items():
            table.add_row(f"denoise {key}: noisy / AV / V-only / VQ-VAE / blur / blur+mean",
                          f"{fmt(e['noisy_db'])} / {fmt(e['av_db'])} / {fmt(e['v_only_db'])} / "
                          f"{fmt(e['vq_db'])} / {fmt(e['blur_db'])} / "
                          f"{fmt(e['blur_temporal_db'])} dB")
            if e["region"]:
                r = e["region"]
                table.add_row("  inside the box: noisy / AV / V-only",
                              f"{fmt(r['noisy_db'])} / {fmt(r['av_db'])} / {fmt(r['v_only_db'])} dB")
    emotion = report["emotion"]
    disjoint = emotion["fewshot_speaker_disjoint"]
    if disjoint.get("available"):
        for k, v in disjoint["by_k"].items():
            acc = v["accuracy"]
            table.add_row(f"few-shot k={k}: " + " / ".join(acc),
                          " / ".join(fmt(a["mean"]) for a in acc.values()))
    else:
        table.add_row("few-shot speaker-disjoint", f"— ({disjoint['reason']})")
    within = emotion["within_actor"]
    if within.get("available"):
        table.add_row("within-actor: " + " / ".join(within["accuracy"]),
                      " / ".join(fmt(a["mean"]) for a in within["accuracy"].values()))
    table.add_row("emotion chance", fmt(emotion["chance"]))
    est = emotion.get("estimator") or {}
    if not est.get("available"):
        table.add_row("emotion estimator", f"— ({est.get('reason')})")
    if est.get("new_person"):
        acc = est["new_person"]["accuracy"]
        cal = est["new_person"]["calibration"]
        table.add_row("estimator, new person: " + " / ".join(acc),
                      " / ".join(fmt(a) for a in acc.values()))
        table.add_row("estimator ECE / uncertain share / accuracy when certain",
                      f"{fmt(cal['ece'])} / {fmt(cal['uncertain_fraction'])} / "
                      f"{fmt(cal['accuracy_when_certain'])}")
    if est.get("per_user"):
        table.add_row("estimator, per-user profile k=" + " / ".join(est["per_user"]["by_k"]),
                      " / ".join(fmt(v["accuracy"]) for v in est["per_user"]["by_k"].values()))
    if est.get("neutral_speech"):
        n = est["neutral_speech"]
        table.add_row("neutral speech: neutral or uncertain / confident other / max changes",
                      f"{n['neutral_or_uncertain']} of {n['clips']} / "
                      f"{n['confident_non_neutral']} / {n['max_changes_per_clip']}")
    if est.get("clips_no_profile") is not None:
        outcomes = est["clips_no_profile"]
        right = sum(o["top"] == o["label"] for o in outcomes)
        table.add_row("clips without a profile: right (clip mean) / uncertain",
                      f"{right} of {len(outcomes)} / {sum(o['uncertain'] for o in outcomes)}")
    for row in est.get("ablation") or []:
        table.add_row(f"ablation {'+'.join(row['groups'])}: online 2 s / per-user k=2 / ECE",
                      f"{fmt(row['online']['online_2s'])} / {fmt(row['per_user_k2'])} / "
                      f"{fmt(row['ece'])}")
    ident = report["identity"]
    table.add_row("identity (offline w)", fmt(_get(ident, "accuracy", "offline", "mean"))
                  if ident.get("available") else f"— ({ident['reason']})")
    dis = report["disentanglement"]
    if dis.get("available"):
        table.add_row("mouth r: z_av / z_v", f"{fmt(_get(dis, 'mouth', 'z_av'))} / "
                                             f"{fmt(_get(dis, 'mouth', 'z_v'))}")
        table.add_row("head pose r: z_v / z_av", f"{fmt(_get(dis, 'head_pose', 'z_v'))} / "
                                                 f"{fmt(_get(dis, 'head_pose', 'z_av'))}")
    else:
        table.add_row("disentanglement", f"— ({dis['reason']})")
    for t in report["targets"]:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        table.add_row(f"target {t['name']} {t['op']} {t['threshold']:g}",
                      f"{fmt(t['value'])} ({mark})")
    console.print(table)
