"""The PyTorch dataset over a feature cache: aligned windows of T frames from one split.

Each item is one window of `window_frames` consecutive video frames of one clip, with the audio
spectrum of the same frames (the front end computes one spectrum per video frame, ending at the
frame's time), the labels of the clip and, for corpora that have them, the ground-truth traces:

    spectrum     (T, 513) float32        power |X|^2, as the front end computes it
    face         (T, 3, 64, 64) float32  RGB face crop scaled to -0.5..0.5 (DESIGN 1); frames
                                         without a face are all -0.5 (black)
    face_found   (T,) bool
    pts_s        (T,) float64            the frames' times in their file
    emotion      () int64                index into labels.EMOTIONS (0 angry .. 7 surprised)
    speaker      () int64                index into `dataset.speakers` (the cache's sorted
                                         speaker list: the same index in every split)
    intensity    () int64                0 unknown, 1 low, 2 medium, 3 high
    clip_index   () int64, start_frame () int64: where the window comes from
    traces       (T, k) float32          only when every clip of the split has traces; their
                                         names are `dataset.trace_names`

Shards are memory-mapped on first use (a bounded number stay open per process), so a dataset
over a large cache costs little memory and DataLoader workers share the page cache.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from streamav.corpus.cache import load_manifest, memmap_shard
from streamav.corpus.labels import EMOTIONS, SPLITS, normalize_split
from streamav.errors import InputError
from streamav.model.inputs import FACE_OFFSET, FACE_SCALE, face_to_model  # noqa: F401

_WINDOW_KEYS = ("spectrum", "face_crop_rgb", "face_found", "pts_s")


class CacheWindowDataset(Dataset):
    """Windows of `window_frames` frames every `stride_frames` from the clips of one split.

    split: "train", "val" ("validation"), "test", or None / "all" for every clip.
    require_face: keep only windows in which a face was found on every frame.
    max_open_shards: memory maps kept open per process (least recently used are closed).
    """

    def __init__(self, cache_dir: str | Path, split: str | None = "train", *,
                 window_frames: int = 30, stride_frames: int | None = None,
                 require_face: bool = True, max_open_shards: int = 64) -> None:
        if window_frames < 1:
            raise InputError("window_frames must be at least 1")
        stride_frames = window_frames if stride_frames is None else stride_frames
        if stride_frames < 1:
            raise InputError("stride_frames must be at least 1")
        self.cache_dir = Path(cache_dir)
        self.manifest = load_manifest(self.cache_dir)
        self.split = _split_name(split)
        self.window_frames = window_frames
        self.stride_frames = stride_frames
        self.require_face = require_face
        self.max_open_shards = max_open_shards
        self.emotions: tuple[str, ...] = tuple(self.manifest.get("emotions", EMOTIONS))
        self.speakers: list[str] = list(self.manifest["speakers"])
        self.clips: list[dict] = [c for c in self.manifest["clips"]
                                  if self.split is None or c["split"] == self.split]
        if not self.clips:
            notes = "; ".join(self.manifest.get("split", {}).get("notes", []))
            raise InputError(f"the cache {self.cache_dir} has no clips in split "
                             f"{self.split or 'all'}" + (f" ({notes})" if notes else ""))
        self.trace_names: tuple[str, ...] = _common_traces(self.clips)
        self._speaker_index = {name: i for i, name in enumerate(self.speakers)}
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._windows = self._index_windows()

    # -- windows --------------------------------------------------------------------------

    def _index_windows(self) -> np.ndarray:
        """(N, 2) int64 rows of (clip index, start frame)."""
        rows: list[np.ndarray] = []
        for clip_index, clip in enumerate(self.clips):
            if not (self.require_face or self.trace_names):  # the manifest says enough
                arrays, n_frames = {}, int(clip["n_frames"])
            else:
                arrays = self._arrays(clip_index)
                n_frames = len(arrays["face_found"])
            if self.trace_names:
                n_frames = min(n_frames, len(arrays["traces"]))
            starts = np.arange(0, n_frames - self.window_frames + 1, self.stride_frames)
            if self.require_face and len(starts):
                missing = np.concatenate(
                    [[0], np.cumsum(~np.asarray(arrays["face_found"][:n_frames], bool))])
                starts = starts[missing[starts + self.window_frames] == missing[starts]]
            rows.append(np.stack([np.full(len(starts), clip_index), starts], axis=1))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self._windows)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip_index, start = (int(v) for v in self._windows[item])
        clip = self.clips[clip_index]
        arrays = self._arrays(clip_index)
        frames = slice(start, start + self.window_frames)
        sample = {
            "spectrum": torch.from_numpy(np.array(arrays["spectrum"][frames], np.float32)),
            "face": torch.from_numpy(np.ascontiguousarray(
                face_to_model(arrays["face_crop_rgb"][frames]))),
            "face_found": torch.from_numpy(np.array(arrays["face_found"][frames], bool)),
            "pts_s": torch.from_numpy(np.array(arrays["pts_s"][frames], np.float64)),
            "emotion": torch.tensor(clip["emotion_index"], dtype=torch.int64),
            "speaker": torch.tensor(self._speaker_index[clip["speaker"]], dtype=torch.int64),
            "intensity": torch.tensor(clip["intensity"] or 0, dtype=torch.int64),
            "clip_index": torch.tensor(clip_index, dtype=torch.int64),
            "start_frame": torch.tensor(start, dtype=torch.int64),
        }
        if self.trace_names:
            sample["traces"] = torch.from_numpy(
                np.array(arrays["traces"][frames], np.float32)[:, self._trace_columns(clip)])
        return sample

    def _trace_columns(self, clip: dict) -> list[int]:
        names = clip["trace_names"]
        return [names.index(name) for name in self.trace_names]

    def window_speakers(self) -> np.ndarray:
        """(N,) speaker name of every window."""
        return np.array([c["speaker"] for c in self.clips], dtype=object)[self._windows[:, 0]]

    def window_labels(self) -> np.ndarray:
        """(N,) emotion index of every window (for class-balanced samplers)."""
        emotion = np.array([c["emotion_index"] for c in self.clips], np.int64)
        return emotion[self._windows[:, 0]]

    # -- shards ---------------------------------------------------------------------------

    def _arrays(self, clip_index: int) -> dict[str, np.ndarray]:
        arrays = self._open.get(clip_index)
        if arrays is not None:
            self._open.move_to_end(clip_index)
            return arrays
        path = self.cache_dir / self.clips[clip_index]["shard"]
        try:
            arrays = memmap_shard(path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise InputError(f"cannot read the cache shard {path}: {exc} (run `streamav corpus "
                             f"cache` again to repair it)") from None
        self._open[clip_index] = arrays
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return arrays

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # memory maps are reopened in each worker process
        return state


def _split_name(split: str | None) -> str | None:
    if split is None or split.strip().lower() == "all":
        return None
    try:
        name = normalize_split(split)
    except ValueError:
        name = None
    if name is None:
        raise InputError(f"unknown split {split!r} (use {', '.join(SPLITS)} or all)")
    return name


def _common_traces(clips: list[dict]) -> tuple[str, ...]:
    """The trace names every clip has (in the first clip's order); () if any clip has none."""
    first = clips[0].get("trace_names") or []
    common = [name for name in first
              if all(name in (c.get("trace_names") or []) for c in clips)]
    return tuple(common)
