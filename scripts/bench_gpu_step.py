#!/usr/bin/env python3
"""The step benchmark at several batch sizes in one process, for a GPU lease (issue 13, item 6).

    python scripts/bench_gpu_step.py --device cuda --batches 1,64,256,1024 \
        --frames 2000,1000,500,300 --json gpu_step.json

Each batch size is one `streamav bench` step run (the same code: backends interleaved frame by
frame, eager the reference, probabilities compared with eager's), so p50 / p99 / streams at
30 fps read exactly as in `streamav bench`'s table. The backends default to every one that can
run here on the device: eager, compile (CUDA graphs on cuda) and onnx when this ONNX Runtime has
the CUDA execution provider. It imports only the model, the engines and the bench (no camera,
MediaPipe, PyAV or ZeroMQ), so it runs from a checkout with `PYTHONPATH=.` on a machine that has
PyTorch, numpy, rich and safetensors - a GPU machine's own image, say.

`--cudnn-benchmark` and `--tf32` set those torch flags for the whole run (the engines leave
them to the host). The combined JSON keeps every run's document (`runs`), the device's name and
the load average.
BENCHMARKS.md ("GPU") keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def default_backends(device: str) -> str:
    """eager and compile always; onnx where ONNX Runtime can run on `device`."""
    from streamav.errors import StreamavError

    names = ["eager", "compile"]
    try:
        from streamav.engines.backends.onnx import providers_for

        providers_for(device)
        names.append("onnx")
    except (ImportError, StreamavError) as error:  # no onnxruntime, or no CUDA provider
        print(f"bench_gpu_step: onnx left out: {error}", file=sys.stderr)
    return ",".join(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,64,256,1024")
    parser.add_argument("--frames", default="2000,1000,500,300",
                        help="measured frames per batch size (one value: the same for all)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--backends", default=None, help="default: eager,compile[,onnx]")
    parser.add_argument("--inputs", type=Path, default=None,
                        help="an .npz of spectra and faces (e.g. engines/.calibration/"
                             "calibration-*.npz, carried to a GPU machine); default: the "
                             "calibration set through the front end")
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: the shipped model)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms "
                             "for each shape first)")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 tensor cores for fp32 matmuls too (torch's default: for "
                             "convolutions only)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from rich.console import Console

    from streamav.bench import report
    from streamav.bench.step import StepSettings, parse_backends, run_step_bench

    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    batches = _int_list(args.batches)
    frames = _int_list(args.frames)
    frames = frames * len(batches) if len(frames) == 1 else frames
    if len(frames) != len(batches):
        parser.error("--frames: one value, or one per batch size")
    backends_text = args.backends or default_backends(args.device)
    console = Console(stderr=True)
    out = Console(width=200)  # the whole table, also where stdout is not a terminal
    combined: dict = {"script": "scripts/bench_gpu_step.py", "argv": sys.argv[1:],
                      "backends": backends_text, "cudnn_benchmark": args.cudnn_benchmark,
                      "tf32": args.tf32, "runs": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for batch, n in zip(batches, frames):
        started = time.perf_counter()
        settings = StepSettings(backends=parse_backends(backends_text, args.device, batch),
                                device=args.device, batch=batch, frames=n, warmup=args.warmup,
                                inputs_file=args.inputs, model_folder=args.model)
        try:
            document, _ = run_step_bench(settings, console, progress=False)
        except Exception:  # one backend failing must not cost the lease the others' numbers
            console.print_exception()
            if backends_text == "eager":
                raise
            console.print(f"bench_gpu_step: batch {batch}: {backends_text} failed; eager alone")
            settings = replace(settings, backends=parse_backends("eager", args.device, batch))
            document, _ = run_step_bench(settings, console, progress=False)
            document["failed_backends"] = backends_text
        report.print_step_table(document, out)
        document["wall_s"] = round(time.perf_counter() - started, 1)
        combined["runs"].append(document)
        args.json.write_text(json.dumps(combined, indent=1))  # kept after every batch size
        console.print(f"bench_gpu_step: batch {batch} done in {document['wall_s']} s; "
                      f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
