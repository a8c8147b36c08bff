"""The feature cache on real clips: its features are exactly what `streamav live --no-realtime`
computes, a second run recomputes nothing, a truncated shard is recomputed, a killed run resumes,
a clip that cannot be read is reported without stopping the rest, MEAD audio is paired, and the
speaker split is disjoint and deterministic.

`crema_cache` builds the cache of the six real CREMA-D clips once per session (2 workers) at a
fixed place; the dataset tests call it again and so also exercise reuse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CREMA_D, CREMA_D_CLIPS, cli_env, default_sigint, free_tcp_port, \
    require_shared_data, streamav_command
from streamav.corpus.cache import (
    MANIFEST_NAME, _cache_lock, build_cache, file_sha256, load_manifest, memmap_shard,
    plan_split, seeded_speaker_split, shard_path)
from streamav.corpus.index import ClipRecord, CorpusIndex
from streamav.errors import InputError
from streamav.frontend.features import FEATURE_KEYS, frontend_signature
from test_corpus_index import place, tiny_media



def crema_cache(tmp_path_factory) -> Path:
    """The session's cache of the real CREMA-D clips (built by whoever asks first)."""
    require_shared_data()
    out = tmp_path_factory.getbasetemp() / "crema-d-cache"
    summary = build_cache(CREMA_D, "crema-d", out, workers=2, split_seed=0)
    assert summary.failed == 0, summary.failures
    assert summary.computed + summary.reused == 6
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return crema_cache(tmp_path_factory)


def shard_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def assert_same_features(shard: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    for key in FEATURE_KEYS:
        a, b = shard[key], reference[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), f"{key} differs"


def test_cache_features_are_those_of_streamav_live(cache_dir, tmp_path):
    clip = CREMA_D / "1001_DFA_ANG_XX.flv"
    saved = tmp_path / "live.npz"
    done = subprocess.run(
        [*streamav_command(), "live", "--video", str(clip), "--no-realtime", "--no-preview",
         "--save-features", str(saved), "--publish", f"tcp://127.0.0.1:{free_tcp_port()}",
         "--control", "none"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same_features(shard_arrays(shard_path(cache_dir, clip.stem)), shard_arrays(saved))


def test_manifest(cache_dir):
    manifest = load_manifest(cache_dir)
    from streamav.config import load_config

    assert manifest["frontend"] == frontend_signature(load_config())
    assert manifest["complete"] and manifest["format"] == "crema-d" and not manifest["failures"]
    assert manifest["split"]["source"] == "seeded" and manifest["split"]["speakers"] == {
        "train": ["1001"], "val": [], "test": []}
    assert "one speaker" in manifest["split"]["notes"][0]
    clips = {c["clip_id"]: c for c in manifest["clips"]}
    assert sorted(clips) == sorted(p.stem for p in CREMA_D_CLIPS)
    for path in CREMA_D_CLIPS:
        entry = clips[path.stem]
        assert entry["source_sha256"] == file_sha256(path)
        shard = shard_arrays(cache_dir / entry["shard"])
        assert entry["n_frames"] == len(shard["face_found"]) > 50
        assert entry["face_found_fraction"] == pytest.approx(shard["face_found"].mean(), abs=1e-4)
        assert entry["split"] == "train" and entry["emotion_index"] == \
            manifest["emotions"].index(entry["emotion"])
        meta = json.loads(str(shard["meta_json"]))
        assert meta["frontend_hash"] == manifest["frontend"]["hash"]
        assert meta["clip"]["emotion"] == entry["emotion"]


def test_second_run_reuses_everything(cache_dir):
    shards = sorted((cache_dir / "clips").glob("*.npz"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    summary = build_cache(CREMA_D, "crema-d", cache_dir, workers=2, split_seed=5)
    assert (summary.computed, summary.reused, summary.failed) == (0, 6, 0)  # a new split too
    assert {p.name: p.stat().st_mtime_ns for p in shards} == before
    assert load_manifest(cache_dir)["last_run"]["computed"] == 0


def test_truncated_shard_is_recomputed(cache_dir, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    victim = shard_path(copy, "1001_DFA_SAD_XX")
    original = shard_arrays(victim)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (victim.parent / "1001_DFA_NEU_XX.npz.1234.partial").write_bytes(b"left by a kill")
    summary = build_cache(CREMA_D, "crema-d", copy, workers=0)
    assert (summary.computed, summary.reused) == (1, 5)
    assert_same_features(shard_arrays(victim), original)
    assert not list(victim.parent.glob("*.partial"))


def test_a_killed_run_resumes(tmp_path):
    require_shared_data()
    out = tmp_path / "cache"
    run = subprocess.Popen(
        [*streamav_command(), "corpus", "cache", str(CREMA_D), "--format", "crema-d", "--out",
         str(out), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=cli_env(), start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while len(list((out / "clips").glob("*.npz"))) < 2 and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run and its worker: a crash, no clean-up
        run.wait(10)
    done_before = len(list((out / "clips").glob("*.npz")))
    assert 2 <= done_before < 6 and not (out / MANIFEST_NAME).exists()
    summary = build_cache(CREMA_D, "crema-d", out, workers=0)
    assert summary.reused == done_before and summary.computed == 6 - done_before
    assert load_manifest(out)["complete"] and len(list((out / "clips").glob("*.npz"))) == 6


def test_failures_are_per_clip_and_mead_audio_is_paired(tmp_path):
    media = tiny_media(tmp_path / "media")
    root = tmp_path / "mead"
    place(media.video_only_mp4, root / "M003/video/front/happy/level_2/001.mp4")
    place(media.audio_m4a, root / "M003/audio/happy/level_2/001.m4a")
    # Named right, but not media: fails in the front end, the rest goes on.
    (root / "M003/video/front/sad/level_1").mkdir(parents=True)
    (root / "M003/video/front/sad/level_1/002.mp4").write_bytes(os.urandom(4096))
    place(media.audio_m4a, root / "M003/audio/sad/level_1/002.m4a")
    # Audio file that is really a video without audio: no audio stream.
    place(media.video_only_mp4, root / "W011/video/front/fear/level_3/003.mp4")
    place(media.video_only_mp4, root / "W011/audio/fear/level_3/003.m4a")
    out = tmp_path / "cache"
    summary = build_cache(root, "mead", out, workers=0)
    assert (summary.computed, summary.failed) == (1, 2)
    assert sorted(clip_id for clip_id, _ in summary.failures) == [
        "M003_sad_level_1_002", "W011_fear_level_3_003"]
    manifest = load_manifest(out)
    assert not manifest["complete"] and len(manifest["failures"]) == 2
    assert [c["clip_id"] for c in manifest["clips"]] == ["M003_happy_level_2_001"]
    assert manifest["clips"][0]["audio_sha256"] == file_sha256(media.audio_m4a)
    from streamav.offline_features import extract_clip_features

    reference = extract_clip_features(media.video_only_mp4, audio=media.audio_m4a).arrays()
    shard = shard_arrays(shard_path(out, "M003_happy_level_2_001"))
    assert_same_features(shard, reference)
    assert (shard["spectrum"].sum(axis=1) > 0).mean() > 0.9  # the m4a's audio is in there


def test_memmap_shard_reads_the_same_arrays(cache_dir):
    path = shard_path(cache_dir, "1001_DFA_HAP_XX")
    mapped, loaded = memmap_shard(path), shard_arrays(path)
    assert set(mapped) == set(loaded)
    for key, value in loaded.items():
        assert np.array_equal(mapped[key], value, equal_nan=value.dtype.kind == "f"), key


def _index_of(speakers_and_splits: list[tuple[str, str | None]]) -> CorpusIndex:
    clips = tuple(ClipRecord(f"c{i}", Path(f"c{i}.mp4"), None, speaker, "happy", None, None,
                             "synth", split) for i, (speaker, split) in
                  enumerate(speakers_and_splits))
    return CorpusIndex(Path("."), "synth", clips, ())


def test_speaker_split():
    for n in (1, 2, 3, 10, 24, 91):
        speakers = [f"spk{i:03d}" for i in range(n)]
        plan = seeded_speaker_split(speakers, seed=3)
        groups = plan.speakers
        assert sorted(sum(groups.values(), [])) == speakers  # disjoint and complete
        assert len(groups["train"]) >= 1
        assert len(groups["test"]) == (0 if n == 1 else max(1, round(0.1 * n)))
        assert len(groups["val"]) == (0 if n < 3 else max(1, round(0.1 * n)))
        assert plan == seeded_speaker_split(list(reversed(speakers)), seed=3)  # deterministic
    many = [f"spk{i:03d}" for i in range(40)]
    assert seeded_speaker_split(many, 0).speakers != seeded_speaker_split(many, 1).speakers
    # The corpus's own split wins when every clip has one; a non-disjoint one is flagged.
    own = plan_split(_index_of([("a", "train"), ("b", "val"), ("c", "test")]), seed=0)
    assert own.source == "corpus" and own.speakers == {"train": ["a"], "val": ["b"],
                                                       "test": ["c"]}
    leaky = plan_split(_index_of([("a", "train"), ("a", "test"), ("b", "val")]), seed=0)
    assert "not speaker-disjoint" in leaky.notes[0]
    partial = plan_split(_index_of([("a", "train"), ("b", None), ("c", None)]), seed=0)
    assert partial.source == "seeded" and partial.notes


def test_one_writer_per_cache(tmp_path):
    require_shared_data()
    out = tmp_path / "cache"
    (out / "clips").mkdir(parents=True)
    with _cache_lock(out):
        with pytest.raises(InputError, match="another"):
            build_cache(CREMA_D, "crema-d", out, workers=0)


def test_new_labels_rewrite_shards_without_recomputing(cache_dir, tmp_path):
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    corpus = tmp_path / "relabelled"
    corpus.mkdir()
    rows = ["clip,path,speaker,emotion"] + [
        f"{p.stem},{p},1001,{'contempt' if 'ANG' in p.stem else p.stem.split('_')[2]}"
        for p in CREMA_D_CLIPS]
    (corpus / "labels.csv").write_text("\n".join(rows) + "\n")
    summary = build_cache(corpus, "folder", copy, workers=0)
    assert (summary.computed, summary.reused) == (0, 6)
    entry = next(c for c in load_manifest(copy)["clips"] if c["clip_id"] == "1001_DFA_ANG_XX")
    assert (entry["emotion"], entry["emotion_index"], entry["corpus"]) == ("contempt", 1, "folder")
    meta = json.loads(str(shard_arrays(copy / entry["shard"])["meta_json"]))
    assert meta["clip"]["emotion"] == "contempt"


def test_ctrl_c_finishes_the_clip_in_flight_and_writes_the_manifest(cache_dir, tmp_path):
    out = tmp_path / "cache"
    code = (f"from streamav.corpus.cache import build_cache; "
            f"build_cache({str(CREMA_D)!r}, 'crema-d', {str(out)!r}, workers=0)")
    run = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env=cli_env(),
                           preexec_fn=default_sigint)  # else lost when SIGINT is inherited ignored
    deadline = time.monotonic() + 60
    while not list((out / "clips").glob("*.npz")) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == -signal.SIGINT, stderr  # KeyboardInterrupt, after the clean-up
    manifest = load_manifest(out)
    shards = sorted((out / "clips").glob("*.npz"))
    assert 1 <= len(shards) < 6 and len(manifest["clips"]) == len(shards)
    assert len(manifest["not_done"]) == 6 - len(shards) and not manifest["complete"]
    for shard in shards:  # whole clips only: none cut short by the interrupt
        assert_same_features(shard_arrays(shard), shard_arrays(cache_dir / "clips" / shard.name))


def test_a_corpus_without_usable_clips_is_an_input_error(tmp_path):
    require_shared_data()
    with pytest.raises(InputError, match="no usable ravdess clips"):
        build_cache(CREMA_D, "ravdess", tmp_path / "cache", workers=0)
    assert not (tmp_path / "cache").exists()
