"""Face identities across frames: which face of this frame is which face of the last ones.

MediaPipe FaceMesh (streamav.frontend.face, `step_all`) gives the faces of a frame in an order
that is not an identity: it changes when a face is re-detected or another one appears. The
tracker gives each face a track id that stays with it from frame to frame, so that several people
at one camera become several streams whose ids never swap (`streamav live --max-faces N`).

    tracker = FaceTracker(lost_timeout_s=2.0)
    update = tracker.update(faces, t_media_ns)   # faces: FaceResult-likes (box, five landmarks)
    update.matched   # {track id: index of its face in `faces`}
    update.started   # ids of the tracks that began this frame (new faces; ids never reused)
    update.missing   # ids of live tracks without a face this frame (their state is held)
    update.ended     # ids of tracks gone longer than `lost_timeout_s` (removed)

Matching. Each track predicts where its face is now: its last five landmarks and box moved by
its velocity (the landmarks' centroid, px/s, a running average; the prediction spans at most
`max_predict_s`), so that two faces passing each other keep their ids where "nearest to the last
position" would swap them. The cost of giving face f to track t is

    mean distance of the five landmarks to t's prediction, in t's eye distances
    + (1 - IoU of f's box with t's predicted box)

and a pair above `max_cost` (2.5: e.g. a face 1.5 eye distances, half a face's width, off its
prediction without overlapping it) is never matched: the face is a new track. Two people side by
side are at least a face's width (~3.3 eye distances) apart, so their cross costs are above 4.
Pairs are taken greedily, cheapest first (ties: lower track id, then lower face index): with the
few faces of a frame this is the assignment an optimal (Hungarian) solver gives whenever each
face is much closer to its own track than to another's, and it is deterministic.

A new face (matched to no track) starts a track with the next id; the faces that start together
are numbered from left to right (then top to bottom). A track whose face is missing keeps its
place until its face has been gone longer than `lost_timeout_s` of media time (measured in whole
milliseconds, as the single-stream face-lost reset is: streamav.pipeline), then it ends; a face
that comes back after that is a new track. Ids are never reused in the tracker's life, `reset()`
included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

NS_PER_S = 1_000_000_000


class Observed(Protocol):
    """What the tracker reads of a face (streamav.frontend.face.FaceResult has it)."""

    box_xywh: tuple[float, float, float, float] | None
    landmarks_xy: np.ndarray | None  # (5, 2) source px: eyes, nose tip, mouth corners


@dataclass
class FaceTrack:
    """One tracked face: where it was last seen and how it was moving."""

    track_id: int
    landmarks_xy: np.ndarray  # (5, 2) float64 source px, last seen
    box_xywh: np.ndarray  # (4,) float64, last seen
    last_seen_ns: int  # media time of the last frame with this face
    first_seen_ns: int
    velocity_px_s: np.ndarray = field(default_factory=lambda: np.zeros(2))  # centroid, (2,)
    frames_seen: int = 1

    @property
    def eye_distance_px(self) -> float:
        return max(float(np.hypot(*(self.landmarks_xy[1] - self.landmarks_xy[0]))), 1.0)

    def shift_px(self, t_ns: int, max_predict_s: float) -> np.ndarray:
        """(2,): how far the face has moved since it was last seen, by its velocity."""
        dt_s = min(max(t_ns - self.last_seen_ns, 0) / NS_PER_S, max_predict_s)
        return self.velocity_px_s * dt_s


@dataclass(frozen=True)
class TrackUpdate:
    """What one frame did to the tracks (see the module docstring)."""

    matched: dict[int, int]
    started: tuple[int, ...]
    missing: tuple[int, ...]
    ended: tuple[int, ...]


def box_iou(a_xywh: np.ndarray, b_xywh: np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax0, ay0, aw, ah = (float(v) for v in a_xywh)
    bx0, by0, bw, bh = (float(v) for v in b_xywh)
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Face track ids across frames; see the module docstring. One thread owns an instance."""

    def __init__(self, lost_timeout_s: float = 2.0, max_cost: float = 2.5,
                 max_predict_s: float = 0.2, velocity_weight: float = 0.5) -> None:
        if lost_timeout_s <= 0 or max_cost <= 0 or max_predict_s < 0:
            raise ValueError("lost_timeout_s and max_cost must be > 0, max_predict_s >= 0")
        if not 0 < velocity_weight <= 1:
            raise ValueError(f"velocity_weight must be in (0, 1], got {velocity_weight}")
        self.lost_timeout_s = lost_timeout_s
        self.max_cost = max_cost
        self.max_predict_s = max_predict_s
        self.velocity_weight = velocity_weight  # of the newest frame in the velocity average
        self.tracks: dict[int, FaceTrack] = {}
        self.next_id = 0

    def cost(self, track: FaceTrack, face: Observed, t_ns: int) -> float:
        """The cost of giving `face` to `track` at media time `t_ns` (module docstring)."""
        shift = track.shift_px(t_ns, self.max_predict_s)
        predicted = track.landmarks_xy + shift  # (5, 2)
        observed = np.asarray(face.landmarks_xy, np.float64)  # (5, 2)
        landmark_term = float(np.linalg.norm(observed - predicted, axis=1).mean()
                              / track.eye_distance_px)
        predicted_box = track.box_xywh + np.array([shift[0], shift[1], 0.0, 0.0])
        return landmark_term + 1.0 - box_iou(predicted_box, np.asarray(face.box_xywh))

    def update(self, faces: Sequence[Observed], t_ns: int) -> TrackUpdate:
        """Match this frame's faces (media time `t_ns`) to the tracks; start, hold and end
        tracks. `faces` are the found faces only (each with its box and five landmarks)."""
        pairs = sorted((cost, track_id, index)
                       for track_id, track in self.tracks.items()
                       for index, face in enumerate(faces)
                       if (cost := self.cost(track, face, t_ns)) <= self.max_cost)
        matched: dict[int, int] = {}
        taken: set[int] = set()
        for _cost, track_id, index in pairs:
            if track_id not in matched and index not in taken:
                matched[track_id] = index
                taken.add(index)
        for track_id, index in matched.items():
            self._seen(self.tracks[track_id], faces[index], t_ns)
        new = sorted((i for i in range(len(faces)) if i not in taken),
                     key=lambda i: (float(faces[i].box_xywh[0]), float(faces[i].box_xywh[1]), i))
        started = []
        for index in new:
            track = FaceTrack(self.next_id, np.array(faces[index].landmarks_xy, np.float64),
                              np.array(faces[index].box_xywh, np.float64), t_ns, t_ns)
            self.tracks[track.track_id] = track
            matched[track.track_id] = index
            started.append(track.track_id)
            self.next_id += 1
        missing, ended = [], []
        for track_id, track in list(self.tracks.items()):
            if track_id in matched:
                continue
            gone_ms = round((t_ns - track.last_seen_ns) / 1e6)
            if gone_ms > self.lost_timeout_s * 1000:
                ended.append(track_id)
                del self.tracks[track_id]
            else:
                missing.append(track_id)
        return TrackUpdate(matched, tuple(started), tuple(missing), tuple(ended))

    def _seen(self, track: FaceTrack, face: Observed, t_ns: int) -> None:
        landmarks = np.asarray(face.landmarks_xy, np.float64)
        dt_s = (t_ns - track.last_seen_ns) / NS_PER_S
        if dt_s > 0:
            moved = landmarks.mean(axis=0) - track.landmarks_xy.mean(axis=0)  # (2,)
            velocity = moved / dt_s
            if track.frames_seen == 1:
                track.velocity_px_s = velocity
            else:
                track.velocity_px_s = (track.velocity_px_s
                                       + self.velocity_weight * (velocity - track.velocity_px_s))
        track.landmarks_xy = landmarks.copy()
        track.box_xywh = np.array(face.box_xywh, np.float64)
        track.last_seen_ns = t_ns
        track.frames_seen += 1

    def reset(self) -> tuple[int, ...]:
        """End every track (a new scene: a source that came back); returns their ids. Ids are
        not reused afterwards."""
        ended = tuple(sorted(self.tracks))
        self.tracks.clear()
        return ended
