"""A contact sheet: one still per (speaker, emotion), speakers in rows, emotions in columns."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_LABEL_PX = 22


def _text(image: np.ndarray, text: str, centre_x: int, baseline_y: int, scale: float = 0.45
          ) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    (width, _), _ = cv2.getTextSize(text, font, scale, 1)
    cv2.putText(image, text, (int(centre_x - width / 2), baseline_y), font, scale, (20, 20, 20),
                1, cv2.LINE_AA)


def write_contact_sheet(path: Path, stills: dict[tuple[str, str], np.ndarray],
                        speakers: list[str], emotions: list[str], row_labels: dict[str, str],
                        tile_px: int = 160) -> None:
    """Write a PNG grid of `stills[(speaker, emotion)]` (RGB), labelled; gaps stay blank."""
    cols, rows = len(emotions), len(speakers)
    label_w = 90
    sheet = np.full((_LABEL_PX + rows * tile_px, label_w + cols * tile_px, 3), 245, np.uint8)
    for c, emotion in enumerate(emotions):
        _text(sheet, emotion, label_w + c * tile_px + tile_px // 2, _LABEL_PX - 7)
    for r, speaker in enumerate(speakers):
        y = _LABEL_PX + r * tile_px
        _text(sheet, speaker, label_w // 2, y + tile_px // 2 - 4)
        _text(sheet, row_labels.get(speaker, ""), label_w // 2, y + tile_px // 2 + 14, 0.38)
        for c, emotion in enumerate(emotions):
            still = stills.get((speaker, emotion))
            if still is None:
                continue
            tile = cv2.resize(still, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
            sheet[y: y + tile_px, label_w + c * tile_px: label_w + (c + 1) * tile_px] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")
