"""`streamav bench --serve [--streams N|auto] [--replicas R]`: streams through `streamav serve`.

What is measured is the serve path alone: capture client -> ingress -> model replica -> PUB
edge. The front end is not in it (each capture client runs its own, on its own machine): the
frames' model inputs (face crop, spectrum, mesh) are made once from a clip (the bundled demo
clip by default) by the live front end, and a synthetic client sends N streams of them at 30
fps each, stamping each frame's capture time as it sends it. A subscriber on the PUB edge reads
every `emotion` message: per stream, the frames that came back, the `seq` gaps (lost frames)
and the latency from send to receipt (p50, p99). The first WARMUP_S seconds of a run (joins,
first batches) are not counted.

Ray runs on this machine (`ray.init`), the model deployment with R replicas of
ceil(N / R) slots each (a new deployment per N: the slots are the engine's static batch), the
ingress in this process. A run *sustains* 30 fps when every stream got >= FPS_SHARE of 30 fps
back and lost nothing; it *holds* when besides every stream's p99 is <= P99_BOUND_MS, as
`bench --pipeline --streams` says (streamav.bench.streams). `auto` searches the largest N
that sustains 30 fps (N = 1, 2, 4, ... then a bisection), each run's p99 per stream reported;
`largest_holding` is the largest N among the runs made that also held the p99 bound.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamav.bench.machine import envelope, load_average
from streamav.bench.streams import FPS_SHARE, P99_BOUND_MS, search
from streamav.clock import NS_PER_S, now_ns
from streamav.errors import InputError

FPS = 30.0
WARMUP_S = 2.0
DEFAULT_SECONDS = 10.0
AUTO_LIMIT = 64


@dataclass(frozen=True)
class ServeBenchSettings:
    clip: Path
    streams: int | None  # None: auto
    replicas: int = 2
    seconds: float = DEFAULT_SECONDS
    model_folder: Path | None = None
    engine_dir: Path | None = None
    limit: int = AUTO_LIMIT


def validate(settings: ServeBenchSettings) -> None:
    if not settings.seconds > 0:
        raise InputError(f"--seconds must be more than 0, got {settings.seconds}")
    if settings.replicas < 1:
        raise InputError(f"--replicas must be at least 1, got {settings.replicas}")
    if settings.streams is not None and settings.streams > settings.limit:
        raise InputError(f"--streams {settings.streams}: at most {settings.limit}")


def clip_inputs(clip: Path, frames: int = 150) -> list:
    """The model inputs of the clip's frames with a face, by the live front end (offline)."""
    from streamav.config import load_config
    from streamav.frontend.face import mesh_in_crop
    from streamav.live import build_pipeline
    from streamav.serve.frames import FrameInputs

    results = []
    config = load_config(None, {"source.video": str(clip), "run.realtime": False,
                                "run.preview": False, "run.max_frames": frames,
                                "model.enabled": False, "publish.endpoint": "inproc://bench",
                                "publish.control_endpoint": "none"})
    build_pipeline(config, on_frame=results.append).run()
    found = [FrameInputs("x", r.frame.seq, 0, r.face.crop_rgb, r.spectrum, mesh_in_crop(r.face))
             for r in results if r.face.found]
    if not found:
        raise InputError(f"{clip}: no face found in its first {frames} frames")
    return found


class _Edge(threading.Thread):
    """The PUB edge's emotion messages: (stream, seq, t_capture_s, receipt_s)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"emotion")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.rows: list[tuple[str, int, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        from streamav.wire.protocol import decode

        while not self.done.is_set():
            if self.sock.poll(50):
                m = decode(self.sock.recv_multipart())
                if m.topic == "emotion":
                    self.rows.append((m.stream, m.seq, m.t_capture_s, now_ns() / NS_PER_S))
        self.sock.close(linger=0)


def _send(link, inputs: list, n: int, seconds: float) -> dict[str, list[float]]:
    """N streams at FPS each for `seconds`: {stream: send times (s)}."""
    from streamav.serve.frames import FrameInputs, encode_command, encode_frame

    period_ns = int(NS_PER_S / FPS)
    start = now_ns()
    due = [start + (i * period_ns) // n for i in range(n)]
    sent: dict[str, list[float]] = {f"b{i}": [] for i in range(n)}
    end = start + int(seconds * NS_PER_S)
    count = [0] * n
    while True:
        i = int(np.argmin(due))
        if due[i] >= end:
            break
        wait_ns = due[i] - now_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / NS_PER_S)
        stream = f"b{i}"
        base = inputs[(count[i] + 17 * i) % len(inputs)]
        t = now_ns()
        link.send(encode_frame(FrameInputs(stream, count[i], t, base.crop_rgb, base.spectrum,
                                           base.mesh_crop_xy), keep_all=False))
        sent[stream].append(t / NS_PER_S)
        count[i] += 1
        due[i] += period_ns
    for stream in sent:
        link.send(encode_command(stream, "leave"))
    return sent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_n(n: int, settings: ServeBenchSettings, inputs: list, folder: Path) -> dict:
    from ray import serve

    from streamav.serve.app import deploy
    from streamav.serve.client import RemoteLink
    from streamav.serve.deployment import ModelSettings, Placement
    from streamav.serve.ingress import Ingress, IngressSettings

    replicas = min(settings.replicas, n)
    capacity = math.ceil(n / replicas)
    load_start = load_average()
    handle = deploy(ModelSettings(folder=str(folder), capacity=capacity,
                                  engine_dir=str(settings.engine_dir)
                                  if settings.engine_dir else None),
                    Placement(replicas=replicas, num_cpus=0.5), app_name="streamav-bench")
    listen, edge_endpoint = (f"tcp://127.0.0.1:{_free_port()}" for _ in range(2))
    ingress = Ingress(handle, IngressSettings(listen=listen, publish=edge_endpoint))
    edge = _Edge(edge_endpoint)
    link = RemoteLink(listen, wait=False)
    try:
        ingress.start()
        edge.start()
        link.start()
        time.sleep(0.5)  # the subscription reaches the edge
        sent = _send(link, inputs, n, WARMUP_S + settings.seconds)
        time.sleep(1.0)  # the last results
        summary = ingress.summary()
    finally:
        link.close()
        edge.done.set()
        ingress.stop()
        serve.delete("streamav-bench")
    per_stream = []
    for stream, times in sent.items():
        t0 = times[0] + WARMUP_S
        window = [t for t in times if t >= t0]
        got = [(seq, tc, tr) for s, seq, tc, tr in edge.rows if s == stream and tc >= t0 - 1e-6]
        latency_ms = np.array([1000 * (tr - tc) for _, tc, tr in got])
        seqs = sorted(seq for seq, _, _ in got)
        gaps = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else None
        lost = len(window) - len(got)
        per_stream.append({
            "id": stream, "sent": len(window), "received": len(got), "lost": lost,
            "seq_gaps": gaps,
            "fps": round(len(got) / settings.seconds, 2),
            "latency_ms": {"p50": _pct(latency_ms, 50), "p99": _pct(latency_ms, 99)}})
    entry = {"streams": n, "replicas": replicas, "slots_per_replica": capacity,
             "per_stream": per_stream,
             "p99_ms_max": None if any(s["latency_ms"]["p99"] is None for s in per_stream)
             else max(s["latency_ms"]["p99"] for s in per_stream),
             "lost_total": sum(s["lost"] for s in per_stream),
             "ingress": {k: summary[k] for k in ("frames_in", "bad_messages")},
             "load_average_start": load_start, "load_average_end": load_average()}
    entry["holds"], entry["why_not"] = holds(entry)
    entry["sustains"] = not any("p99" not in why for why in entry["why_not"])
    return entry


def _pct(values: np.ndarray, q: float) -> float | None:
    return None if values.size == 0 else round(float(np.percentile(values, q)), 2)


def holds(entry: dict) -> tuple[bool, list[str]]:
    why = []
    for s in entry["per_stream"]:
        if s["fps"] < FPS_SHARE * FPS:
            why.append(f"{s['id']}: {s['fps']} fps < {FPS_SHARE:g} x {FPS:g}")
        if s["lost"] > 0:
            why.append(f"{s['id']}: {s['lost']} lost")
        p99 = s["latency_ms"]["p99"]
        if p99 is None or p99 > P99_BOUND_MS:
            why.append(f"{s['id']}: p99 {p99} ms > {P99_BOUND_MS:g}")
    return not why, why


def run_serve_bench(settings: ServeBenchSettings, console) -> dict:
    """The runs (one N, or the search), in the JSON envelope of `streamav bench`."""
    from streamav.serve import require_serve

    require_serve("streamav bench --serve")
    validate(settings)
    import ray

    from streamav.data import default_model_folder

    folder = Path(settings.model_folder) if settings.model_folder else default_model_folder()
    load_start = load_average()
    console.print(f"streamav bench: the model inputs of {settings.clip} ...")
    inputs = clip_inputs(settings.clip)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        def probe(n: int) -> dict:
            console.print(f"streamav bench: {n} streams through serve for "
                          f"{settings.seconds:g} s ...")
            entry = run_n(n, settings, inputs, folder)
            console.print(
                f"streamav bench: {n} streams: "
                f"{'sustains' if entry['sustains'] else 'does not sustain'} 30 fps, "
                f"{'holds' if entry['holds'] else 'does not hold'} p99 <= {P99_BOUND_MS:g} ms"
                + (f" ({'; '.join(entry['why_not'][:3])})" if entry["why_not"] else "")
                + f", p99 max {entry['p99_ms_max']} ms, load {entry['load_average_end']}")
            # the search runs on "sustains"; "holds" (p99 too) is read off the runs made
            return {**entry, "holds": entry["sustains"], "holds_p99": entry["holds"]}

        largest, runs = search(settings, probe)
    finally:
        if started:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    document = envelope("serve", load_start, None, {
        "clip": str(settings.clip), "seconds": settings.seconds, "warmup_s": WARMUP_S,
        "replicas": settings.replicas, "fps": FPS, "fps_share": FPS_SHARE,
        "p99_bound_ms": P99_BOUND_MS, "limit": settings.limit,
        "asked_streams": settings.streams if settings.streams is not None else "auto",
        "measured": "synthetic client send -> ingress -> replica -> PUB edge receipt"})
    for run in runs:  # back to the names of the module docstring
        run["holds"] = run.pop("holds_p99")
    document["runs"] = runs
    document["largest_sustained"] = largest
    document["largest_holding"] = max((r["streams"] for r in runs if r["holds"]), default=0)
    return document
