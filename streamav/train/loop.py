"""The training loop every stage shares: Adam, seeded batches, progress, checkpoints, resume.

A stage gives `parameters`, a `batch(step)` function and a `loss(batch) -> (total, {name:
value})` function; the loop runs `steps` optimiser steps. Every `checkpoint_every` steps (and at
the end) it writes `DIR/checkpoint.safetensors` (the module's weights, the optimiser's state as
named tensors) and `DIR/progress.json` (step, loss history, seed), each atomically. Started again
on the same folder, it resumes from the last checkpoint: batches are a function of (seed, step),
so a resumed run sees the same data as an uninterrupted one. At the end it plots the loss curves
to `DIR/loss.png`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

CHECKPOINT_FILE = "checkpoint.safetensors"
PROGRESS_FILE = "progress.json"
CURVE_FILE = "loss.png"


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    learning_rate: float
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    grad_clip: float = 10.0


@dataclass
class LoopResult:
    steps_done: int
    resumed_from: int
    history: dict[str, list[float]]  # name -> value every log_every steps
    seconds: float


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state_dict = optimizer.state_dict()
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state_dict["state"].setdefault(int(index), {})[key] = value
    optimizer.load_state_dict(state_dict)


def save_checkpoint(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tensors.update(_optimizer_tensors(optimizer))
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(folder / CHECKPOINT_FILE, save(tensors))
    _atomic_write_bytes(folder / PROGRESS_FILE, (json.dumps(progress) + "\n").encode())


def load_checkpoint(folder: Path, module: nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore a checkpoint if the folder has a complete one; returns its progress, else None."""
    checkpoint, progress_file = folder / CHECKPOINT_FILE, folder / PROGRESS_FILE
    if not (checkpoint.is_file() and progress_file.is_file()):
        return None
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer_tensors(optimizer, {k: v for k, v in tensors.items()
                                        if k.startswith("optim.")})
    return json.loads(progress_file.read_text())


def run_loop(name: str, folder: Path, module: nn.Module, parameters: list[nn.Parameter],
             batch: Callable[[int], Any], loss: Callable[[Any], tuple[Tensor, dict[str, float]]],
             config: LoopConfig, on_step: Callable[[int], None] | None = None) -> LoopResult:
    """Train `parameters` of `module` for `config.steps` steps (resuming if possible)."""
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    progress = load_checkpoint(folder, module, optimizer) or {
        "stage": name, "step": 0, "seed": config.seed, "history": {}}
    if progress.get("seed") != config.seed:
        raise ValueError(f"{folder} holds a run with seed {progress.get('seed')}, not {config.seed}")
    start = int(progress["step"])
    history: dict[str, list[float]] = progress["history"]
    module.train()
    t0 = time.perf_counter()
    columns = (TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(name, total=config.steps, completed=start, loss="")
        for step in range(start, config.steps):
            torch.manual_seed(config.seed * 1_000_003 + step)
            total, parts = loss(batch(step))
            if not torch.isfinite(total):
                raise FloatingPointError(f"{name}: loss is {total.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            if on_step is not None:
                on_step(step)
            if step % config.log_every == 0 or step == config.steps - 1:
                for key, value in {"loss": total.item(), **parts}.items():
                    history.setdefault(key, []).append(float(value))
                bar.update(task, loss=f"loss {total.item():.4g}")
            bar.update(task, completed=step + 1)
            done = step + 1
            if done % config.checkpoint_every == 0 or done == config.steps:
                progress.update(step=done, history=history)
                save_checkpoint(folder, module, optimizer, progress)
    module.eval()
    plot_curves(folder / CURVE_FILE, name, history, config.log_every)
    return LoopResult(config.steps, start, history, time.perf_counter() - t0)


def plot_curves(path: Path, title: str, history: dict[str, list[float]], every: int) -> None:
    """One panel per logged quantity, log-scaled when positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(history)
    if not names:
        return
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, names):
        values = history[key]
        ax.plot([i * every for i in range(len(values))], values)
        ax.set_title(key)
        ax.set_xlabel("step")
        if values and min(values) > 0:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
