#!/usr/bin/env python3
"""Benchmark the live front end (decode, face, spectrum, publish) on real clips; write JSON.

Two passes over each clip, through the same pipeline `streamav live` runs:

- offline (`--no-realtime`): every frame as fast as possible: throughput and stage latencies;
- real time: the file plays at its own speed like a camera: dropped frames and
  capture-to-publish latency under a live load.

Usage: python scripts/bench_frontend.py [--clips DIR_OR_FILES...] [--repeat N] [--json OUT]

`streamav bench --pipeline` runs the same live path (streamav/bench/pipeline.py) with the
model stage on a chosen backend, in the common benchmark JSON envelope (docs/bench.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamav import __version__
from streamav.bench.pipeline import run_once  # the live-path runs `streamav bench --pipeline` makes
from streamav.latency import StageLatencies
from streamav.run_stats import STAGES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIPS = REPO.parent / "shared" / "data" / "crema-d"


def machine() -> dict:
    import av
    import cv2
    import mediapipe
    import numpy
    import zmq

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "streamav": __version__,
        "mediapipe": mediapipe.__version__, "opencv": cv2.__version__, "av": av.__version__,
        "numpy": numpy.__version__, "pyzmq": zmq.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="*", type=Path, default=[DEFAULT_CLIPS])
    parser.add_argument("--repeat", type=int, default=1, help="passes over each clip per mode")
    parser.add_argument("--json", type=Path, default=REPO / "out" / "bench_frontend.json")
    args = parser.parse_args()
    clips = sorted(p for c in args.clips for p in (c.glob("*.flv") if c.is_dir() else [c]))
    if not clips:
        print(f"no clips found in {args.clips}", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    results: dict = {"machine": machine(), "command": " ".join(sys.argv), "modes": {}}
    for mode in ("offline", "realtime"):
        total = StageLatencies(STAGES)
        frames = dropped = faces = 0
        busy_s = 0.0
        runs = []
        with console.status(f"{mode}: {len(clips)} clips x {args.repeat}"):
            for _ in range(args.repeat):
                for clip in clips:
                    t0 = time.perf_counter()
                    final, latency, _ = run_once(clip, realtime=(mode == "realtime"))
                    busy_s += time.perf_counter() - t0
                    for stage in STAGES:
                        total.total[stage].merge(latency.total[stage])
                    frames += final["frames"]
                    dropped += final["dropped_frames"]
                    faces += final["faces_found"]
                    runs.append({"clip": clip.name, "frames": final["frames"],
                                 "fps": final["fps"], "dropped_frames": final["dropped_frames"]})
        results["modes"][mode] = {
            "clips": len(clips), "repeat": args.repeat, "frames": frames,
            "dropped_frames": dropped, "faces_found": faces,
            "fps_including_startup": frames / busy_s,
            "fps_per_run_median": sorted(r["fps"] for r in runs)[len(runs) // 2],
            "latency_ms": total.total_summary_ms(), "runs": runs,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title=f"front end on {len(clips)} clips ({results['machine']['cpu']}, "
                        f"{results['machine']['cores']} cores)")
    table.add_column("stage", no_wrap=True, min_width=18)
    for mode in results["modes"]:
        table.add_column(f"{mode} p50 ms", justify="right")
        table.add_column(f"{mode} p99 ms", justify="right")
    for stage in STAGES:
        cells = []
        for mode in results["modes"].values():
            cells += [f"{mode['latency_ms'][stage][q]:.2f}" for q in ("p50", "p99")]
        table.add_row(stage, *cells)
    console.print(table)
    for name, mode in results["modes"].items():
        console.print(f"{name}: {mode['frames']} frames, {mode['fps_per_run_median']:.1f} fps "
                      f"(median run), {mode['dropped_frames']} dropped, "
                      f"face on {mode['faces_found']}")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
