"""The evaluation's PNGs: reconstruction grid, one denoising grid per corruption, the emotion
confusion matrix and few-shot accuracy against context. matplotlib with the Agg backend (no
display needed); each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def reconstruction_grid(rows: Sequence[dict], path: Path, title: str) -> Path:
    """rows: {"clip_id", "frames" (N,) ints, "clean" (N,64,64,3) u8, "recon" (N,64,64,3) u8,
    "psnr" (N,)}: two image rows per clip (input above, reconstruction below)."""
    plt = _pyplot()
    columns = max(len(r["frames"]) for r in rows)
    fig, axes = plt.subplots(2 * len(rows), columns, figsize=(1.25 * columns, 2.7 * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            for k, key in enumerate(("clean", "recon")):
                ax = axes[2 * r + k, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(row["frames"]):
                    ax.axis("off")
                    continue
                ax.imshow(row[key][c])
                if k == 0:
                    ax.set_title(f"t={row['frames'][c]}", fontsize=7)
                else:
                    ax.set_title(f"{row['psnr'][c]:.1f} dB", fontsize=7)
        axes[2 * r, 0].set_ylabel(f"{row['clip_id'][:18]}\ninput", fontsize=7)
        axes[2 * r + 1, 0].set_ylabel("AV recon", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def denoising_grid(examples: Sequence[dict], path: Path, title: str,
                   column_means: Sequence[float | None], names: Sequence[str]) -> Path:
    """examples: {"image": (C, 64, 64, 3) uint8, one column per name, "label"}."""
    plt = _pyplot()
    n = len(names)
    fig, axes = plt.subplots(len(examples), n, figsize=(1.3 * n, 1.35 * len(examples) + 0.6),
                             squeeze=False)
    for r, row in enumerate(examples):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(row["image"][c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row["label"], fontsize=6)
            if r == 0:
                mean = column_means[c]
                ax.set_title(names[c] + ("" if mean is None else f"\n{mean:.1f} dB"), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def confusion_matrix(labels: Sequence[str], counts: np.ndarray, path: Path, title: str) -> Path:
    """Rows: true class, columns: predicted; colour = row-normalised rate, text = counts."""
    plt = _pyplot()
    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.8 + 0.55 * n))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="rate (row)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def fewshot_curve(series: dict[str, dict[str, dict]], chance: float, path: Path,
                  title: str) -> Path:
    """series: {label: {readout name: {"mean", "std"}}}, one line per label (k or protocol)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for label, accuracy in series.items():
        names = list(accuracy)
        means = [accuracy[n]["mean"] if accuracy[n]["mean"] is not None else np.nan for n in names]
        stds = [accuracy[n]["std"] or 0.0 for n in names]
        ax.errorbar(range(len(names)), means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set_xticks(range(len(names)), [n.replace("online_", "w after ") for n in names],
                      fontsize=8)
    ax.axhline(chance, color="grey", linestyle=":", label=f"chance {chance:.3f}")
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
