"""A benchmark result on screen (rich tables), on disk (JSON) and as a latency plot (PNG)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from streamav.bench import BUDGET_MS
from streamav.errors import MissingDependencyError

PLOT_HINT = "--plot needs matplotlib: pip install matplotlib"


def write_json(document: dict, path: Path) -> Path:
    """Atomically (a temporary file renamed into place), parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _title(document: dict) -> str:
    machine, gpu = document["machine"], document["gpu"]
    where = gpu["name"] if gpu and document["settings"]["device"] == "cuda" else \
        f"{machine['cpu']}, {machine['cores']} cores"
    model = document["model"]
    return f"{model['preset']} model ({model['params']:,} params) on {where}"


def print_step_table(document: dict, console) -> None:
    """Two tables: the cold start, then the steady state (ms per step incl. the copies)."""
    from rich import box
    from rich.table import Table

    s = document["settings"]
    rows = document["backends"]
    console.print(f"[bold]streamav bench: {_title(document)}[/bold]")
    cold = Table(title="cold start", box=box.SIMPLE_HEAD)
    for name in ("backend", "engine cache", "open s", "first step ms"):
        cold.add_column(name, justify="left" if name == "backend" else "right", no_wrap=True)
    for b in rows:
        c = b["cold_start"]
        cold.add_row(b["backend"], c.get("cache", "-"), f"{c['load_s']:.2f}",
                     f"{c['first_step_ms']:.2f}")
    console.print(cold)
    spec = rows[0]["spec"]
    warm = Table(title=f"step latency ms, {spec['device']}, batch {s['batch']}: "
                       f"{s['frames']} frames interleaved after {s['warmup']} warm-up, "
                       f"{s['threads']} threads", box=box.SIMPLE_HEAD)
    columns = ("backend", "p50", "p90", "p99", "p99.9", "max", "mean",
               f">{BUDGET_MS:.1f}", "streams@30fps", "x eager p50", "x eager mean")
    for name in columns:
        warm.add_column(name, justify="left" if name == "backend" else "right", no_wrap=True)
    for b in rows:
        lat = b["latency_ms"]
        warm.add_row(b["backend"],
                     *(f"{lat[q]:.2f}" for q in ("p50", "p90", "p99", "p99.9", "max", "mean")),
                     str(b["over_budget_frames"]),
                     f"{b['throughput']['streams_at_30fps_mean']:.1f}",
                     f"{b['speedup_vs_eager']['p50']:.2f}",
                     f"{b['speedup_vs_eager']['mean']:.2f}")
    console.print(warm)
    m = document["machine"]
    console.print(f"load average {m['load_average_start']} at the start, "
                  f"{m['load_average_end']} at the end; inputs: {s['inputs']['source']}")


def print_pipeline_table(document: dict, console) -> None:
    from rich import box
    from rich.table import Table

    console.print(f"[bold]streamav bench --pipeline: {_title(document)}[/bold]")
    for b in document["backends"]:
        for mode, r in b["modes"].items():
            table = Table(title=f"live path, {mode}, model step on "
                                f"{b['engine'] or b['backend']}", box=box.SIMPLE_HEAD)
            table.add_column("stage", no_wrap=True)
            for q in ("p50 ms", "p90 ms", "p99 ms", "max ms", "count"):
                table.add_column(q, justify="right")
            for stage, lat in r["latency_ms"].items():
                table.add_row(stage, *("-" if lat[q] is None else f"{lat[q]:.2f}"
                                       for q in ("p50", "p90", "p99", "max")), str(lat["count"]))
            console.print(table)
            console.print(f"{mode}: {r['frames']} frames in {len(r['runs'])} runs, "
                          f"{r['fps']} fps ({r['fps_including_startup']} with start-up), "
                          f"{r['dropped_frames']} dropped, face on {r['faces_found']}")


def print_streams_table(document: dict, console) -> None:
    """One row per run of N streams: did it hold, the worst stream's numbers, the CPU."""
    from rich import box
    from rich.table import Table

    s = document["settings"]
    console.print(f"[bold]streamav bench --pipeline --streams: {_title(document)}[/bold]")
    table = Table(title=f"N streams in one process, real time, {s['seconds']:g} s each; "
                        f"latencies ms from capture to the message sent (all streams); holds: "
                        f"fps >= {s['fps_share']:g} x the clip's, 0 dropped, emotion p99 <= "
                        f"{s['p99_bound_ms']:g} ms", box=box.SIMPLE_HEAD)
    for name in ("N", "holds", "engine", "min fps", "drops", "face p50/p99", "emotion p50/p99",
                 "CPU ms/frame", "cores", "load 1 min"):
        table.add_column(name, justify="left" if name in ("holds", "engine") else "right",
                         no_wrap=True)
    for run in document["runs"]:
        per = run["per_stream"]
        fps = [x["fps"] for x in per if x["fps"] is not None]
        cpu = run["process_cpu"] or {}
        face, emotion = run["capture_to_publish_ms"], run["capture_to_emotion_ms"]
        table.add_row(
            str(run["streams"]), "yes" if run["holds"] else "no", run["engine"] or "-",
            f"{min(fps):.1f}" if fps else "-",
            str(sum(x["dropped_frames"] or 0 for x in per)),
            _pair(face["p50"], face["p99"]), _pair(emotion["p50"], emotion["p99"]),
            f"{cpu['cpu_ms_per_frame']:.2f}" if cpu else "-",
            f"{cpu['cores_busy']:.2f}" if cpu else "-",
            f"{run['load_average_end'][0]:.2f}" if run["load_average_end"] else "-")
    console.print(table)
    console.print(f"largest N that holds: {document['largest_holding']}; load average "
                  f"{document['machine']['load_average_start']} at the start, "
                  f"{document['machine']['load_average_end']} at the end (a shared machine: "
                  f"other jobs count)")


def _pair(p50, p99) -> str:
    return "-" if p50 is None else f"{p50:.1f} / {p99:.1f}"


def check_plotting() -> None:
    """Fail before a long run, not after it, when --plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(PLOT_HINT) from None


def plot_step(document: dict, step_ms: dict[str, np.ndarray], path: Path) -> Path:
    """Two panels, log-x: the histogram of step times per backend, and the fraction of steps
    slower than x (log-y, the tail); the 33.3 ms frame budget as a vertical line on both."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    everything = np.concatenate([v for v in step_ms.values()])
    low = max(float(everything.min()) * 0.8, 1e-3)
    high = max(float(everything.max()) * 1.25, BUDGET_MS * 1.5)
    bins = np.geomspace(low, high, 80)
    fig, (hist_ax, tail_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, ms in step_ms.items():
        hist_ax.hist(ms, bins=bins, histtype="step", linewidth=1.5, label=label)
        ordered = np.sort(ms)
        exceed = 1.0 - np.arange(len(ordered)) / len(ordered)
        tail_ax.step(ordered, exceed, where="post", linewidth=1.5, label=label)
    for ax in (hist_ax, tail_ax):
        ax.set_xscale("log")
        ax.axvline(BUDGET_MS, color="red", linestyle="--", linewidth=1,
                   label=f"{BUDGET_MS:.1f} ms (30 fps)")
        ax.set_xlabel("step latency (ms, log)")
        ax.grid(True, which="both", alpha=0.3)
    hist_ax.set_ylabel("steps")
    hist_ax.set_title("distribution")
    tail_ax.set_yscale("log")
    tail_ax.set_ylabel("fraction of steps slower")
    tail_ax.set_title("tail")
    tail_ax.legend(fontsize=8)
    s = document["settings"]
    fig.suptitle(f"model step, batch {s['batch']}, {s['frames']} frames, {s['device']}: "
                 f"{_title(document)}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
