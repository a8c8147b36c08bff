"""Faults that are seen (#12 item 4): a decoder that dies stops the run with a `source_failed`
status within a second, network reads time out (and Ctrl-C ends a stalled start-up), and real
time drops stale frames instead of falling behind. Real files made here with PyAV, a real
HTTP server on 127.0.0.1, ZeroMQ on 127.0.0.1, the real face front end."""

from __future__ import annotations

import http.server
import signal
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from conftest import cli_env, default_sigint, free_tcp_port, streamav_command
from media_clips import corrupt_packet, make_clip
from recording_sink import RecordingSink
from streamav.config import load_config
from streamav.data import demo_clip_path
from streamav.errors import InputError, SourceError
from streamav.frontend.face import FaceFrontEnd
from streamav.pipeline import LivePipeline
from streamav.sources.media_file import MediaFileSource
from streamav.wire.publisher import Publisher


class Collector:
    """A raw ZeroMQ SUB socket on a thread: every message's topic, map and arrival time on this
    machine's monotonic clock (the publisher's clock too: same machine)."""

    def __init__(self, endpoint: str, topics=("",)) -> None:
        self.messages: list[tuple[str, dict, float]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(endpoint, topics), daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    def _run(self, endpoint: str, topics) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(50):
                    frames = sock.recv_multipart()
                    t = time.monotonic()
                    self.messages.append((frames[0].decode(), msgpack.unpackb(frames[1]), t))
        finally:
            sock.close()

    def of(self, topic: str) -> list[tuple[dict, float]]:
        return [(m, t) for name, m, t in self.messages if name == topic]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- a decoder that dies ---------------------------------------------------------------------------

def test_corrupt_audio_mid_file_stops_the_run_with_a_status_within_a_second(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", repeat=2)  # 3.8 s, H.264 + AAC
    fault_s = corrupt_packet(clip, "audio", 1.5)
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    collector = Collector(endpoint, topics=("status", "face", "stats"))
    stats_json = tmp_path / "stats.json"
    try:
        run = subprocess.run(
            [*streamav_command(), "live", "--video", str(clip), "--no-model", "--no-preview",
             "--publish", endpoint, "--control", "none", "--stats-json", str(stats_json)],
            capture_output=True, text=True, env=cli_env(), timeout=120)
        time.sleep(0.3)  # the last messages in flight
    finally:
        collector.close()
    assert run.returncode == SourceError.exit_code == 6, run.stderr
    lines = _stderr_lines(run.stderr)
    assert "Traceback" not in run.stderr
    assert len(lines) == 1 and lines[0].startswith("streamav: error: the audio decoder of")
    assert "failed after 1.5" in lines[0] and "damaged" in lines[0]

    faces = collector.of("face")
    assert faces, "no frame was published before the fault"
    # capture time = the run's clock anchor + the frame's media time
    anchors = [m["t_capture"] - m["pts"] for m, _ in faces]
    assert np.ptp(anchors) < 1e-3
    fault_at = anchors[0] + fault_s  # when the damaged packet plays, on the publisher's clock
    failed = [(m, t) for m, t in collector.of("status") if m["state"] == "source_failed"]
    assert len(failed) == 1
    message, received = failed[0]
    assert "audio decoder" in message["reason"]
    assert -0.3 < received - fault_at < 1.0, (received - fault_at)
    # the run stopped there, in order: no frame much after the fault, then stopping + final stats
    assert max(m["pts"] for m, _ in faces) < fault_s + 1.0
    states = [m["state"] for m, _ in collector.of("status")]
    assert states == ["started", "source_failed", "stopping"]
    assert collector.of("stats")[-1][0]["final"] is True
    saved = __import__("json").loads(stats_json.read_text())  # outputs kept up to the fault
    assert saved["stop_reason"].startswith("source failed: the audio decoder")
    assert 0 < saved["stats"]["frames"] < 56 * 2
    assert isinstance(saved["stats"]["stale_dropped"], int)  # --stats-json reports it


# -- network reads time out ------------------------------------------------------------------------

class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    """Sends `fast_bytes` of the file at once, then one byte a second (no length, no ranges:
    a live stream)."""

    data: bytes = b""
    fast_bytes = 0
    connected: threading.Event

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.connected.set()
        self.send_response(200)
        self.send_header("Content-Type", "video/x-flv")
        self.end_headers()
        try:
            self.wfile.write(self.data[:self.fast_bytes])
            self.wfile.flush()
            for i in range(self.fast_bytes, len(self.data)):
                time.sleep(1.0)
                self.wfile.write(self.data[i:i + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


class TrickleServer:
    def __init__(self, data: bytes, fast_bytes: int) -> None:
        handler = type("Handler", (_TrickleHandler,), {"data": data, "fast_bytes": fast_bytes,
                                                       "connected": threading.Event()})
        self.connected = handler.connected
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/clip.flv"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_url_that_trickles_from_the_start_fails_to_open_within_the_timeout():
    server = TrickleServer(demo_clip_path().read_bytes(), fast_bytes=0)
    try:
        t0 = time.monotonic()
        with pytest.raises(InputError, match="no answer within 1 s"):
            MediaFileSource(server.url, realtime=True, read_timeout_s=1.0)
        assert time.monotonic() - t0 < 3.0
    finally:
        server.close()


def test_a_url_that_stalls_mid_stream_fails_the_source_with_a_status():
    data = demo_clip_path().read_bytes()
    server = TrickleServer(data, fast_bytes=len(data) // 3)  # ~0.6 s of media, then 1 B/s
    try:
        source = MediaFileSource(server.url, realtime=False, read_timeout_s=1.0)
        sink = RecordingSink()
        t0 = time.monotonic()
        source.start(sink)
        assert sink.wait_until(lambda s: any(st == "source_failed" for st, _ in s.statuses),
                               timeout_s=10)
        assert time.monotonic() - t0 < 1.0 + 2.0  # the timeout, and the threads' own opens
        assert sink.wait_ended("video", timeout_s=3) and sink.wait_ended("audio", timeout_s=3)
        t0 = time.monotonic()
        source.stop()
        assert time.monotonic() - t0 < 1.0  # nothing left blocked in a read
        assert isinstance(source.error(), SourceError)
        assert "read timeout" in str(source.error())
        reason = next(r for st, r in sink.statuses if st == "source_failed")
        assert "no video data for 1 s" in reason or "no audio data for 1 s" in reason
        assert 0 < len(sink.video) < 56  # what came before the stall was played
    finally:
        server.close()


def test_ctrl_c_ends_a_live_run_stalled_on_a_url(tmp_path):
    """The first open of a URL that trickles 1 B/s (a 30 s timeout): Ctrl-C ends it at once."""
    server = TrickleServer(demo_clip_path().read_bytes(), fast_bytes=0)
    config = tmp_path / "live.toml"
    config.write_text("[source]\nread_timeout_s = 30\n")
    try:
        proc = subprocess.Popen(
            [*streamav_command(), "live", "--video", server.url, "--no-model", "--no-preview",
             "--publish", f"tcp://127.0.0.1:{free_tcp_port()}", "--control", "none",
             "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
            preexec_fn=default_sigint)
        try:
            assert server.connected.wait(60), "streamav never connected"
            time.sleep(0.5)
            assert proc.poll() is None  # stalled in the open
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, stderr
        assert elapsed < 2.0, elapsed
        assert "Traceback" not in stderr
    finally:
        server.close()


def test_stopping_does_not_wait_for_a_read_blocked_on_a_stalled_url(tmp_path):
    """A URL that stopped sending, a 30 s read timeout: stop() (Ctrl-C's way out) returns at
    once; the thread blocked in the read is left to its timeout, and its error is no fault."""
    # MPEG-TS (a live stream's container), 7.6 s: the start-up probes 5 s of it (FFmpeg's
    # analyzeduration), then ~5.9 s play before the server stalls
    data = make_clip(tmp_path / "clip.ts", repeat=4).read_bytes()
    server = TrickleServer(data, fast_bytes=len(data) * 4 // 5)
    try:
        source = MediaFileSource(server.url, realtime=False, read_timeout_s=30.0)
        sink = RecordingSink()
        source.start(sink)
        assert sink.wait_until(lambda s: len(s.video) >= 170, timeout_s=30)
        time.sleep(0.5)  # both threads are now blocked in a read
        assert not sink.ended
        t0 = time.monotonic()
        source.stop()
        assert time.monotonic() - t0 < 1.5
        assert source.error() is None and sink.statuses == []
    finally:
        server.close()


# -- real time stays live --------------------------------------------------------------------------

class SlowDecoder(MediaFileSource):
    """A video decoder at half real time (each decoded frame costs two frame periods): what a
    file too big for the CPU does. Frames the decoder skips (skip_frame) cost nothing."""

    def __init__(self, *args, cost_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cost_s = cost_s

    def _decode(self, container, stream):
        for frame in super()._decode(container, stream):
            time.sleep(self.cost_s)
            yield frame


def test_real_time_drops_stale_frames_to_stay_within_the_bound(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", gop=10, repeat=2)  # 3.8 s, a key frame each 1/3 s
    bound_s = 0.3
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = load_config(None, {"source.video": str(clip), "source.no_audio": True,
                                "run.preview": False, "model.enabled": False,
                                "publish.endpoint": endpoint, "publish.control_endpoint": "none",
                                "run.max_staleness_s": bound_s})
    source = SlowDecoder(str(clip), realtime=True, use_audio=False, max_staleness_s=bound_s,
                         cost_s=2 / 29.97)
    collector = Collector(endpoint, topics=("face", "stats"))
    pipeline = LivePipeline(config, [source], FaceFrontEnd(config.face),
                            Publisher(endpoint=endpoint))
    try:
        t0 = time.monotonic()
        summary = pipeline.run()
        elapsed = time.monotonic() - t0
        time.sleep(0.3)
    finally:
        collector.close()
    final = summary.final_stats
    # every frame of the clip was either processed or dropped for staleness (decoded late, or
    # skipped by the decoder on its way to the next key frame), and counted
    assert final["stale_dropped"] > 0
    assert final["dropped_frames"] >= final["stale_dropped"]
    assert abs(final["frames"] + final["dropped_frames"] - 56 * 2) <= 2, final
    faces = collector.of("face")
    # one face message per processed frame, but for a frame or two whose face the tracker misses
    # right after the decoder skipped ahead (seen once in 20 runs under load)
    assert final["frames"] - 2 <= len(faces) <= final["frames"] and len(faces) > 20
    late = [m["t_publish"] - m["t_capture"] for m, _ in faces]
    arrived = [t - m["t_capture"] for m, t in faces]
    assert max(late) < bound_s + 0.05, max(late)  # each result left within the bound
    assert np.percentile(arrived, 95) < bound_s + 0.03, np.percentile(arrived, 95)
    # it stayed live to the end of the clip instead of falling ever further behind (a decoder
    # at half speed alone would take 7.5 s and publish its last frame 3.7 s late)
    assert max(m["pts"] for m, _ in faces) > 3.2
    assert elapsed < 3.8 + 2.0
