"""The template face mesh the drawn identities are built on, and the mesh's mirror pairs.

`data/template_mesh.npz` holds:
    mesh_xyz  (478, 3) float32  a symmetric neutral face (mouth closed) in face-local units:
                                origin between the eye centres, x toward the image's right,
                                y down, z toward the camera, one unit = inter-ocular distance
    mirror    (478,) int16      index of each point's left/right partner (an involution)

Both were measured with MediaPipe FaceMesh (refine_landmarks, 478 points) on the CREMA-D clips
in ../shared/data/crema-d (and the public-domain Obama clip for the mirror pairs); only these
numbers are shipped. `python -m streamav.corpus.synth.template` rebuilds the file (needs scipy
and ../shared/data).

The mirror pairs come from running the mesh on each frame and on its horizontal flip: point i
of the flipped frame, flipped back, lands on point mirror[i] of the original. A linear
assignment over 90 frames gives the pairs (mean residual 1.2% of the eye-corner distance).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from streamav.frontend.face import LEFT_EYE_CONTOUR_IDX, RIGHT_EYE_CONTOUR_IDX

_RIGHT_EYE = np.array(RIGHT_EYE_CONTOUR_IDX)
_LEFT_EYE = np.array(LEFT_EYE_CONTOUR_IDX)
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


@functools.lru_cache(maxsize=1)
def load_template() -> tuple[np.ndarray, np.ndarray]:
    """(mesh_xyz (478, 3) float64 face-local units, mirror (478,) int64), read-only."""
    data_dir = resources.files("streamav.corpus.synth") / "data"
    with resources.as_file(data_dir / "template_mesh.npz") as path, np.load(path) as data:
        mesh = data["mesh_xyz"].astype(np.float64)
        mirror = data["mirror"].astype(np.int64)
    mesh.setflags(write=False)
    mirror.setflags(write=False)
    return mesh, mirror


def to_face_local(mesh_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Pixels → face-local units. Returns (local (N, 3), eye_mid_xy (2,), eye_dist_px, roll_rad)."""
    right = mesh_xyz[_RIGHT_EYE, :2].mean(axis=0)
    left = mesh_xyz[_LEFT_EYE, :2].mean(axis=0)
    mid = (right + left) / 2.0
    axis = left - right
    dist = float(np.hypot(*axis))
    roll = float(np.arctan2(axis[1], axis[0]))
    cos, sin = np.cos(roll), np.sin(roll)
    rel = mesh_xyz[:, :2] - mid
    local = np.empty_like(mesh_xyz, dtype=np.float64)
    local[:, 0] = (rel[:, 0] * cos + rel[:, 1] * sin) / dist
    local[:, 1] = (-rel[:, 0] * sin + rel[:, 1] * cos) / dist
    local[:, 2] = (mesh_xyz[:, 2] - mesh_xyz[:, 2].mean()) / dist
    return local, mid, dist, roll


def symmetrize(local_xyz: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Average a face-local mesh with its mirror image (x negated, partners swapped)."""
    flipped = local_xyz[mirror].copy()
    flipped[:, 0] *= -1.0
    return (local_xyz + flipped) / 2.0


def close_mouth(local_xyz: np.ndarray) -> np.ndarray:
    """Move the inner-lip points of each upper/lower pair onto their mean height."""
    out = local_xyz.copy()
    for upper, lower in zip(INNER_LIP_UPPER[1:-1], INNER_LIP_LOWER[1:-1]):
        mid = (out[upper, 1] + out[lower, 1]) / 2.0
        out[upper, 1] = out[lower, 1] = mid
    return out


def _frames(path: Path, step: int):
    import av

    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % step == 0:
                yield frame.to_ndarray(format="rgb24")


def build_template(shared_data: Path, out_path: Path) -> None:
    """Measure the template and mirror pairs on the shared clips and write `out_path`."""
    from scipy.optimize import linear_sum_assignment

    from streamav.corpus.synth.landmarks import StillFaceMesh

    clips = sorted((shared_data / "crema-d").glob("*.flv"))
    obama = shared_data / "talking-head" / "uncrop_Obama.mp4"
    cost = np.zeros((478, 478))
    closed: list[np.ndarray] = []
    with StillFaceMesh() as detector:
        for clip in clips + ([obama] if obama.exists() else []):
            for image in _frames(clip, 10):
                mesh = detector.detect(image)
                flipped = detector.detect(np.ascontiguousarray(image[:, ::-1]))
                if mesh is None or flipped is None:
                    continue
                flipped[:, 0] = image.shape[1] - 1 - flipped[:, 0]
                scale = float(np.hypot(*(mesh[33, :2] - mesh[263, :2])))
                cost += np.sqrt(((flipped[:, None, :2] - mesh[None, :, :2]) ** 2).sum(-1)) / scale
        for clip in clips:
            for image in _frames(clip, 2):
                mesh = detector.detect(image)
                if mesh is not None and mesh[14, 1] - mesh[13, 1] < 1.0:
                    closed.append(to_face_local(mesh)[0])
    _, mirror = linear_sum_assignment(cost)
    if not np.all(mirror[mirror] == np.arange(478)):
        raise RuntimeError("the measured mirror pairs are not an involution")
    mean = close_mouth(symmetrize(np.mean(closed, axis=0), mirror))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, mesh_xyz=mean.astype(np.float32), mirror=mirror.astype(np.int16))
    print(f"wrote {out_path}: {len(closed)} closed-mouth frames")


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[3]
    build_template(repo.parent / "shared" / "data", Path(__file__).parent / "data" / "template_mesh.npz")


def part_lips(local_xyz: np.ndarray, gap: float) -> np.ndarray:
    """Open the inner lips by `gap` (face-local units) so that no two mesh points coincide."""
    out = local_xyz.copy()
    for upper, lower in zip(INNER_LIP_UPPER[1:-1], INNER_LIP_LOWER[1:-1]):
        out[upper, 1] -= gap / 2.0
        out[lower, 1] += gap / 2.0
    return out
