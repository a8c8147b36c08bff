#!/usr/bin/env python3
"""Two exported steps (step.onnx) side by side on ONNX Runtime: per-step wall and CPU time,
interleaved frame by frame so that the shared machine's load hits both alike.

    python scripts/bench_step_versions.py OLD/step.onnx NEW/step.onnx [--frames 600]
        [--threads 1] [--json out.json]

An old step comes from git, e.g. `mkdir /tmp/old; git show <commit>:streamav/data/model/step.onnx
> /tmp/old/step.onnx` (and its step.json beside it, for the initial state).
The inputs are random faces and spectra with the state fed back, as live; both steps get the
same ones. Prints and writes p50 / p90 / p99 of each and the ratios new / old, with the load
average before and after (BENCHMARKS.md keeps the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _initial_feed(session, step_json: Path) -> dict[str, np.ndarray]:
    """Every input at its initial value (step.json's initial_state beside the step; 0 else)."""
    initial = {}
    if step_json.is_file():
        initial = json.loads(step_json.read_text()).get("initial_state", {})
    return {i.name: np.full([d if isinstance(d, int) else 1 for d in i.shape],
                            initial.get(i.name, 0.0), np.float32)
            for i in session.get_inputs()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sessions = {"old": _session(args.old, args.threads), "new": _session(args.new, args.threads)}
    feeds = {name: _initial_feed(s, getattr(args, name).with_name("step.json"))
             for name, s in sessions.items()}
    outputs = {name: [o.name for o in s.get_outputs()] for name, s in sessions.items()}
    rng = np.random.default_rng(0)
    wall = {name: [] for name in sessions}
    cpu = {name: [] for name in sessions}
    load_before = os.getloadavg()
    for frame in range(args.warmup + args.frames):
        face = rng.uniform(-0.5, 0.5, (1, 3, 64, 64)).astype(np.float32)
        spectrum = rng.exponential(1e-4, (1, 513)).astype(np.float32)
        for name, session in sessions.items():
            feed = feeds[name]
            feed["face"], feed["spectrum"] = face, spectrum
            t0, c0 = time.perf_counter(), time.thread_time()
            result = session.run(None, feed)
            t1, c1 = time.perf_counter(), time.thread_time()
            for out_name, value in zip(outputs[name], result):  # the state fed back
                if out_name.startswith("next_"):
                    feed["state_" + out_name[5:]] = value
            if frame >= args.warmup:
                wall[name].append((t1 - t0) * 1e3)
                cpu[name].append((c1 - c0) * 1e3)
    summary = {name: {"wall_ms": {f"p{q}": round(float(np.percentile(wall[name], q)), 3)
                                  for q in (50, 90, 99)},
                      "thread_cpu_ms_p50": round(float(np.median(cpu[name])), 3),
                      "file": str(getattr(args, name))} for name in sessions}
    summary["ratio_new_over_old_p50"] = round(summary["new"]["wall_ms"]["p50"]
                                              / summary["old"]["wall_ms"]["p50"], 3)
    summary.update(frames=args.frames, threads=args.threads, load_before=load_before,
                   load_after=os.getloadavg(), machine=platform.processor() or platform.machine(),
                   cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
