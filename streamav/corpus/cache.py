"""The feature cache: the live front end run once over every clip of a corpus, stored per clip.

    CACHE/manifest.json           what is cached and how (see docs/corpora.md)
    CACHE/clips/{clip_id}.npz     one shard per clip: the ClipFeatures arrays (face crops, spectra,
                                  ...), `traces` (T, k) float32 + `trace_names` when the corpus
                                  has ground-truth traces, and `meta_json` (labels, source
                                  hashes, front-end signature hash)

`build_cache` indexes the corpus, assigns the speaker-disjoint split, then for each clip reuses
its shard when the shard is intact and was made from the same source bytes by the same front end
(`frontend_signature`), and otherwise runs `extract_clip_features` (the live pipeline, offline)
in a pool of worker processes. Shards are written atomically (temporary file, fsync, rename), so
a killed run leaves only whole shards and the next run resumes where it stopped. A clip that
fails is reported and counted; the rest of the corpus is still cached.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import signal
import struct
import threading
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from streamav.corpus.index import SYNTH_TRACE_NAMES, ClipRecord, CorpusIndex, index_corpus
from streamav.corpus.labels import EMOTIONS, SPLITS, emotion_index
from streamav.errors import InputError
from streamav.frontend.features import FEATURE_KEYS
from streamav.host import file_sha256  # noqa: F401 (re-exported)

CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "clips"
LOCK_NAME = ".lock"
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
_HASH_CHUNK_BYTES = 1 << 20
_MAX_LISTED = 20  # index problems printed before the run (the manifest lists them all)


# -- the speaker-disjoint split ----------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """Which speakers are in which split, and where that came from."""

    source: str  # "corpus": the corpus's own split column; "seeded": assigned from `seed`
    seed: int
    speakers: dict[str, list[str]]  # split name → sorted speaker ids
    notes: list[str] = field(default_factory=list)

    def split_of(self, speaker: str) -> str:
        return next(name for name, members in self.speakers.items() if speaker in members)


def _speaker_rank(seed: int, speaker: str) -> str:
    """A stable pseudo-random order of speakers: independent of library versions and of which
    other speakers exist (adding a speaker never moves another one)."""
    return hashlib.sha256(f"{seed}:{speaker}".encode()).hexdigest()


def seeded_speaker_split(speakers: list[str], seed: int) -> SplitPlan:
    """Speakers into train/val/test (about 80/10/10), deterministically from `seed`.

    Small corpora: one speaker goes to train only (no held-out speaker is possible); two give
    train and test; three or more give at least one speaker to each split.
    """
    ordered = sorted(set(speakers), key=lambda s: _speaker_rank(seed, s))
    n = len(ordered)
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * n)) if n >= 2 else 0
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * n)) if n >= 3 else 0
    groups = {"test": ordered[:n_test], "val": ordered[n_test:n_test + n_val],
              "train": ordered[n_test + n_val:]}
    notes = []
    if n == 1:
        notes.append(f"one speaker ({ordered[0]}): everything is in train; a speaker-disjoint "
                     f"validation or test split needs at least 2 (test) or 3 (val) speakers")
    elif n == 2:
        notes.append("two speakers: one for train, one for test; no validation speakers")
    return SplitPlan("seeded", seed, {name: sorted(groups[name]) for name in SPLITS}, notes)


def plan_split(index: CorpusIndex, seed: int) -> SplitPlan:
    """The corpus's own split when every clip has one, else `seeded_speaker_split`."""
    clips = index.clips
    if clips and all(clip.split is not None for clip in clips):
        speakers: dict[str, set[str]] = {name: set() for name in SPLITS}
        for clip in clips:
            speakers[clip.split].add(clip.speaker)
        notes = []
        shared = {s for a in SPLITS for b in SPLITS if a < b for s in speakers[a] & speakers[b]}
        if shared:
            notes.append(f"the corpus's own split is not speaker-disjoint: {len(shared)} "
                         f"speaker(s) in several splits, e.g. {sorted(shared)[:5]}")
        return SplitPlan("corpus", seed, {n: sorted(speakers[n]) for n in SPLITS}, notes)
    plan = seeded_speaker_split([clip.speaker for clip in clips], seed)
    if any(clip.split is not None for clip in clips):
        plan.notes.append("only some clips have a split in the labels file: all were assigned "
                          "by speaker from the seed instead")
    return plan


def clip_split(clip: ClipRecord, plan: SplitPlan) -> str:
    return clip.split if plan.source == "corpus" and clip.split else plan.split_of(clip.speaker)


# -- shards ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipJob:
    """Everything a worker needs to make one shard (small: it is pickled to the worker)."""

    record: ClipRecord
    shard_path: Path
    meta: dict  # written into the shard as meta_json
    config_path: Path | None
    split: str  # manifest only: a new split seed never rewrites shards


@dataclass(frozen=True)
class ClipOutcome:
    clip_id: str
    status: str  # "computed", "reused", "relabelled" (features reused, labels rewritten), "failed"
    n_frames: int = 0
    face_found_fraction: float = 0.0
    trace_names: tuple[str, ...] = ()
    compute_s: float = 0.0
    error: str | None = None


def shard_path(cache_dir: Path, clip_id: str) -> Path:
    return Path(cache_dir) / SHARD_DIR / f"{clip_id}.npz"


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz (so it can be memory-mapped) via a temporary file, fsync and rename."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def load_traces(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """(T, k) float32 traces and their names from a traces .npz of per-frame 1-D arrays.

    The synth corpus's names come first in their documented order, then any others sorted.
    """
    with np.load(path) as data:
        names = [n for n in SYNTH_TRACE_NAMES if n in data.files]
        names += sorted(n for n in data.files if n not in names and data[n].ndim == 1
                        and data[n].dtype.kind in "fiub")  # numeric per-frame arrays only
        if not names:
            raise ValueError(f"{path} holds no per-frame 1-D arrays")
        columns = [np.asarray(data[n], np.float32) for n in names]
    length = min(len(c) for c in columns)
    return np.stack([c[:length] for c in columns], axis=1), tuple(names)


def _shard_arrays(features: dict[str, np.ndarray], meta: dict,
                  traces_path: Path | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    arrays = {key: features[key] for key in FEATURE_KEYS}
    names: tuple[str, ...] = ()
    if traces_path is not None:
        traces, names = load_traces(traces_path)
        arrays["traces"] = traces
        arrays["trace_names"] = np.array(names)
    arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays, names


def _outcome(clip_id: str, status: str, face_found: np.ndarray, names: tuple[str, ...],
             compute_s: float = 0.0) -> ClipOutcome:
    n_frames = int(face_found.shape[0])
    return ClipOutcome(clip_id, status, n_frames,
                       float(face_found.mean()) if n_frames else 0.0, names, compute_s)


def compute_shard(job: ClipJob) -> ClipOutcome:
    """Run the front end over one clip and write its shard. Runs in a worker process."""
    from streamav.offline_features import extract_clip_features

    record = job.record
    started = time.perf_counter()
    try:
        features = extract_clip_features(record.video_path, audio=record.audio_path,
                                         config_path=job.config_path).arrays()
        arrays, names = _shard_arrays(features, job.meta, record.traces_path)
        _write_npz_atomic(job.shard_path, arrays)
    except Exception as exc:  # any clip's failure is reported, never fatal for the corpus
        return ClipOutcome(record.clip_id, "failed", error=_one_line(exc))
    return _outcome(record.clip_id, "computed", features["face_found"], names,
                    time.perf_counter() - started)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def read_shard_meta(path: Path) -> dict | None:
    """The shard's meta, or None when the shard is missing or unreadable (truncated)."""
    try:
        with np.load(path) as data:
            return json.loads(str(data["meta_json"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
        return None


def shard_is_intact(path: Path) -> bool:
    """Every member present and every CRC right (reads the whole shard)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).stem for n in archive.namelist()}
            return set(FEATURE_KEYS) | {"meta_json"} <= names and archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _relabel_shard(job: ClipJob) -> ClipOutcome:
    """Same features, new labels or traces: rewrite the shard without recomputing."""
    with np.load(job.shard_path) as data:
        features = {key: data[key] for key in FEATURE_KEYS}
    arrays, names = _shard_arrays(features, job.meta, job.record.traces_path)
    _write_npz_atomic(job.shard_path, arrays)
    return _outcome(job.record.clip_id, "relabelled", features["face_found"], names)


def _reused(job: ClipJob) -> ClipOutcome:
    with np.load(job.shard_path) as data:
        face_found = data["face_found"]
        names = tuple(str(n) for n in data["trace_names"]) if "trace_names" in data else ()
    return _outcome(job.record.clip_id, "reused", face_found, names)


# -- source hashes ---------------------------------------------------------------------------




def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _source_files(record: ClipRecord) -> dict[str, Path]:
    files = {"video": record.video_path}
    if record.audio_path is not None:
        files["audio"] = record.audio_path
    if record.traces_path is not None:
        files["traces"] = record.traces_path
    return files


def source_hashes(record: ClipRecord, previous: dict | None) -> dict[str, dict]:
    """{role: {"sha256", "stat"}} for the clip's files; a file whose size and mtime match the
    previous shard's record keeps its hash without being read again."""
    old = (previous or {}).get("sources", {})
    hashes = {}
    for role, path in _source_files(record).items():
        stat = _stat_key(path)
        known = old.get(role)
        if known and known.get("stat") == stat and known.get("path") == str(path):
            hashes[role] = known
        else:
            hashes[role] = {"path": str(path), "stat": stat, "sha256": file_sha256(path)}
    return hashes


def _features_key(sources: dict[str, dict], signature_hash: str) -> str:
    """What the features depend on: the video and audio bytes and the front end."""
    parts = [signature_hash] + [f"{role}:{sources[role]['sha256']}"
                                for role in ("video", "audio") if role in sources]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSummary:
    """What one `build_cache` run did."""

    cache_dir: Path
    n_clips: int  # indexed clips
    computed: int
    reused: int  # including relabelled
    failed: int
    frames_computed: int
    wall_s: float
    failures: tuple[tuple[str, str], ...]  # (clip_id, reason)

    @property
    def clips_per_s(self) -> float:
        return self.computed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames_computed / self.wall_s if self.wall_s > 0 else 0.0


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    """One writer per cache folder (a second `cache` run on it fails at once)."""
    with open(cache_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another `streamav corpus cache` run is writing {cache_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clip_meta(record: ClipRecord, sources: dict, signature: dict) -> dict:
    return {
        "cache_version": CACHE_VERSION, "clip": record.to_json(),
        "emotion_index": emotion_index(record.emotion), "sources": sources,
        "frontend_hash": signature["hash"],
        "features_key": _features_key(sources, signature["hash"]),
    }


def _plan_job(record: ClipRecord, split: str, cache_dir: Path, signature: dict,
              config_path: Path | None) -> tuple[ClipJob, str]:
    """The job for a clip and what to do: "reuse", "relabel" or "compute"."""
    path = shard_path(cache_dir, record.clip_id)
    previous = read_shard_meta(path) if path.exists() else None
    meta = _clip_meta(record, source_hashes(record, previous), signature)
    job = ClipJob(record, path, meta, config_path, split)
    if previous is None or previous.get("features_key") != meta["features_key"] \
            or not shard_is_intact(path):
        return job, "compute"
    return job, ("reuse" if previous == meta else "relabel")


def build_cache(root: str | Path, format: str, out: str | Path, *, workers: int = 2,
                split_seed: int = 0, config_path: Path | None = None,
                console=None) -> CacheSummary:
    """Cache the front-end features of every clip of the corpus at `root` in `out`.

    `workers` worker processes (spawned, each with its own MediaPipe) compute the missing
    shards; `workers=0` computes them in this process. Returns what was done; writes
    `out/manifest.json`. Per-clip failures are counted, reported and listed in the manifest.
    """
    from rich.console import Console

    from streamav.config import load_config
    from streamav.frontend.features import frontend_signature

    if workers < 0:
        raise InputError("--workers must be 0 (in this process) or more")
    console = console or Console(stderr=True)
    started = time.perf_counter()
    index = index_corpus(root, format)
    if not index.clips:
        raise InputError(f"no usable {index.format} clips under {index.root} "
                         f"({len(index.problems)} problems; see `streamav corpus index`)")
    cache_dir = Path(out).expanduser().resolve()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InputError(f"--out {cache_dir} exists and is not a folder")
    (cache_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    signature = frontend_signature(load_config(config_path))
    plan = plan_split(index, split_seed)
    for note in plan.notes:
        console.print(f"[yellow]split: {note}[/]")
    for problem in index.problems[:_MAX_LISTED]:
        console.print(f"[red]index: {problem.path}: {problem.reason}[/]", highlight=False)
    if len(index.problems) > _MAX_LISTED:
        console.print(f"[red]index: ... and {len(index.problems) - _MAX_LISTED} more problems "
                      f"(listed in {MANIFEST_NAME})[/]")
    with _cache_lock(cache_dir):
        for stale in (cache_dir / SHARD_DIR).glob("*.partial"):
            stale.unlink(missing_ok=True)  # left by a killed run
        outcomes: dict[str, ClipOutcome] = {}
        jobs: dict[str, ClipJob] = {}
        try:
            _run_jobs(index, plan, cache_dir, signature, config_path, workers, console,
                      outcomes, jobs)
        finally:
            summary = _summarize(cache_dir, index, outcomes, time.perf_counter() - started)
            write_manifest(cache_dir, index, plan, signature, jobs, outcomes, summary)
    _print_summary(console, summary)
    return summary


def _run_jobs(index: CorpusIndex, plan: SplitPlan, cache_dir: Path, signature: dict,
              config_path: Path | None, workers: int, console, outcomes: dict[str, ClipOutcome],
              jobs: dict[str, ClipJob]) -> None:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[frames]} frames, {task.fields[failed]} failed"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("checking", total=len(index.clips), frames=0, failed=0)

        def finished(outcome: ClipOutcome) -> None:
            outcomes[outcome.clip_id] = outcome
            _advance(progress, task, outcome, console)

        pending = _check_shards(index, plan, cache_dir, signature, config_path, jobs, finished)
        progress.update(task, description="caching")
        _compute_all(pending, workers, finished)
        progress.update(task, description="done")


def _check_shards(index: CorpusIndex, plan: SplitPlan, cache_dir: Path, signature: dict,
                  config_path: Path | None, jobs: dict[str, ClipJob],
                  finished: Callable[[ClipOutcome], None]) -> list[ClipJob]:
    """Reuse (or relabel) every shard that is still good; return the jobs left to compute."""
    pending: list[ClipJob] = []
    for record in index.clips:
        try:
            job, action = _plan_job(record, clip_split(record, plan), cache_dir, signature,
                                    config_path)
        except OSError as exc:  # a source file vanished or cannot be read
            finished(ClipOutcome(record.clip_id, "failed", error=_one_line(exc)))
            continue
        jobs[record.clip_id] = job
        if action != "compute":
            try:
                outcome = _reused(job) if action == "reuse" else _relabel_shard(job)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pending.append(job)  # it broke since it was checked: make it again
                continue
            finished(outcome)
            continue
        pending.append(job)
    return pending


def _advance(progress, task, outcome: ClipOutcome, console) -> None:
    fields = progress.tasks[task].fields
    frames = fields["frames"] + (outcome.n_frames if outcome.status == "computed" else 0)
    failed = fields["failed"] + (outcome.status == "failed")
    if outcome.status == "failed":
        console.print(f"[red]failed: {outcome.clip_id}: {outcome.error}[/]", highlight=False)
    progress.update(task, advance=1, frames=frames, failed=failed)


def _worker_init() -> None:
    """Quiet native logs; leave Ctrl-C to the parent, which lets running clips finish."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Ctrl-C while clips run in this process: finish the clip in flight, then stop.

    The live pipeline treats Ctrl-C as a clean end of input, which would store the clip's
    frames so far as if they were the whole clip.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False  # not ours to change (another thread, or Ctrl-C is handled or ignored)
        return
    hit = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: hit.set())
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _compute_all(jobs: list[ClipJob], workers: int,
                 on_outcome: Callable[[ClipOutcome], None]) -> None:
    """Make the shards, calling `on_outcome` as each clip ends; in this process when `workers`
    is 0 (or there is one job). On Ctrl-C the clips in flight finish (and are reported), the
    others are not started, and KeyboardInterrupt propagates."""
    if not jobs:
        return
    if workers == 0 or len(jobs) == 1:
        with _deferred_interrupt() as interrupted:
            for job in jobs:
                on_outcome(compute_shard(job))
                if interrupted():
                    raise KeyboardInterrupt
        return
    context = multiprocessing.get_context("spawn")  # MediaPipe and PyAV own threads: no fork
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_worker_init) as pool:
        running: dict[Future, ClipJob] = {pool.submit(compute_shard, job): job for job in jobs}
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    on_outcome(_pool_outcome(future, running.pop(future)))
        except KeyboardInterrupt:
            started = [future for future in running if not future.cancel()]
            for future in started:
                on_outcome(_pool_outcome(future, running[future]))  # waits for it
            raise


def _pool_outcome(future: Future, job: ClipJob) -> ClipOutcome:
    try:
        return future.result()
    except Exception as exc:  # a crashed worker (BrokenProcessPool), or pickling
        return ClipOutcome(job.record.clip_id, "failed", error=_one_line(exc))


def _summarize(cache_dir: Path, index: CorpusIndex, outcomes: dict[str, ClipOutcome],
               wall_s: float) -> CacheSummary:
    by_status = {s: [o for o in outcomes.values() if o.status == s]
                 for s in ("computed", "reused", "relabelled", "failed")}
    return CacheSummary(
        cache_dir=cache_dir, n_clips=len(index.clips), computed=len(by_status["computed"]),
        reused=len(by_status["reused"]) + len(by_status["relabelled"]),
        failed=len(by_status["failed"]),
        frames_computed=sum(o.n_frames for o in by_status["computed"]), wall_s=wall_s,
        failures=tuple((o.clip_id, o.error or "") for o in by_status["failed"]))


def _print_summary(console, summary: CacheSummary) -> None:
    rate = (f" ({summary.clips_per_s:.1f} clips/s, {summary.frames_per_s:.0f} frames/s)"
            if summary.computed else "")
    console.print(f"cache {summary.cache_dir}: {summary.n_clips} clips, {summary.computed} "
                  f"computed, {summary.reused} reused, {summary.failed} failed in "
                  f"{summary.wall_s:.1f} s{rate}", highlight=False)


# -- the manifest ----------------------------------------------------------------------------


def write_manifest(cache_dir: Path, index: CorpusIndex, plan: SplitPlan, signature: dict,
                   jobs: dict[str, ClipJob], outcomes: dict[str, ClipOutcome],
                   summary: CacheSummary) -> None:
    """manifest.json, atomically. Only clips with an intact shard are listed under "clips"."""
    path = cache_dir / MANIFEST_NAME
    previous = load_manifest(cache_dir) if path.exists() else {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clips = [_manifest_clip(jobs[o.clip_id], o) for o in outcomes.values()
             if o.status != "failed"]
    clips.sort(key=lambda c: (c["speaker"], c["clip_id"]))
    manifest = {
        "cache_version": CACHE_VERSION,
        "created_utc": previous.get("created_utc", now), "updated_utc": now,
        "complete": summary.failed == 0 and len(clips) == len(index.clips),
        "format": index.format, "root": str(index.root), "frontend": signature,
        "emotions": list(EMOTIONS),
        "speakers": index.speakers,
        "split": {**asdict(plan), "fractions": SPLIT_FRACTIONS if plan.source == "seeded"
                  else None},
        "clips": clips,
        "failures": [{"clip_id": clip_id, "reason": reason}
                     for clip_id, reason in summary.failures],
        "not_done": sorted(c.clip_id for c in index.clips if c.clip_id not in outcomes),
        "index_problems": [p.to_json() for p in index.problems],
        "index_ignored": len(index.ignored),
        "last_run": {"computed": summary.computed, "reused": summary.reused,
                     "failed": summary.failed, "frames_computed": summary.frames_computed,
                     "wall_s": round(summary.wall_s, 3),
                     "clips_per_s": round(summary.clips_per_s, 3),
                     "frames_per_s": round(summary.frames_per_s, 1)},
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(manifest, indent=1) + "\n")
    partial.replace(path)


def _manifest_clip(job: ClipJob, outcome: ClipOutcome) -> dict:
    record = job.record
    return {
        **record.to_json(), "split": job.split,
        "emotion_index": job.meta["emotion_index"],
        "shard": str(job.shard_path.relative_to(job.shard_path.parents[1])),
        "source_sha256": job.meta["sources"]["video"]["sha256"],
        "audio_sha256": job.meta["sources"].get("audio", {}).get("sha256"),
        "traces_sha256": job.meta["sources"].get("traces", {}).get("sha256"),
        "n_frames": outcome.n_frames,
        "face_found_fraction": round(outcome.face_found_fraction, 4),
        "trace_names": list(outcome.trace_names),
    }


def load_manifest(cache_dir: str | Path) -> dict:
    """The cache's manifest, or InputError with one line when there is none."""
    path = Path(cache_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{cache_dir} is not a feature cache (no {MANIFEST_NAME}); make one "
                         f"with `streamav corpus cache`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def describe_cache(cache_dir: str | Path) -> str:
    """What a cache holds, in words a model card can keep: for a synthetic corpus the command
    that regenerates it (not a local path), else its format and folder name; with the split."""
    manifest = load_manifest(cache_dir)
    fmt, root = manifest.get("format", "?"), Path(str(manifest.get("root", "?")))
    split = manifest.get("split") or {}
    split_text = (f", --split-seed {split.get('seed')}" if split.get("source") == "seeded"
                  else "")  # else the corpus's own split column
    if fmt == "synth":
        try:
            corpus = json.loads((root / MANIFEST_NAME).read_text())
            parameters = corpus["parameters"]
            options = [f"--speakers {parameters['speakers']}",
                       f"--sentences {parameters['sentences']}", f"--seed {corpus['seed']}"]
            if list(parameters["emotions"]) != list(EMOTIONS):
                options.append(f"--emotions {','.join(parameters['emotions'])}")
            if list(parameters["intensities"]) != [1, 2, 3]:
                options.append(f"--intensities {','.join(map(str, parameters['intensities']))}")
            return (f"a cache of `streamav corpus synth {' '.join(options)}` (generator "
                    f"{corpus.get('generator_version', '?')}){split_text}")
        except (OSError, ValueError, KeyError, TypeError):
            pass  # the corpus moved or is gone: say what the cache itself knows
    return f"a cache of the {fmt} corpus {root.name!r}{split_text}"


# -- reading shards lazily -------------------------------------------------------------------


def memmap_shard(path: str | Path) -> dict[str, np.ndarray]:
    """The shard's arrays as read-only views of one memory map of the file (no copy, no load).

    Works because the cache writes uncompressed .npz: each member is a .npy file stored as is
    inside the zip. 0-d and object arrays (none in a shard but meta_json) are read normally.
    """
    path = Path(path)
    whole = np.memmap(path, dtype=np.uint8, mode="r")
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                arrays[name] = np.load(archive.open(info))
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            name_bytes, extra_bytes = struct.unpack("<HH", local[26:30])
            raw.seek(info.header_offset + 30 + name_bytes + extra_bytes)
            version = np.lib.format.read_magic(raw)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(raw)
            if dtype.hasobject or shape == ():
                arrays[name] = np.load(archive.open(info))
                continue
            arrays[name] = np.ndarray(shape, dtype, buffer=whole, offset=raw.tell(),
                                      order="F" if fortran_order else "C")
    return arrays
