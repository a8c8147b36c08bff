"""Make a contact sheet of aligned face crops (docs/img/face_crops.png) from real clips.

One row per clip, evenly spaced frames across the clip, each crop enlarged with nearest-neighbour
so that its pixels stay visible. Every frame of a clip goes through the face front end in order
(so tracking runs as it does live); only the shown frames are kept.

    python scripts/face_contact_sheet.py                      # CREMA-D clips + Obama
    python scripts/face_contact_sheet.py --marks --out /tmp/sheet.png   # with template points
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import cv2
import numpy as np

from streamav.frontend.face import FaceConfig, FaceFrontEnd, template_px

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_CLIPS = sorted((SHARED_DATA / "crema-d").glob("*.flv")) + [
    SHARED_DATA / "talking-head" / "uncrop_Obama.mp4"]
LABEL_WIDTH_PX = 150


def crops_of_clip(front_end: FaceFrontEnd, path: Path,
                  n_shown: int) -> tuple[list[np.ndarray | None], int, int]:
    """Run every frame of `path` through the front end; return n_shown evenly spaced crops (RGB,
    None where no face was found), the frame count and the number of frames with a face."""
    with av.open(str(path)) as container:
        frames_bgr = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    shown = set(np.linspace(0, len(frames_bgr) - 1, n_shown).round().astype(int).tolist())
    front_end.reset()
    crops: list[np.ndarray | None] = []
    n_found = 0
    for index, image_bgr in enumerate(frames_bgr):
        result = front_end.step(image_bgr)
        n_found += result.found
        if index in shown:
            crops.append(None if result.crop_rgb is None else result.crop_rgb.copy())
    return crops, len(frames_bgr), n_found


def tile(crop_rgb: np.ndarray | None, crop_size_px: int, zoom: int, marks: bool) -> np.ndarray:
    """One enlarged crop in BGR for OpenCV drawing (grey with a cross where no face was found)."""
    side_px = crop_size_px * zoom
    if crop_rgb is None:
        image = np.full((side_px, side_px, 3), 96, np.uint8)
        cv2.line(image, (0, 0), (side_px - 1, side_px - 1), (0, 0, 255), 1)
        cv2.line(image, (0, side_px - 1), (side_px - 1, 0), (0, 0, 255), 1)
        return image
    image = cv2.resize(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), (side_px, side_px),
                       interpolation=cv2.INTER_NEAREST)
    if marks:
        for x, y in template_px(crop_size_px):
            centre = (int(round((x + 0.5) * zoom - 0.5)), int(round((y + 0.5) * zoom - 0.5)))
            cv2.drawMarker(image, centre, (0, 255, 0), cv2.MARKER_CROSS, markerSize=zoom * 3, thickness=1)
    return image


def contact_sheet(clips: list[Path], n_shown: int, zoom: int, marks: bool) -> np.ndarray:
    config = FaceConfig()
    rows: list[np.ndarray] = []
    with FaceFrontEnd(config) as front_end:
        for path in clips:
            crops, n_frames, n_found = crops_of_clip(front_end, path, n_shown)
            tiles = [tile(crop, config.crop_size_px, zoom, marks) for crop in crops]
            label = np.full((tiles[0].shape[0], LABEL_WIDTH_PX, 3), 255, np.uint8)
            for line, y_px in ((path.stem[:18], 20), (f"face {n_found}/{n_frames}", 40)):
                cv2.putText(label, line, (4, y_px), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                            cv2.LINE_AA)
            rows.append(np.hstack([label, *tiles]))
            print(f"{path.name}: face on {n_found}/{n_frames} frames", file=sys.stderr)
    return np.vstack(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, help="video files (default: CREMA-D + Obama)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "face_crops.png")
    parser.add_argument("--per-clip", type=int, default=8, help="crops shown per clip")
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement")
    parser.add_argument("--marks", action="store_true", help="draw the five template points")
    args = parser.parse_args(argv)
    sheet_bgr = contact_sheet(args.clips or DEFAULT_CLIPS, args.per_clip, args.zoom, args.marks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({sheet_bgr.shape[1]}x{sheet_bgr.shape[0]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
