"""The PyTorch dataset over a cache: window shapes, ranges and labels on the real CREMA-D cache,
spectra and faces taken from the same frames, traces and the corpus's own split on a synth-layout
cache, face-required windows on a hand-made cache, and DataLoader workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamav.corpus.cache import build_cache, load_manifest  # noqa: E402
from streamav.corpus.dataset import CacheWindowDataset, face_to_model  # noqa: E402
from streamav.corpus.index import SYNTH_TRACE_NAMES  # noqa: E402
from streamav.corpus.labels import EMOTIONS  # noqa: E402
from streamav.errors import InputError  # noqa: E402
from test_corpus_cache import crema_cache, shard_arrays  # noqa: E402
from test_corpus_index import TINY_FRAMES, tiny_media, write_synth_corpus  # noqa: E402


@pytest.fixture(scope="module")
def crema(tmp_path_factory) -> Path:
    return crema_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A synth-layout corpus of three speakers, one per split, cached in this process."""
    base = tmp_path_factory.mktemp("synth")
    media = tiny_media(tmp_path_factory.getbasetemp() / "tiny-media")
    rows = [{"clip": f"s{i}_{emotion}_{i + 1}_000", "speaker": f"s{i}", "sentence": "000",
             "emotion": emotion, "intensity": i + 1, "split": split}
            for i, (emotion, split) in enumerate([("happy", "train"), ("surprised", "val"),
                                                  ("contempt", "test")])]
    write_synth_corpus(base / "corpus", media.av_mp4, rows, TINY_FRAMES)
    summary = build_cache(base / "corpus", "synth", base / "cache", workers=0)
    assert summary.failed == 0
    return base / "cache"


def test_windows_have_the_right_shapes_ranges_and_labels(crema):
    dataset = CacheWindowDataset(crema, "train", window_frames=30)
    manifest = load_manifest(crema)
    expected = sum((c["n_frames"] - 30) // 30 + 1 for c in manifest["clips"])
    assert len(dataset) == expected
    for item in (0, len(dataset) // 2, len(dataset) - 1):
        sample = dataset[item]
        assert sample["spectrum"].shape == (30, 513) and sample["spectrum"].dtype == torch.float32
        assert sample["face"].shape == (30, 3, 64, 64) and sample["face"].dtype == torch.float32
        assert sample["face_found"].shape == (30,) and bool(sample["face_found"].all())
        assert float(sample["face"].min()) >= -0.5 and float(sample["face"].max()) <= 0.5
        assert float(sample["face"].std()) > 0.05  # a real image, not a constant
        assert float(sample["spectrum"].min()) >= 0
        clip = dataset.clips[int(sample["clip_index"])]
        assert EMOTIONS[int(sample["emotion"])] == clip["emotion"]
        assert int(sample["speaker"]) == 0 and int(sample["intensity"]) == 0
        assert "traces" not in sample
    assert sorted(EMOTIONS[e] for e in set(dataset.window_labels().tolist())) == \
        ["angry", "disgusted", "fear", "happy", "neutral", "sad"]


def test_spectra_and_faces_come_from_the_same_frames(crema):
    dataset = CacheWindowDataset(crema, "all", window_frames=16, stride_frames=5)
    for item in range(0, len(dataset), 7):
        sample = dataset[item]
        clip = dataset.clips[int(sample["clip_index"])]
        shard = shard_arrays(crema / clip["shard"])
        frames = slice(int(sample["start_frame"]), int(sample["start_frame"]) + 16)
        assert np.array_equal(sample["spectrum"].numpy(), shard["spectrum"][frames])
        assert np.array_equal(sample["face"].numpy(), face_to_model(shard["face_crop_rgb"][frames]))
        assert np.array_equal(sample["pts_s"].numpy(), shard["pts_s"][frames])
        steps = np.diff(sample["pts_s"].numpy())
        assert np.allclose(steps, 1 / 29.97, atol=2e-3)  # consecutive video frames
    # The last window of a clip ends inside that clip; overlapping windows share frames.
    first, second = dataset[0], dataset[1]
    assert int(second["start_frame"]) == 5
    assert torch.equal(first["spectrum"][5:], second["spectrum"][:11])


def test_traces_and_the_corpus_split(synth):
    sizes = {split: len(CacheWindowDataset(synth, split, window_frames=10))
             for split in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 4, "test": 4}  # 40 frames each, one speaker each
    val = CacheWindowDataset(synth, "validation", window_frames=10, stride_frames=10,
                             require_face=False)
    assert val.trace_names == SYNTH_TRACE_NAMES
    for item in range(len(val)):
        sample = val[item]
        start = int(sample["start_frame"])
        assert sample["traces"].shape == (10, len(SYNTH_TRACE_NAMES))
        expected = np.arange(start, start + 10, dtype=np.float32)[:, None] + \
            1000 * np.arange(len(SYNTH_TRACE_NAMES), dtype=np.float32)
        assert np.array_equal(sample["traces"].numpy(), expected)  # frame t's traces at row t
        assert EMOTIONS[int(sample["emotion"])] == "surprised" and int(sample["intensity"]) == 2
        assert val.speakers[int(sample["speaker"])] == "s1"
    manifest = load_manifest(synth)
    assert manifest["split"]["source"] == "corpus"


def _hand_made_cache(root: Path, face_found: np.ndarray) -> Path:
    """A cache with one clip whose faces are missing where `face_found` says so."""
    n = len(face_found)
    (root / "clips").mkdir(parents=True)
    crops = np.tile(np.arange(n, dtype=np.uint8)[:, None, None, None], (1, 64, 64, 3))
    crops[~face_found] = 0
    np.savez(root / "clips" / "x.npz", face_crop_rgb=crops, face_found=face_found,
             face_box_xywh=np.zeros((n, 4), np.float32),
             landmarks_xy=np.zeros((n, 5, 2), np.float32),
             mesh_crop_xy=np.zeros((n, 468, 2), np.float32),
             spectrum=np.tile(np.arange(n, dtype=np.float32)[:, None], (1, 513)),
             pts_s=np.arange(n) / 30.0, frame_seq=np.arange(n), meta_json=np.array("{}"))
    clip = {"clip_id": "x", "shard": "clips/x.npz", "speaker": "p", "emotion": "fear",
            "emotion_index": 3, "intensity": 3, "split": "train", "n_frames": n,
            "trace_names": []}
    (root / "manifest.json").write_text(json.dumps(
        {"emotions": list(EMOTIONS), "speakers": ["p"], "clips": [clip],
         "split": {"notes": []}}))
    return root


def test_require_face_drops_windows_with_a_lost_face(tmp_path):
    found = np.ones(100, bool)
    found[[12, 55, 56]] = False
    cache = _hand_made_cache(tmp_path / "cache", found)
    every = CacheWindowDataset(cache, "train", window_frames=10, stride_frames=1,
                               require_face=False)
    faced = CacheWindowDataset(cache, "train", window_frames=10, stride_frames=1)
    assert len(every) == 91
    starts = [int(faced[i]["start_frame"]) for i in range(len(faced))]
    assert all(found[s:s + 10].all() for s in starts)
    assert len(starts) == 91 - 10 - 11  # starts 3..12 and 46..56 touch a lost face
    lost = every[12]
    assert not bool(lost["face_found"][0]) and float(lost["face"][0].max()) == -0.5
    assert torch.equal(lost["spectrum"][:, 0], torch.arange(12, 22, dtype=torch.float32))


def test_data_loader_workers(crema):
    dataset = CacheWindowDataset(crema, "train", window_frames=30, stride_frames=15)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2)
    seen = 0
    for batch in loader:
        assert batch["face"].shape[1:] == (30, 3, 64, 64)
        assert batch["spectrum"].shape[1:] == (30, 513)
        seen += len(batch["emotion"])
    assert seen == len(dataset)


def test_bad_requests_are_input_errors(crema, tmp_path):
    with pytest.raises(InputError, match="no clips in split val.*one speaker"):
        CacheWindowDataset(crema, "val")
    with pytest.raises(InputError, match="unknown split"):
        CacheWindowDataset(crema, "holdout")
    with pytest.raises(InputError, match="not a feature cache"):
        CacheWindowDataset(tmp_path, "train")
