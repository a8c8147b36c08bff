"""The command line as users run it: `streamav live` on real clips with a subscriber in another
process, the demo, --stats-json, --version, and one clear line for each bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import zmq

from conftest import CREMA_D_CLIPS, OBAMA, cli_env, free_tcp_port, require_shared_data, \
    streamav_command

STREAMAV = streamav_command()


def run_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMAV, *args], capture_output=True, text=True, timeout=timeout_s,
                          env=cli_env(), stdin=subprocess.DEVNULL)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("streamav ") and result.stdout.split()[1][0].isdigit()


def test_live_publishes_to_a_subscriber_in_another_process(tmp_path):
    require_shared_data()
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    out = tmp_path / "messages.jsonl"
    with out.open("w") as sink:
        subscriber = subprocess.Popen(
            [*STREAMAV, "subscribe", "--endpoint", endpoint, "--timeout", "30"],
            stdout=sink, stderr=subprocess.PIPE, text=True, env=cli_env())
        time.sleep(0.5)  # let the subscriber start before the publisher binds
        live = run_cli("live", "--video", str(OBAMA), "--no-preview", "--no-realtime",
                       "--publish", endpoint, "--control", "none",
                       "--stats-json", str(tmp_path / "stats.json"))
        assert live.returncode == 0, live.stderr
        subscriber.terminate()
        subscriber.wait(10)
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    by_topic: dict[str, list[dict]] = {}
    for message in messages:
        by_topic.setdefault(message["topic"], []).append(message)
    assert {"face", "stats", "status"} <= set(by_topic)
    faces = by_topic["face"]
    assert len(faces) >= 450  # 500 frames; a few may precede the subscription
    for topic, items in by_topic.items():
        seqs = [m["seq"] for m in items]
        assert seqs == sorted(set(seqs)), f"{topic}: seq not increasing"
        assert all(m["schema"] == 1 and m["t_publish"] >= m["t_capture"] for m in items)
    t_capture = [m["t_capture"] for m in faces]
    assert all(b > a for a, b in zip(t_capture, t_capture[1:]))
    assert sum(m["found"] for m in faces) >= 0.95 * len(faces)
    found = next(m for m in faces if m["found"])
    x, y, w, h = found["box"]
    assert 0 <= x < 450 and 0 <= y < 450 and 20 < w < 450 and 20 < h < 450
    assert by_topic["status"][-1]["state"] == "stopping"
    assert "t_wall" in by_topic["status"][-1]["anchor"]
    final = by_topic["stats"][-1]
    assert final["final"] is True and final["frames"] == 500
    for stage in ("decode", "queue", "face", "spectrum", "publish", "capture_to_publish"):
        assert final["latency_ms"][stage]["p50"] > 0, stage
    stats_file = json.loads((tmp_path / "stats.json").read_text())
    assert stats_file["stats"]["frames"] == 500 and stats_file["stop_reason"] == "end of input"


@pytest.mark.parametrize("path", CREMA_D_CLIPS + [OBAMA], ids=lambda p: p.name)
def test_face_found_on_95_percent_of_frames_through_the_live_path(path, tmp_path, endpoint):
    require_shared_data()
    stats_path = tmp_path / "stats.json"
    result = run_cli("live", "--video", str(path), "--no-preview", "--no-realtime", "--publish",
                     endpoint, "--control", "none", "--stats-json", str(stats_path))
    assert result.returncode == 0, result.stderr
    stats = json.loads(stats_path.read_text())["stats"]
    assert stats["frames"] > 50
    assert stats["faces_found"] >= 0.95 * stats["frames"]
    assert stats["dropped_frames"] == 0 and stats["av_skew_ms"] == 0.0


def test_demo_runs_without_a_camera(tmp_path, endpoint):
    result = run_cli("live", "--demo", "--no-preview", "--max-frames", "60", "--publish",
                     endpoint, "--control", "none", "--stats-json", str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    assert "running without preview" not in result.stderr  # --no-preview asked: no notice
    stats = json.loads((tmp_path / "s.json").read_text())["stats"]
    assert stats["frames"] >= 30 and stats["faces_found"] >= 0.95 * stats["frames"]


def test_headless_preview_is_announced_once(endpoint):
    require_shared_data()
    result = run_cli("live", "--video", str(CREMA_D_CLIPS[0]), "--no-realtime", "--publish",
                     endpoint, "--control", "none")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("running without preview") == 1


def test_max_frames_stops_early(tmp_path, endpoint):
    require_shared_data()
    result = run_cli("live", "--video", str(OBAMA), "--no-preview", "--no-realtime",
                     "--max-frames", "20", "--publish", endpoint, "--control", "none",
                     "--stats-json", str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["stats"]["frames"] == 20 and document["stop_reason"] == "max frames reached"


def test_separate_audio_file_and_control_socket(tmp_path):
    """--video X --audio Y, with the control socket answering while the run goes on."""
    require_shared_data()
    pub, ctl = free_tcp_port(), free_tcp_port()
    process = subprocess.Popen(
        [*STREAMAV, "live", "--video", str(OBAMA), "--audio", str(CREMA_D_CLIPS[0]),
         "--no-preview", "--publish", f"tcp://127.0.0.1:{pub}",
         "--control", f"tcp://127.0.0.1:{ctl}", "--duration", "6"],
        stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        from streamav.wire.control import request

        reply = None
        for _ in range(50):
            try:
                reply = request(f"tcp://127.0.0.1:{ctl}", "version", timeout_s=0.5)
                break
            except Exception:
                time.sleep(0.1)
        assert reply is not None and reply["ok"] is True and "version" in reply
        assert process.wait(30) == 0, process.stderr.read()
    finally:
        process.kill()


# --- bad input: one line on stderr, a non-zero exit code, no traceback ------------------------


def _assert_clean_failure(result, code: int, phrase: str):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("streamav: error:")]
    assert len(error_lines) == 1 and phrase in error_lines[0], result.stderr


def test_missing_file(tmp_path):
    result = run_cli("live", "--video", str(tmp_path / "missing.mp4"), "--no-preview")
    _assert_clean_failure(result, 2, "no such file")


def test_unreadable_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 1000)
    _assert_clean_failure(run_cli("live", "--video", str(junk), "--no-preview"), 2, "cannot read")


def test_file_with_no_audio_stream(tmp_path):
    require_shared_data()
    silent = tmp_path / "silent.mp4"
    subprocess.run([sys.executable, "-c", f"""
import av, numpy as np
with av.open({str(silent)!r}, "w") as dst:
    out = dst.add_stream("mpeg4", rate=25)
    out.width, out.height, out.pix_fmt = 64, 64, "yuv420p"
    for i in range(5):
        f = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        f = f.reformat(format="yuv420p"); f.pts = i
        for p in out.encode(f): dst.mux(p)
    for p in out.encode(None): dst.mux(p)
"""], check=True)
    stats = tmp_path / "stats.json"
    result = run_cli("live", "--video", str(silent), "--no-preview", "--no-model",
                     "--stats-json", str(stats))
    assert result.returncode == 0, result.stderr  # video alone, with one warning
    warnings = [line for line in result.stderr.splitlines() if "has no audio stream" in line]
    assert len(warnings) == 1 and "Traceback" not in result.stderr, result.stderr
    final = json.loads(stats.read_text())["stats"]
    assert final["has_audio"] is False and final["frames"] == 5


def test_audio_file_with_no_video_stream_as_video(tmp_path):
    require_shared_data()
    wav = tmp_path / "a.wav"
    subprocess.run([sys.executable, "-c", f"""
import wave, numpy as np
with wave.open({str(wav)!r}, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes(np.zeros(1600, "<i2").tobytes())
"""], check=True)
    _assert_clean_failure(run_cli("live", "--video", str(wav), "--no-preview"), 2,
                          "has no video stream")


def test_camera_that_cannot_open(tmp_path):
    result = run_cli("live", "--camera", str(tmp_path / "video99"), "--no-audio", "--no-preview")
    _assert_clean_failure(result, 3, "could not be opened")


def test_unknown_microphone_name():
    require_shared_data()
    result = run_cli("live", "--video", str(CREMA_D_CLIPS[0]), "--mic", "no-such-microphone-xyz",
                     "--no-preview")
    assert result.returncode in (3, 5), result.stderr  # 5: PortAudio itself is missing
    assert "Traceback" not in result.stderr and "no-such-microphone-xyz" in result.stderr \
        or "PortAudio" in result.stderr


def test_endpoint_already_in_use():
    require_shared_data()
    port = free_tcp_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = run_cli("live", "--video", str(CREMA_D_CLIPS[0]), "--no-preview",
                         "--publish", f"tcp://127.0.0.1:{port}", "--control", "none")
    _assert_clean_failure(result, 4, "in use")


def test_non_loopback_publish_needs_curve_keys():
    require_shared_data()
    result = run_cli("live", "--video", str(CREMA_D_CLIPS[0]), "--no-preview",
                     "--publish", "tcp://0.0.0.0:5999", "--control", "none")
    _assert_clean_failure(result, 4, "CURVE")


def test_conflicting_options():
    # a camera and a video are two streams (docs/live.md): each checked before the engine
    result = run_cli("live", "--camera", "0", "--video", "x.mp4", "--no-preview")
    _assert_clean_failure(result, 2, "stream s0: no such file: x.mp4")
    assert "engine" not in result.stderr
    result = run_cli("live", "--camera", "0", "--no-realtime", "--no-preview", "--no-audio")
    _assert_clean_failure(result, 2, "--no-realtime needs file sources")


def test_end_of_file_sends_stopping_and_final_stats(endpoint):
    """A subscriber in this process sees `stopping` then the final stats, and the exit is 0."""
    require_shared_data()
    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"st")
    sub.connect(endpoint)
    try:
        result = run_cli("live", "--video", str(OBAMA), "--no-preview", "--no-realtime",
                         "--max-frames", "100", "--publish", endpoint, "--control", "none")
        assert result.returncode == 0, result.stderr
        from streamav.wire.protocol import decode

        seen = []
        while sub.poll(1000):
            message = decode(sub.recv_multipart())
            seen.append((message.topic, message.payload.get("state"), message.payload.get("final")))
        assert ("status", "stopping", None) in seen
        assert seen[-1] == ("stats", None, True)
    finally:
        sub.close(linger=0)
