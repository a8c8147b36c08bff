"""Where a live frame's CPU goes, by stage and function, in thread CPU time (#13 "a cheaper frame").

    python scripts/frame_profile.py --seconds 30              # the demo clip in real time
    python scripts/frame_profile.py --offline --frames 600    # every frame, as fast as it can

Runs `streamav live` on the bundled demo clip (looped, no preview, a free loopback port) with
the stages' functions wrapped: each call's thread CPU time (`time.thread_time_ns`, so waits
for a lock, the GIL or a core are not counted), inclusive and exclusive of the other wrapped
calls under it. The ONNX Runtime step (`Session.run`) and MediaPipe's `process` are wrapped as
the native parts; everything else in the worker is Python glue (numpy and OpenCV calls
included). Each thread's own CPU comes from /proc/self/task/TID/schedstat between capture start
and the end (MediaPipe's and ONNX Runtime's native threads included), so the table adds up
to the process's CPU per frame. The wrappers cost ~1-2 us a call (two clock reads); they
are counted in their caller's exclusive time.

`--json PATH` writes the table. Absolute times on a shared machine are inflated by its load
(recorded at the start and the end); compare parts within one run.
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

# (module, attribute path, label): the worker's stages, then the publisher thread's.
WRAPPED = (
    ("streamav.pipeline", "LivePipeline._process", "frame: _process (whole)"),
    ("streamav.ring", "VideoRing._read_frame", "video ring read (frame copy)"),
    ("streamav.pipeline", "LivePipeline._frame_audio", "audio: window + spectrum + level"),
    ("streamav.ring", "AudioRing.window_ending_at", "audio: ring window"),
    ("streamav.frontend.spectrum", "CausalPowerSpectrum.step", "audio: power spectrum"),
    ("streamav.frontend.face", "FaceFrontEnd.step", "face: FaceFrontEnd.step"),
    ("mediapipe.python.solution_base", "SolutionBase.process", "face: MediaPipe process (native)"),
    ("streamav.frontend.face", "FaceFrontEnd._mesh_px", "face: landmarks to array"),
    ("streamav.frontend.face", "FaceFrontEnd._aligned", "face: align (fit + box + result)"),
    ("streamav.frontend.face", "warp_to_crop", "face: warp to 64x64 crop"),
    ("streamav.pipeline", "face_message", "msg: face_message build"),
    ("streamav.pipeline", "mesh_in_crop", "model: mesh_in_crop"),
    ("streamav.model_stage", "ModelStage.step", "model: ModelStage.step"),
    ("streamav.model_stage", "face_to_model", "model: face_to_model"),
    ("streamav.stream_slots", "SlotHandle.step", "model: runner step (slot)"),
    ("onnxruntime.capi.onnxruntime_inference_collection", "Session.run",
     "model: ORT Session.run (native)"),
    ("streamav.stream_slots", "finite_rows", "model: non-finite guard"),
    ("streamav.model_stage", "frame_features", "emotion: frame_features"),
    ("streamav.emotion.features", "geometry_features", "emotion: geometry_features"),
    ("streamav.emotion.features", "prosody_features", "emotion: prosody_features"),
    ("streamav.emotion.estimator", "EmotionStream.step", "emotion: EmotionStream.step"),
    ("streamav.emotion.events", "EmotionChangeDetector.step", "emotion: change detector"),
    ("streamav.model_stage", "_floats", "msg: _floats (latent/probs tuples)"),
    ("streamav.pipeline", "LivePipeline._publish_model", "publish: model messages"),
    ("streamav.wire.publisher", "Publisher.publish", "publish: Publisher.publish"),
    ("streamav.wire.protocol", "pack_message", "publish: pack_message (round + msgpack)"),
    ("streamav.wire.publisher", "Publisher._enqueue", "publish: enqueue (lock, queue, notify)"),
    ("streamav.run_stats", "RunStats.frame_done", "stats: frame_done"),
    ("streamav.latency", "StageLatencies.record_ns", "stats: record_ns"),
    ("streamav.pipeline", "LivePipeline._send_stats", "stats: _send_stats (1/s)"),
    ("streamav.wire.publisher", "Publisher._send", "publisher thread: _send"),
    ("streamav.wire.protocol", "pack_map", "publisher thread: pack_map (envelope)"),
)


class Meter:
    """Thread-CPU time per wrapped function, inclusive and exclusive of wrapped callees."""

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()
        self.incl_ns: collections.Counter = collections.Counter()
        self.excl_ns: collections.Counter = collections.Counter()
        self.on = False
        self._local = threading.local()

    def wrap(self, fn, label: str):
        clock = time.thread_time_ns
        local = self._local

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            stack.append(0)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = clock() - t0
                children = stack.pop()
                if stack:
                    stack[-1] += spent
                self.calls[label] += 1
                self.incl_ns[label] += spent
                self.excl_ns[label] += spent - children
        return wrapper

    def install(self) -> None:
        for module_name, path, label in WRAPPED:
            module = importlib.import_module(module_name)
            owner_path, _, name = path.rpartition(".")
            owner = functools.reduce(getattr, owner_path.split("."), module) if owner_path \
                else module
            raw = owner.__dict__.get(name)
            if raw is None:  # a tree from before that function: its cost is its caller's
                continue
            if isinstance(raw, staticmethod):
                setattr(owner, name, staticmethod(self.wrap(raw.__func__, label)))
            else:
                setattr(owner, name, self.wrap(raw, label))


def thread_cpu_ns(names: dict[int, str]) -> dict[int, tuple[str, int]]:
    """Every thread of this process: tid -> (name, CPU ns so far); Python threads by their
    Python name, native ones (MediaPipe's graph, FFmpeg's decoders, ONNX Runtime's pool) by
    their kernel name (comm), e.g. "native: python"."""
    names.update({t.native_id: t.name for t in threading.enumerate()})
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue
        if int(tid) not in names:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
            names[int(tid)] = f"native: {comm}"
        out[int(tid)] = (names[int(tid)], ns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="real time: run length")
    parser.add_argument("--offline", action="store_true", help="every frame, not real time")
    parser.add_argument("--frames", type=int, default=600, help="offline: frames")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from streamav.bench.pipeline import free_endpoint
    from streamav.config import load_config
    from streamav.data import demo_clip_path
    from streamav.live import build_pipeline

    meter = Meter()
    meter.install()
    overrides = {"source.video": str(demo_clip_path()), "source.loop": True,
                 "run.realtime": not args.offline, "run.preview": False,
                 "publish.endpoint": free_endpoint(), "publish.control_endpoint": "none"}
    if args.offline:
        overrides["run.max_frames"] = args.frames
    else:
        overrides["run.duration_s"] = args.seconds
    config = load_config(None, overrides)
    mark: dict = {}
    names: dict[int, str] = {}

    def started() -> None:
        mark["threads"] = thread_cpu_ns(names)
        mark["cpu_s"] = time.process_time()
        meter.on = True

    load_start = os.getloadavg()
    pipeline = build_pipeline(config, on_started=started)
    work_loop = pipeline._work_loop

    def work_loop_then_mark() -> None:  # the worker's last act: every thread still there
        work_loop()
        mark["threads_end"] = thread_cpu_ns(names)

    pipeline._work_loop = work_loop_then_mark
    final = pipeline.run().final_stats
    meter.on = False
    cpu_s = time.process_time() - mark["cpu_s"]
    frames = max(final["frames"], 1)
    after = mark["threads_end"]
    threads: collections.Counter = collections.Counter()
    for tid, (name, ns) in after.items():
        threads[name] += ns - mark["threads"].get(tid, (name, 0))[1]
    per_frame = lambda ns: round(ns / 1e6 / frames, 4)  # noqa: E731
    result = {
        "mode": "offline" if args.offline else "realtime", "frames": final["frames"],
        "fps": round(final["fps"], 2), "dropped_frames": final["dropped_frames"],
        "engine": final.get("model_engine"),
        "process_cpu_ms_per_frame": round(cpu_s * 1e3 / frames, 3),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "threads_ms_per_frame": {k: per_frame(v) for k, v in threads.most_common() if v},
        "parts": {label: {"calls_per_frame": round(meter.calls[label] / frames, 2),
                          "incl_ms": per_frame(meter.incl_ns[label]),
                          "excl_ms": per_frame(meter.excl_ns[label])}
                  for _, _, label in WRAPPED if meter.calls[label]},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['mode']}: {result['frames']} frames, {result['fps']} fps, dropped "
          f"{result['dropped_frames']}, process CPU {result['process_cpu_ms_per_frame']} ms/frame, "
          f"load {result['load_average_start']} -> {result['load_average_end']}")
    print("threads (ms CPU / frame):")
    for name, ms in result["threads_ms_per_frame"].items():
        print(f"  {ms:8.3f}  {name}")
    print(f"  {'incl ms':>8} {'excl ms':>8} {'calls':>6}  part (per frame)")
    for label, row in result["parts"].items():
        print(f"  {row['incl_ms']:8.3f} {row['excl_ms']:8.3f} {row['calls_per_frame']:6.2f}"
              f"  {label}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
