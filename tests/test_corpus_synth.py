"""The synthetic corpus generator: layout, decoding, determinism, lip-audio coupling, errors.

One tiny corpus (2 speakers x 2 sentences x 2 emotions x 1 intensity = 8 clips) is generated
with two worker processes and again in-process with the same seed; every file must be
byte-identical. Runs with espeak-ng, sox and MediaPipe for real.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from streamav.corpus.synth.factors import EMOTIONS, FPS, SAMPLE_RATE_HZ
from streamav.errors import InputError, MissingDependencyError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                reason="espeak-ng and sox are needed (apt-get install espeak-ng sox)")

TINY = dict(speakers=2, sentences=2, seed=11, emotions=["happy", "sad"], intensities=[3])
TRACE_KEYS = ("mouth_open", "head_yaw_deg", "head_pitch_deg", "head_roll_deg", "blink",
              "gaze_x", "gaze_y", "pitch_hz", "envelope")

# Thresholds, from what the generator measures (docs/corpus.md): per-clip Pearson r between
# mouth opening and the audio envelope is 0.72..0.87 (mean 0.82); head pose against the envelope
# averages |r| < 0.05 over many clips (single smooth clips reach |r| ~ 0.5 by chance).
MIN_CLIP_MOUTH_R = 0.6
MIN_MEAN_MOUTH_R = 0.72
MAX_POOLED_HEAD_R_TINY = 0.3
MAX_POOLED_HEAD_R_MANY = 0.12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamav.corpus.synth.generate import synthesize_corpus

    out = tmp_path_factory.mktemp("synth") / "a"
    synthesize_corpus(out, workers=2, contact_sheet=out.parent / "sheet.png", **TINY)
    return out


def _labels(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def test_layout_labels_and_manifest(corpus: Path) -> None:
    rows = _labels(corpus)
    assert len(rows) == 2 * 2 * 2
    assert list(rows[0])[:6] == ["clip", "speaker", "sentence", "emotion", "intensity", "split"]
    for row in rows:
        assert re.fullmatch(r"S\d{3}_\d{2}_[a-z]+_[123]", row["clip"])
        assert row["clip"] == (f"{row['speaker']}_{int(row['sentence']):02d}_{row['emotion']}_"
                               f"{row['intensity']}")
        assert row["emotion"] in EMOTIONS and row["split"] in ("train", "val", "test")
        assert row["identity_kind"] in ("photo", "drawn")
        assert (corpus / "clips" / f"{row['clip']}.mp4").is_file()
        assert (corpus / "traces" / f"{row['clip']}.npz").is_file()
    splits = {}
    for row in rows:  # speaker-disjoint: one split per speaker
        assert splits.setdefault(row["speaker"], row["split"]) == row["split"]
    assert {r["identity_kind"] for r in rows} == {"photo", "drawn"}
    speakers = json.loads((corpus / "speakers.json").read_text())
    assert [s["speaker"] for s in speakers] == ["S001", "S002"]
    assert speakers[0]["voice"]["variant"] != speakers[1]["voice"]["variant"] or (
        speakers[0]["voice"]["pitch"] != speakers[1]["voice"]["pitch"])
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["seed"] == TINY["seed"] and manifest["n_clips"] == 8
    assert len(manifest["files"]) == 8 + 8 + 2
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((corpus / name).read_bytes()).hexdigest() == digest
    assert (corpus.parent / "sheet.png").stat().st_size > 10_000


def test_clips_decode_at_30_fps_with_16_khz_audio(corpus: Path) -> None:
    for row in _labels(corpus):
        path = corpus / "clips" / f"{row['clip']}.mp4"
        n_frames = int(row["n_frames"])
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            audio = container.streams.audio[0]
            assert video.average_rate == FPS
            assert (video.codec_context.width, video.codec_context.height) == (256, 256)
            assert video.codec_context.pix_fmt == "yuv420p"
            assert audio.rate == SAMPLE_RATE_HZ and audio.codec_context.name == "aac"
            assert audio.layout.nb_channels == 1
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        with av.open(str(path)) as container:
            samples = np.concatenate([f.to_ndarray().reshape(-1)
                                      for f in container.decode(audio=0)])
        assert len(frames) == n_frames
        expected = n_frames * SAMPLE_RATE_HZ / FPS
        assert expected <= len(samples) <= expected + 2048  # AAC pads the last packet
        assert np.abs(samples).max() > 0.05  # there is speech in it
        assert frames[0].std() > 10  # a picture, not a blank


def test_traces_are_per_frame_and_in_range(corpus: Path) -> None:
    blinks = 0
    for row in _labels(corpus):
        with np.load(corpus / "traces" / f"{row['clip']}.npz") as traces:
            n = int(row["n_frames"])
            for key in TRACE_KEYS:
                assert traces[key].shape == (n,) and traces[key].dtype == np.float32, key
            assert 0.0 <= traces["mouth_open"].min() and traces["mouth_open"].max() <= 1.0
            assert 0.0 <= traces["blink"].min() and traces["blink"].max() <= 1.0
            blinks += int(traces["blink"].max() > 0.9)
            pitch = traces["pitch_hz"]
            voiced = pitch[pitch > 0]
            assert len(voiced) > n // 4 and 60.0 <= voiced.min() and voiced.max() <= 500.0
            assert traces["landmarks5_xy"].shape == (n, 5, 2)
    assert blinks >= 1  # 8 clips of ~3.5 s at 10..24 blinks a minute


def test_same_seed_gives_byte_identical_files(corpus: Path, tmp_path: Path) -> None:
    from streamav.corpus.synth.generate import synthesize_corpus

    again = tmp_path / "b"
    synthesize_corpus(again, workers=1, **TINY)  # and in-process instead of two workers
    names = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (corpus / name).read_bytes() == (again / name).read_bytes(), name


def test_mouth_follows_the_speech_and_head_pose_does_not(corpus: Path) -> None:
    mouth_r, head_z, env_z = [], [], []
    for row in _labels(corpus):
        with np.load(corpus / "traces" / f"{row['clip']}.npz") as t:
            mouth_r.append(_pearson(t["mouth_open"], t["envelope"]))
            env = (t["envelope"] - t["envelope"].mean()) / t["envelope"].std()
            head = np.stack([t["head_yaw_deg"], t["head_pitch_deg"], t["head_roll_deg"]], 1)
            head_z.append((head - head.mean(0)) / head.std(0))
            env_z.append(env)
    assert min(mouth_r) >= MIN_CLIP_MOUTH_R, mouth_r
    assert np.mean(mouth_r) >= MIN_MEAN_MOUTH_R, mouth_r
    heads, envs = np.concatenate(head_z), np.concatenate(env_z)
    for axis in range(3):
        assert abs(_pearson(heads[:, axis], envs)) < MAX_POOLED_HEAD_R_TINY


def test_head_pose_is_independent_of_the_envelope_over_many_clips() -> None:
    """The same traces without rendering, for 48 clips: pooled correlations."""
    from streamav.corpus.synth.clip import ClipSpec, plan_clip
    from streamav.corpus.synth.identities import plan_speakers

    plans = plan_speakers(6, seed=5, photo_sources=[])
    mouth, head, env = [], [], []
    for plan in plans:
        for emotion in EMOTIONS:
            clip = plan_clip(plan, ClipSpec(plan.speaker, 0, emotion, 2), seed=5)
            t = clip.traces
            z = lambda x: (x - x.mean(0)) / (x.std(0) + 1e-9)  # noqa: E731
            mouth.append(z(t["mouth_open"]))
            head.append(z(np.stack([t["head_yaw_deg"], t["head_pitch_deg"],
                                    t["head_roll_deg"]], 1)))
            env.append(z(t["envelope"]))
    mouth_all, head_all, env_all = map(np.concatenate, (mouth, head, env))
    assert _pearson(mouth_all, env_all) >= MIN_MEAN_MOUTH_R
    for axis in range(3):
        assert abs(_pearson(head_all[:, axis], env_all)) < MAX_POOLED_HEAD_R_MANY


def test_live_front_end_finds_the_synthetic_faces(corpus: Path) -> None:
    from streamav.offline_features import extract_clip_features

    found = total = 0
    for row in _labels(corpus)[::3]:
        features = extract_clip_features(corpus / "clips" / f"{row['clip']}.mp4")
        found += int(features.face_found.sum())
        total += features.n_frames
    assert found / total >= 0.95


def test_missing_espeak_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    from streamav.corpus.synth.generate import synthesize_corpus

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(MissingDependencyError, match="apt-get install espeak-ng"):
        synthesize_corpus(tmp_path / "out", speakers=1, sentences=1, workers=1)


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    from streamav.corpus.synth.generate import synthesize_corpus

    with pytest.raises(InputError, match="unknown emotion"):
        synthesize_corpus(tmp_path / "x", emotions=["joy"], workers=1)
    with pytest.raises(InputError, match="intensities"):
        synthesize_corpus(tmp_path / "x", intensities=[4], workers=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        synthesize_corpus(tmp_path / "full", speakers=1, sentences=1, emotions=["neutral"],
                          intensities=[1], workers=1)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_speakers_differ_in_expressiveness_and_asymmetry() -> None:
    from streamav.corpus.synth.expressions import clip_expression
    from streamav.corpus.synth.identities import plan_speakers
    from streamav.corpus.synth.rig import ACTION_INDEX

    plans = plan_speakers(40, 0, [])
    gains = np.array([p.expressiveness for p in plans])
    sides = np.array([p.asymmetry for p in plans])
    assert gains.min() < 0.6 and gains.max() > 1.1  # several-fold between people
    assert np.all((gains >= 0.45) & (gains <= 1.25))
    assert np.all(np.abs(sides) <= 0.3) and sides.min() < -0.1 and sides.max() > 0.1
    smile = clip_expression("happy", 3, 1.0, asymmetry=0.3).weights
    right, left = smile[ACTION_INDEX["smile_r"]], smile[ACTION_INDEX["smile_l"]]
    assert right == pytest.approx(left * 1.3 / 0.7)
    frown = clip_expression("sad", 3, 0.5).weights
    assert frown[ACTION_INDEX["frown"]] == pytest.approx(0.5 * clip_expression("sad", 3).weights[
        ACTION_INDEX["frown"]])


def test_grid_training_speakers_are_photo_identities_and_held_out_ones_are_not() -> None:
    from streamav.corpus.synth import photo

    names = [s.name for s in photo.PHOTO_SOURCES]
    for held_out in ("lbax4n", "lwbsza", "swiz3n"):  # the real-face denoising check's speakers
        assert f"grid_{held_out}" not in names
    if not (photo.shared_data_dir() / "grid" / "bbaf2n.mpg").exists():
        pytest.skip("../shared/data/grid is not here")
    image = photo.load_photo("grid_bbaf2n")
    assert image is not None and image.shape == (288, 360, 3) and image.dtype == np.uint8
    assert {s.name for s in photo.available_sources()} >= {f"grid_{c}" for c, _ in
                                                           photo.GRID_IDENTITIES}


def test_a_cache_of_it_is_described_by_the_command_that_regenerates_it(corpus: Path,
                                                                        tmp_path: Path) -> None:
    """Model cards and emotion.json name their training data by `describe_cache`: the synth
    command (subsets included), never the local folder."""
    from streamav.corpus.cache import build_cache, describe_cache

    build_cache(corpus, "synth", tmp_path / "cache", workers=0)
    text = describe_cache(tmp_path / "cache")
    assert text == ("a cache of `streamav corpus synth --speakers 2 --sentences 2 --seed 11 "
                    "--emotions happy,sad --intensities 3` (generator "
                    f"{json.loads((corpus / 'manifest.json').read_text())['generator_version']})")
    assert str(tmp_path) not in text and str(corpus) not in text
