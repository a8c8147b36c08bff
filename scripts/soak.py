"""Soak test: N minutes of `streamav live` on a looped clip in real time, measured per row.

    python scripts/soak.py --minutes 10 --out out/soak      # out/soak/soak.json, soak.png
    python scripts/soak.py --ci                              # 60 s, a row every 15 s
    python scripts/soak.py --minutes 10 --check              # exit 1 if the acceptance fails
    python scripts/soak.py --minutes 5 -- --backend eager    # arguments after -- go to live

It starts `streamav live --video CLIP --loop --duration N*60 --no-preview` (the bundled clip by
default) publishing on a free 127.0.0.1 port, subscribes to its `stats`, `emotion` and `face`
messages (raw ZeroMQ + msgpack, the documented wire format) and reads the process's RSS from
/proc/PID/status once a second. Each row (one a minute by default) holds:

    t_end_s        the row's end, s from the run's start (the publisher's clock)
    rss_mb         resident memory at the row's end (peak within the row: rss_peak_mb)
    frames, fps    frames processed in the row, and per second
    dropped        frames dropped in the row (dropped_frames: ring and stale), stale_dropped,
                   publish_dropped (messages), audio_overflows
    latency_ms     p50 and p99 of capture -> receipt here of each `emotion` message (`face`
                   without a model), on the shared monotonic clock; `samples` of them

The summary compares the last row with the first: RSS growth (MB) and the p99 ratio; `--check`
applies the acceptance of a 10-minute soak (growth < 50 MB, last p99 within 20 % of the first).
The PNG plots RSS, fps, drops and p99 against time (matplotlib, Agg).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq
from streamav.host import streamav_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RSS_GROWTH_LIMIT_MB = 50.0
P99_RATIO_LIMIT = 1.2
_STARTUP_TIMEOUT_S = 180.0  # imports, face tracker, the model's engine built on first use


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """The process's resident set size (MB) from /proc, None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


@dataclass
class Observed:
    """What the subscriber and the RSS sampler saw, with times on this machine's monotonic
    clock (the publisher's too)."""

    stats: list[dict] = field(default_factory=list)  # the non-final stats messages
    final: dict | None = None
    latency: list[tuple[float, float]] = field(default_factory=list)  # (t_receive, s)
    latency_topic: str = "emotion"
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MB)
    t_launch: float = 0.0  # when the process was started
    t_exit: float = 0.0  # when it had exited
    lock: threading.Lock = field(default_factory=threading.Lock)


class Subscriber(threading.Thread):
    """stats, emotion and face messages into `Observed` (face latencies are kept apart and used
    only when no emotion ever comes: a run without a model)."""

    def __init__(self, endpoint: str, observed: Observed) -> None:
        super().__init__(name="soak-subscriber", daemon=True)
        self.endpoint = endpoint
        self.observed = observed
        self.face_latency: list[tuple[float, float]] = []
        self.stopped = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        for topic in (b"stats", b"emotion", b"face"):
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(self.endpoint)
        self.ready.set()
        try:
            while not self.stopped.is_set():
                if sock.poll(100):
                    self._take(sock.recv_multipart())
        finally:
            sock.close()

    def _take(self, frames: list[bytes]) -> None:
        t = time.monotonic()
        topic = frames[0].decode()
        body = msgpack.unpackb(frames[1])
        with self.observed.lock:
            if topic == "stats":
                if body.get("final"):
                    self.observed.final = body
                else:
                    self.observed.stats.append(body)
            elif topic == "emotion":
                self.observed.latency.append((t, t - body["t_capture"]))
            elif topic == "face":
                self.face_latency.append((t, t - body["t_capture"]))


def sample_rss(pid: int, observed: Observed, stopped: threading.Event) -> None:
    while not stopped.wait(1.0):
        value = rss_mb(pid)
        if value is None:
            return
        with observed.lock:
            observed.rss.append((time.monotonic(), value))


def run_live(args: argparse.Namespace, out: Path, duration_s: float) -> tuple[int, Observed, str]:
    """Run the looped live process, observing it; returns (exit code, observed, stderr)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    observed = Observed()
    subscriber = Subscriber(endpoint, observed)
    subscriber.start()
    subscriber.ready.wait(5)
    command = [*streamav_command(), "live", "--video", str(args.video), "--loop",
               "--duration", f"{duration_s:g}", "--no-preview", "--publish", endpoint,
               "--control", "none", "--stats-json", str(out / "stats.json"), *args.live_args]
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.setdefault("GLOG_minloglevel", "2")
    log = (out / "live.log").open("w")
    observed.t_launch = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    stopped = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(proc.pid, observed, stopped), daemon=True)
    sampler.start()
    try:
        proc.wait(timeout=duration_s + _STARTUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        observed.t_exit = time.monotonic()
        stopped.set()
        time.sleep(0.3)  # the final messages in flight
        subscriber.stopped.set()
        subscriber.join(5)
        log.close()
    if not observed.latency:  # no model: the face messages' latencies instead
        observed.latency, observed.latency_topic = subscriber.face_latency, "face"
    return proc.returncode, observed, (out / "live.log").read_text()


def _counter(stats: dict, key: str) -> int:
    return int(stats.get(key) or 0)


def make_rows(observed: Observed, duration_s: float, row_s: float) -> list[dict]:
    """One row per `row_s` of the run, from the run's start (the first stats message's
    t_publish less its elapsed_s)."""
    stats = observed.stats
    if not stats:
        return []
    start = stats[0]["t_publish"] - stats[0]["elapsed_s"]
    n_rows = max(1, int(round(duration_s / row_s)))
    rows, previous = [], None
    for k in range(n_rows):
        lo, hi = start + k * row_s, start + (k + 1) * row_s
        inside = [s for s in stats if s["t_publish"] < hi]
        last = inside[-1] if inside else None
        if last is None or (previous is not None and last is previous):
            continue
        rows.append(_row(observed, k, lo, hi, start, previous, last))
        previous = last
    return rows


def _row(observed: Observed, k: int, lo: float, hi: float, start: float, previous: dict | None,
         last: dict) -> dict:
    def delta(key: str) -> int:
        return _counter(last, key) - (_counter(previous, key) if previous else 0)

    elapsed = last["elapsed_s"] - (previous["elapsed_s"] if previous else 0.0)
    latencies = [s * 1000 for t, s in observed.latency if lo <= t < hi]
    rss = [mb for t, mb in observed.rss if lo <= t < hi]
    return {
        "row": k, "t_end_s": round(hi - start, 3),
        "rss_mb": round(rss[-1], 1) if rss else None,
        "rss_peak_mb": round(max(rss), 1) if rss else None,
        "frames": delta("frames"),
        "fps": round(delta("frames") / elapsed, 2) if elapsed > 0 else None,
        "dropped": delta("dropped_frames"), "stale_dropped": delta("stale_dropped"),
        "publish_dropped": delta("publish_dropped"), "audio_overflows": delta("audio_overflows"),
        "latency_ms": {"p50": _percentile(latencies, 50), "p99": _percentile(latencies, 99),
                       "samples": len(latencies)},
    }


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def timing(observed: Observed) -> dict:
    """Seconds from the launch to the run's start (imports, face tracker, model and engine)
    and from the run's end to the process's exit."""
    if not observed.stats:
        return {"startup_s": None, "shutdown_s": None}
    start = observed.stats[0]["t_publish"] - observed.stats[0]["elapsed_s"]
    end = (observed.final["t_publish"] if observed.final else observed.stats[-1]["t_publish"])
    return {"startup_s": round(start - observed.t_launch, 2),
            "shutdown_s": round(observed.t_exit - end, 2)}


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {"rows": 0}
    first, last = rows[0], rows[-1]
    growth = (None if first["rss_mb"] is None or last["rss_mb"] is None
              else round(last["rss_mb"] - first["rss_mb"], 1))
    p99_first, p99_last = first["latency_ms"]["p99"], last["latency_ms"]["p99"]
    ratio = (round(p99_last / p99_first, 3) if p99_first and p99_last is not None else None)
    return {"rows": len(rows), "rss_growth_mb": growth, "p99_first_ms": p99_first,
            "p99_last_ms": p99_last, "p99_ratio": ratio,
            "frames": sum(r["frames"] for r in rows), "dropped": sum(r["dropped"] for r in rows),
            "stale_dropped": sum(r["stale_dropped"] for r in rows),
            "mean_fps": round(float(np.mean([r["fps"] for r in rows if r["fps"] is not None])), 2)}


def acceptance(summary: dict) -> list[str]:
    """What fails the acceptance of a soak (an empty list: it passed)."""
    problems = []
    growth = summary.get("rss_growth_mb")
    if growth is None or growth >= RSS_GROWTH_LIMIT_MB:
        problems.append(f"RSS growth {growth} MB (limit {RSS_GROWTH_LIMIT_MB:g})")
    ratio = summary.get("p99_ratio")
    if ratio is None or ratio > P99_RATIO_LIMIT:
        problems.append(f"last p99 / first p99 = {ratio} (limit {P99_RATIO_LIMIT:g})")
    return problems


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    minutes = [r["t_end_s"] / 60 for r in rows]
    series = [("RSS (MB)", [r["rss_mb"] for r in rows]), ("fps", [r["fps"] for r in rows]),
              ("dropped frames", [r["dropped"] for r in rows]),
              ("p99 latency (ms)", [r["latency_ms"]["p99"] for r in rows])]
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 8), sharex=True)
    for ax, (label, values) in zip(axes, series):
        ax.plot(minutes, [math.nan if v is None else v for v in values], marker="o")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("minutes into the run (each point: the row ending there)")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    live_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, live_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--row-s", type=float, default=60.0, help="seconds per row")
    parser.add_argument("--video", type=Path, default=None,
                        help="clip to loop (default: the bundled CREMA-D clip)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "soak")
    parser.add_argument("--ci", action="store_true", help="60 s, a row every 15 s")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when RSS grows >= 50 MB or the last p99 > 1.2 x the first")
    args = parser.parse_args(argv)
    if args.ci:
        args.minutes, args.row_s = 1.0, 15.0
    if not (args.minutes > 0 and args.row_s > 0):
        parser.error("--minutes and --row-s must be > 0")
    if args.video is None:
        sys.path.insert(0, str(REPO))
        from streamav.data import demo_clip_path

        args.video = demo_clip_path()
    args.live_args = live_args
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    duration_s = args.minutes * 60.0
    code, observed, log_text = run_live(args, out, duration_s)
    rows = make_rows(observed, duration_s, args.row_s)
    summary = summarize(rows)
    report = {"video": str(args.video), "minutes": args.minutes, "row_s": args.row_s,
              "live_args": args.live_args, "exit_code": code, **timing(observed),
              "latency_topic": observed.latency_topic, "rows": rows, "summary": summary,
              "final_stats": observed.final}
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        plot(rows, out / "soak.png", f"soak: {Path(args.video).name} looped, "
                                     f"{args.minutes:g} min")
    print(json.dumps(summary))
    if code != 0:
        print(f"soak: streamav live exited {code}; its log: {out / 'live.log'}\n"
              + "\n".join(log_text.splitlines()[-5:]), file=sys.stderr)
        return 2
    if args.check:
        problems = acceptance(summary)
        for problem in problems:
            print(f"soak: FAILED: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
