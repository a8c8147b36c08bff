"""What a live frame costs, in two source trees side by side (#13 "a cheaper frame").

    git worktree add --detach /tmp/base 3dedf2f     # the tree before a change
    python scripts/frame_cost.py --tree /tmp/base --tree . --rounds 3 --seconds 10 \\
        --json frame_cost.json

Each tree runs in its own processes (PYTHONPATH=TREE), the trees alternating round by round
(A B, then B A, ...) so that both see the same load over the same minutes; the numbers of a
tree are the median over its rounds, and every tree is given as a ratio to the first.

- `live`: `streamav live` on the bundled demo clip in real time (looped, --seconds, no
  preview, a free loopback port): the process's CPU time per frame from capture start to the
  end (every thread), fps, drops, capture-to-publish/emotion p50 and p99, the engine, and
  whether torch was imported during the run;
- `parts`: microbenchmarks of the pieces changed (microseconds per call, best of 5;
  `front_parts` says what the face and message ones time):
  `slot_step` a SlotRunner step of one stream around an engine that returns ready arrays (the
  copies and the non-finite guard, no model), `ring_window_*` an AudioRing window read with the
  frame's time 0, 40 and 300 audio blocks behind the newest, and `engine_run` the runner's
  engine for the CPU default (open_batch_engine(auto)) on real-shaped inputs;
- `streams`: `streamav bench --pipeline --streams N` (--streams-n, default 2) for --seconds: the
  process's CPU per frame, drops, fps, capture-to-emotion p50/p99, rows per tick (trees from
  c899da5 on, which have it).

The machine may be shared: the load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_live(seconds: float) -> dict:
    from streamav.bench.pipeline import free_endpoint
    from streamav.config import load_config
    from streamav.data import demo_clip_path
    from streamav.live import build_pipeline

    config = load_config(None, {
        "source.video": str(demo_clip_path()), "source.loop": True, "run.realtime": True,
        "run.preview": False, "run.duration_s": seconds, "publish.endpoint": free_endpoint(),
        "publish.control_endpoint": "none"})
    mark: dict = {}
    pipeline = build_pipeline(config, on_started=lambda: mark.setdefault(
        "cpu", time.process_time()))
    torch_before = "torch" in sys.modules
    final = pipeline.run().final_stats
    cpu_s = time.process_time() - mark["cpu"]
    latency = final["latency_ms"]
    return {"frames": final["frames"], "fps": round(final["fps"], 3),
            "dropped_frames": final["dropped_frames"], "engine": final.get("model_engine"),
            "cpu_ms_per_frame": round(cpu_s * 1e3 / max(final["frames"], 1), 3),
            "capture_to_publish_p50": latency["capture_to_publish"]["p50"],
            "capture_to_publish_p99": latency["capture_to_publish"]["p99"],
            "capture_to_emotion_p50": latency["capture_to_emotion"]["p50"],
            "capture_to_emotion_p99": latency["capture_to_emotion"]["p99"],
            "torch_imported_at_build": torch_before, "torch_imported": "torch" in sys.modules}


def child_streams(n: int, seconds: float) -> dict:
    from rich.console import Console

    from streamav.bench.pipeline import resolve_clips
    from streamav.bench.streams import StreamsSettings, run_streams_bench

    document = run_streams_bench(StreamsSettings(clips=resolve_clips(None, True), streams=n,
                                                 seconds=seconds), Console(stderr=True),
                                 progress=False)
    run = document["runs"][0]
    per = run["per_stream"]
    return {"holds": run["holds"], "cpu_ms_per_frame": run["process_cpu"]["cpu_ms_per_frame"],
            "cores_busy": run["process_cpu"]["cores_busy"],
            "dropped_frames": sum(x["dropped_frames"] or 0 for x in per),
            "fps_min": min(x["fps"] for x in per),
            "capture_to_emotion_p50": run["capture_to_emotion_ms"]["p50"],
            "capture_to_emotion_p99": run["capture_to_emotion_ms"]["p99"],
            "rows_per_tick": run.get("rows_per_tick")}


def _best_us(fn, number: int) -> float:
    import timeit

    return round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 3)


def child_parts() -> dict:
    import numpy as np

    from streamav.data import default_model_folder
    from streamav.engines.choice import EngineChoice
    from streamav.model_runner import open_batch_engine
    from streamav.ring import AudioRing
    from streamav.stream_slots import SlotRunner

    rng = np.random.default_rng(0)
    engine = open_batch_engine(default_model_folder(), EngineChoice(), threads=1)
    spectrum = rng.random((1, 513), np.float32)
    face = rng.random((1, 3, 64, 64), np.float32) - 0.5
    state = engine.initial_state()
    outputs, next_state = engine.run(spectrum, face, state)
    out = {"engine": engine.label,
           "engine_run": _best_us(lambda: engine.run(spectrum, face, state), 50)}

    class Ready:  # the engine's interface, its outputs made once: the runner's own cost
        label, labels, batch = "ready", ("x",), 1

        def initial_state(self):
            return tuple(s.copy() for s in state)

        def run(self, spectrum, face, state_in):
            return outputs, next_state

    handle = SlotRunner(Ready(), 1).join()
    out["slot_step"] = _best_us(lambda: handle.step(spectrum, face), 2000)
    out.update(front_parts(engine, outputs, next_state, state))
    for behind in (0, 40, 300):
        ring = AudioRing(16000 * 10, 16000, blocking=False)
        t, times = 0, []
        for _ in range(3000):  # the anchors (1024 kept) and the buffer have wrapped
            ring.write(t, rng.random(533, np.float32))
            times.append(t)
            t += int(533 / 16000 * 1e9)
        t_frame = times[-1 - behind] + 1000
        out[f"ring_window_{behind}"] = _best_us(lambda: ring.window_ending_at(t_frame, 1024),
                                                2000)
    return out


def front_parts(engine, outputs, next_state, state) -> dict:
    """The worker's Python glue around the native parts, on a real frame of the demo clip (an
    offline run of 30 frames gives the face, the spectrum and the model's messages):
    `face_mesh_px` MediaPipe's landmarks to source pixels, `face_align` the five points, the
    similarity, the crop and the face's fields, `face_message` the `face` message,
    `pack_messages` the frame's four messages packed (rounded, encoded, checked), and
    `model_stage_glue` a ModelStage step around an engine that returns ready arrays (the input
    and output conversions, the runner, the emotion features and estimator, the messages)."""
    import cv2

    from streamav.bench.pipeline import free_endpoint
    from streamav.config import load_config
    from streamav.data import default_model_folder, demo_clip_path
    from streamav.frontend.face import FaceFrontEnd, mesh_in_crop
    from streamav.live import build_pipeline
    from streamav.model_stage import ModelStage
    from streamav.pipeline import face_message
    from streamav.stream_slots import SlotRunner
    from streamav.wire import protocol

    got: list = []
    config = load_config(None, {
        "source.video": str(demo_clip_path()), "run.realtime": False, "run.preview": False,
        "run.max_frames": 30, "publish.endpoint": free_endpoint(),
        "publish.control_endpoint": "none"})
    build_pipeline(config, on_frame=got.append).run()
    result = [r for r in got if r.model is not None][-1]
    face, frame, model = result.face, result.frame, result.model
    front = FaceFrontEnd()
    front.start()
    image_rgb = cv2.cvtColor(frame.image_bgr, cv2.COLOR_BGR2RGB)
    landmarks = front._mesh.process(image_rgb).multi_face_landmarks[0]
    height, width = image_rgb.shape[:2]
    mesh_xy = FaceFrontEnd._mesh_px(landmarks, width, height)
    out = {"face_mesh_px": _best_us(lambda: FaceFrontEnd._mesh_px(landmarks, width, height),
                                    2000),
           "face_align": _best_us(lambda: front._aligned(image_rgb, mesh_xy), 1000),
           "face_message": _best_us(lambda: face_message(face, frame), 2000)}
    front.stop()
    messages = (face_message(face, frame), model.emotion, model.denoised, model.latent)
    out["pack_messages"] = _best_us(lambda: [protocol.pack_message(m) for m in messages], 2000)

    class Ready:  # the engine's interface, its outputs made once
        label, labels, batch = "ready", ("x",), 1

        def initial_state(self):
            return tuple(s.copy() for s in state)

        def run(self, spectrum, face_in, state_in):
            return outputs, next_state

    stage = ModelStage(default_model_folder(), slot=SlotRunner(Ready(), 1).join())
    stage.start()
    crop, spectrum, mesh_crop = face.crop_rgb, result.spectrum, mesh_in_crop(face)
    out["model_stage_glue"] = _best_us(lambda: stage.step(crop, spectrum, 7, mesh_crop), 1000)
    return out


def run_child(tree: Path, kind: str, seconds: float, streams_n: int = 2) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.setdefault("STREAMAV_ENGINE_DIR", str(ROOT / "engines"))
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind,
                             "--seconds", str(seconds), "--streams-n", str(streams_n)],
                            env=env, capture_output=True,
                            text=True, cwd="/tmp", timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{tree} {kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_of(rows: list[dict]) -> dict:
    out = {}
    for key, value in rows[0].items():
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))
                  and not isinstance(r.get(key), bool)]
        out[key] = round(statistics.median(values), 3) if len(values) == len(rows) else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a source tree (repeat)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kinds", default="parts,live")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--streams-n", type=int, default=2, help="streams of the `streams` kind")
    parser.add_argument("--child", choices=("live", "parts", "streams"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_live(args.seconds) if args.child == "live" else child_parts()
                         if args.child == "parts" else child_streams(args.streams_n,
                                                                     args.seconds)))
        return
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    kinds = args.kinds.split(",")
    load_start = os.getloadavg()
    rows: dict = {kind: {str(t): [] for t in trees} for kind in kinds}
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        for kind in kinds:
            for tree in order:
                rows[kind][str(tree)].append(run_child(tree, kind, args.seconds,
                                                       args.streams_n))
                print(f"round {r + 1} {kind} {tree}: {rows[kind][str(tree)][-1]}",
                      file=sys.stderr)
    result: dict = {"trees": [str(t) for t in trees], "rounds": args.rounds,
                    "seconds": args.seconds, "cpu": os.cpu_count(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "median": {}, "ratio_to_first": {}, "rows": rows}
    for kind in kinds:
        medians = {t: median_of(v) for t, v in rows[kind].items()}
        result["median"][kind] = medians
        first = medians[str(trees[0])]
        result["ratio_to_first"][kind] = {
            t: {k: round(v / first[k], 3) for k, v in m.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                and isinstance(first.get(k), (int, float)) and first[k]}
            for t, m in medians.items()}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps({"median": result["median"], "ratio_to_first": result["ratio_to_first"],
                      "load": [result["load_average_start"], result["load_average_end"]]},
                     indent=1))


if __name__ == "__main__":
    main()
