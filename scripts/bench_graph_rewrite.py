#!/usr/bin/env python3
"""The ONNX step before and after the engine build's graph rewrites, side by side with eager
in one process, on ONNX Runtime's CPU provider (streamav.engines.graph_rewrite).

    python scripts/bench_graph_rewrite.py [--frames 1000] [--warmup 50] [--threads 1]
        [--precision fp32|int8] [--batch 1] [--json out.json]

Engines, each stepping once per frame in an order rotated by one each frame (as `streamav bench`
does, with its timing: inputs in, face and probabilities out on the host):
  eager        the PyTorch model (the reference of every ratio),
  onnx-before  the model folder's step.onnx as it is (fp32 at batch 1), else a fresh export of
               the step at --batch (int8: quantized per stream), as the engine cache builds it,
  onnx-after   the same file rewritten by `rewrite_step` (int8: quantized, then rewritten).
Inputs: the engines' real frames (`OfflineInputs`: the calibration recordings through the live
front end), state fed back. Prints and writes p50 / p90 / p99 of each, the ratios, each engine's
max abs error against eager on the probabilities (the engine build checks the face too), and
the load average at the start and the end (BENCHMARKS.md keeps the numbers). Needs the `train`
extra (torch, onnx).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_start = _load()

    import torch

    from streamav.bench.step import _rotation, _timed_step, latency_stats
    from streamav.data import default_model_folder
    from streamav.engines.backends.eager import EagerEngine
    from streamav.engines.backends.onnx import OnnxEngine
    from streamav.engines.choice import EngineChoice
    from streamav.engines.graph_rewrite import REWRITE_RECIPE, rewrite_step
    from streamav.engines.int8_per_stream import quantize_int8_per_stream
    from streamav.engines.shipped import find_shipped_step
    from streamav.model.io import load_model
    from streamav.offline_features import OfflineInputs

    torch.set_num_threads(args.threads)
    folder = default_model_folder()
    model = load_model(folder).float().eval()
    shipped, why = find_shipped_step(folder)
    if shipped is None:
        raise SystemExit(f"no usable step.onnx in {folder}: {why}")
    spec = EngineChoice("onnx", "cpu", args.precision, args.batch)
    scratch = Path(tempfile.mkdtemp(prefix="bench-rewrite-"))
    original = shipped.path
    if args.batch > 1 or args.precision == "int8":  # as the engine cache: a fresh export
        from streamav.engines.export import export_step, write_onnx

        original = write_onnx(export_step(model, args.batch), scratch / "before_fp32.onnx")
    rewritten = scratch / "after_fp32.onnx"
    counts = rewrite_step(original, rewritten)
    files = {"onnx-before": original, "onnx-after": rewritten}
    if args.precision == "int8":
        before = quantize_int8_per_stream(original, scratch / "before.onnx", args.batch)
        rewrite_step(before, scratch / "after.onnx")  # as the engine build: quantize, rewrite
        files = {"onnx-before": before, "onnx-after": scratch / "after.onnx"}
    engines = {"eager": EagerEngine(EngineChoice("eager", "cpu", "fp32", args.batch), model)}
    engines.update({name: OnnxEngine(spec, model, path, threads=args.threads)
                    for name, path in files.items()})
    names = list(engines)

    spectra, faces = OfflineInputs().reference_frames(
        min(1 + args.warmup + args.frames, 2000), scratch / ".calibration")
    states = {n: engines[n].initial_state() for n in names}
    step_ms = {n: [] for n in names}
    probs_out = {n: [] for n in names}
    with torch.inference_mode():
        for t in range(args.warmup + args.frames):
            for j in _rotation(len(names), t):
                name = names[j]
                engine = engines[name]
                ms, probs, states[name] = _timed_step(engine, spectra, faces, t, states[name])
                if t >= args.warmup:
                    step_ms[name].append(ms)
                    probs_out[name].append(probs.numpy().copy())
    load_end = _load()
    stats = {n: latency_stats(np.asarray(step_ms[n])) for n in names}
    report = {
        "what": "onnx step before/after graph rewrites, interleaved with eager",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "frames": args.frames, "warmup": args.warmup, "threads": args.threads,
        "precision": args.precision, "batch": args.batch, "rewrite_recipe": REWRITE_RECIPE,
        "rewrites": counts,
        "load_start": load_start, "load_end": load_end,
        "latency_ms": stats,
        "after_over_before_p50": round(stats["onnx-after"]["p50"] / stats["onnx-before"]["p50"], 4),
        "speedup_vs_eager_p50": {n: round(stats["eager"]["p50"] / stats[n]["p50"], 3)
                                 for n in names},
        "max_abs_probs_vs_eager": {n: float(np.abs(np.stack(probs_out[n])
                                                   - np.stack(probs_out["eager"])).max())
                                   for n in names},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
