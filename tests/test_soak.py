"""Long runs (#12 item 8): `--loop` plays a file again with times that go on, and
`scripts/soak.py --ci` runs 60 s of a looped real-time `streamav live` (the real model, ZeroMQ on
127.0.0.1) and writes its per-row JSON and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, cli_env
from streamav.data import demo_clip_path
from streamav.sources.media_file import MediaFileSource


class PassCounter:
    """An AVSink that keeps only times and sizes (a looped source never ends) and stops the
    source after `passes` passes of its video."""

    def __init__(self, passes: int, frames_per_pass: int) -> None:
        self.video: list[tuple[int, int, float]] = []  # (seq, t_capture_ns, pts_s)
        self.audio: list[tuple[int, int, int]] = []  # (seq, t_capture_ns, samples)
        self.enough = threading.Event()
        self._limit = passes * frames_per_pass
        self.statuses: list[tuple[str, str]] = []

    def write_video(self, seq, t_capture_ns, image_bgr, pts_s, decode_ns=0) -> None:
        self.video.append((seq, t_capture_ns, pts_s))
        if len(self.video) >= self._limit:
            self.enough.set()

    def write_audio(self, seq, t_capture_ns, samples) -> None:
        self.audio.append((seq, t_capture_ns, int(samples.shape[0])))

    def audio_overflow(self, count: int = 1) -> None:
        pass

    def video_stale(self, count: int = 1) -> None:
        pass

    def end_of_stream(self, kind: str) -> None:
        pass

    def status(self, state: str, reason: str = "") -> None:
        self.statuses.append((state, reason))


def test_loop_plays_the_file_again_with_times_and_seqs_that_go_on():
    source = MediaFileSource(str(demo_clip_path()), realtime=False, anchor_ns=0, loop=True)
    period_s = source.loop_period_s
    assert period_s is not None and 1.85 < period_s < 1.95  # the longest stream's end
    sink = PassCounter(passes=3, frames_per_pass=56)
    source.start(sink)
    assert sink.enough.wait(60)
    source.stop()
    assert source.error() is None and sink.statuses == []
    seqs = [s for s, _, _ in sink.video]
    times = np.array([t for _, t, _ in sink.video]) / 1e9
    assert seqs == list(range(len(seqs)))
    assert np.all(np.diff(times) > 0)
    first_pass = times[:56]
    for k in (1, 2):  # each pass is the first one, one period later, frame for frame
        assert np.allclose(times[56 * k:56 * (k + 1)], first_pass + k * period_s, atol=1e-6)
    # the audio: one continuous stream, each block starting where the previous one ended
    audio_seqs = [s for s, _, _ in sink.audio]
    assert audio_seqs == list(range(len(audio_seqs)))
    starts = np.array([t for _, t, _ in sink.audio]) / 1e9
    ends = starts + np.array([n for _, _, n in sink.audio]) / 16_000
    assert np.all(starts[1:] >= ends[:-1] - 1e-4)  # never overlapping, never going back
    gaps = starts[1:] - ends[:-1]
    assert gaps.max() < 0.05  # at the seams: at most the little the audio is shorter
    assert ends[-1] > 2 * period_s  # several passes of audio too


def test_soak_ci_writes_a_row_every_15_s_with_sane_values(tmp_path):
    out = tmp_path / "soak"
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "soak.py"), "--ci",
                          "--out", str(out)], capture_output=True, text=True, env=cli_env(),
                         timeout=150)
    elapsed = time.monotonic() - t0
    assert run.returncode == 0, run.stderr + (out / "live.log").read_text()
    report = json.loads((out / "soak.json").read_text())
    rows = report["rows"]
    assert report["exit_code"] == 0 and report["minutes"] == 1 and report["row_s"] == 15
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert [r["t_end_s"] for r in rows] == [15, 30, 45, 60]
    for row in rows:
        assert 100 < row["rss_mb"] <= row["rss_peak_mb"] < 4000, row
        assert 10 < row["fps"] < 31, row  # a 29.97 fps clip in real time, on a busy CPU
        assert row["frames"] == pytest.approx(row["fps"] * 15, rel=0.2)
        for key in ("dropped", "stale_dropped", "publish_dropped", "audio_overflows"):
            assert isinstance(row[key], int) and row[key] >= 0, (key, row)
        assert row["stale_dropped"] <= row["dropped"]
        latency = row["latency_ms"]
        assert latency["samples"] > 100  # the model's emotion, frame after frame
        assert 0 < latency["p50"] <= latency["p99"] < 600, row  # within the 0.5 s bound
    assert report["latency_topic"] == "emotion"
    final = report["final_stats"]
    assert final["final"] is True and final["frames"] > 56 * 10  # the 1.9 s clip, looped
    summary = report["summary"]
    assert summary["rows"] == 4 and abs(summary["rss_growth_mb"]) < 200
    assert summary["p99_ratio"] > 0
    png = (out / "soak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stop_reason"] == "duration reached" and stats["config"]["source"]["loop"]
    # 60 s of soak plus ~10 s around it (start-up with a cached engine: ~6 s; the first run
    # in a fresh engine folder builds the model's engine, ~10 s more on 2 busy cores)
    assert 60 < elapsed < 120, elapsed
    assert 0 < report["startup_s"] < 60 and 0 < report["shutdown_s"] < 5, report
