"""`streamav bench`: the model step on every backend, and the live path, measured (docs/bench.md).

- `step.py`: every engine opened (cold start timed), warmed up, then stepped frame after frame
  *interleaved* (each backend once per frame, in a rotating order) on real inputs, with the
  host→device copy, the outputs' copy back and a synchronise inside the timed region;
- `pipeline.py`: the live path (`streamav live` on a file: front end and model stage) with every
  stage's latency;
- `streams.py`: many streams in one process (`--pipeline --streams N|auto`), each in real
  time: per-stream latency and drops, the process's CPU per frame, the largest N that holds;
- `machine.py`: the machine, library versions, GPU and model that a result belongs to;
- `report.py`: the rich tables, the JSON file and the latency plot.

Each writes one JSON document,
`{"schema": "streamav-bench/1", "kind": "step" | "pipeline" | "streams", ...}`.
"""

from __future__ import annotations

SCHEMA = "streamav-bench/1"
FPS = 30.0
BUDGET_MS = 1000.0 / FPS  # one frame at 30 fps: every step must fit in it

__all__ = ["SCHEMA", "FPS", "BUDGET_MS", "run_bench_command"]


def run_bench_command(**options) -> None:
    """What `streamav bench` does with its options (kept here so the CLI stays thin)."""
    from streamav.bench.command import run

    run(**options)
