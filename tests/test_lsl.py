"""The LSL outlet (#11 item 4): `streamav live --lsl` opens an `Emotion` stream (one channel per
class) and a `Markers` stream (emotion.change) with source_id = the stream id and capture-time
timestamps on LSL's clock; read back here through liblsl on this machine (resolve, inlet).
Skipped when pylsl is not installed (the `lsl` extra) or its liblsl cannot run here."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import OBAMA, cli_env, free_tcp_port, streamav_command

try:
    import pylsl

    pylsl.local_clock()
except ImportError:
    pytest.skip("pylsl is not installed (pip install 'streamav[lsl]')", allow_module_level=True)
except (OSError, RuntimeError) as exc:  # the wheel's liblsl cannot load on this machine
    pytest.skip(f"liblsl cannot run here: {exc}", allow_module_level=True)

LABELS = ("angry", "happy", "neutral")


def _resolve(source_id: str, kind: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = pylsl.resolve_bypred(f"source_id='{source_id}' and type='{kind}'", 1, 1.0)
        if found:
            return found[0]
    return None


def _result(probs, t_ns: int, change: str | None = None):
    from streamav.wire.messages import Emotion, EmotionChange

    top = int(np.argmax(probs))
    emotion = Emotion(labels=tuple(LABELS), probs=tuple(float(p) for p in probs),
                      top=LABELS[top], confidence=float(probs[top]), uncertain=False,
                      baseline_s=None, profile=None, frame_seq=0)
    model = SimpleNamespace(emotion=emotion, change=None if change is None else EmotionChange(
        from_="angry", to=change, confidence=0.8, frame_seq=0))
    return SimpleNamespace(model=model, frame=SimpleNamespace(t_capture_ns=t_ns))


def test_the_outlets_are_resolved_and_read_locally():
    from streamav.lsl_outlet import LslOutlet, describe

    stream_id = f"test-{uuid.uuid4().hex[:8]}"
    outlet = LslOutlet(stream_id, labels=lambda: LABELS, model_engine=lambda: "onnx/cpu")
    outlet.open()
    try:
        emotion_info = _resolve(stream_id, "Emotion")
        markers_info = _resolve(stream_id, "Markers")
        assert emotion_info is not None and markers_info is not None
        emotion = pylsl.StreamInlet(emotion_info)
        markers = pylsl.StreamInlet(markers_info)
        emotion.open_stream(timeout=10)
        markers.open_stream(timeout=10)
        full = describe(emotion.info(timeout=10))
        assert full == {"name": "streamav emotion", "type": "Emotion", "source_id": stream_id,
                        "channel_count": 3, "channels": list(LABELS)}
        assert markers_info.channel_format() == pylsl.cf_string
        time.sleep(0.2)  # the inlets' connections are set up
        t0 = time.monotonic_ns()
        sent = [(np.array([0.1, 0.7, 0.2]), t0), (np.array([0.05, 0.15, 0.8]), t0 + 33_000_000)]
        outlet(_result(sent[0][0], sent[0][1]))
        outlet(_result(sent[1][0], sent[1][1], change="neutral"))
        for probs, t_ns in sent:
            sample, stamp = emotion.pull_sample(timeout=10)
            assert sample is not None
            assert np.allclose(sample, probs, atol=1e-7)
            assert stamp == pytest.approx(t_ns / 1e9 + outlet.clock.offset_s, abs=1e-6)
            # LSL's clock and the capture clock agree here: the mapped time is a capture time
            assert abs(stamp - (pylsl.local_clock() - (time.monotonic_ns() - t_ns) / 1e9)) < 0.05
        marker, stamp = markers.pull_sample(timeout=10)
        assert marker == ["neutral"]
        assert stamp == pytest.approx(sent[1][1] / 1e9 + outlet.clock.offset_s, abs=1e-6)
        assert outlet.samples == 2 and outlet.changes == 1
    finally:
        outlet.close()


def test_live_lsl_streams_the_runs_emotion(tmp_path):
    """A real `streamav live --lsl` run: what an inlet reads is the run's `emotion` messages
    (the run's --record log), each at its capture time."""
    from streamav.wire.msglog import read_log

    stream_id = f"lsl-{uuid.uuid4().hex[:8]}"
    video = ["--video", str(OBAMA), "--duration", "8"] if OBAMA.exists() else ["--demo"]
    process = subprocess.Popen(
        [*streamav_command(), "live", *video, "--lsl", "--stream-id", stream_id,
         "--no-preview", "--control", "none", "--publish", f"tcp://127.0.0.1:{free_tcp_port()}",
         "--record", str(tmp_path / "rec")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=cli_env())
    received = []
    try:
        info = None
        deadline = time.monotonic() + 180
        while info is None and process.poll() is None and time.monotonic() < deadline:
            info = _resolve(stream_id, "Emotion", timeout_s=1.0)
        assert info is not None, process.stderr.read() if process.poll() is not None else ""
        assert _resolve(stream_id, "Markers", timeout_s=10) is not None
        inlet = pylsl.StreamInlet(info)
        inlet.open_stream(timeout=10)
        while process.poll() is None:
            chunk, stamps = inlet.pull_chunk(timeout=0.2)
            received += list(zip(chunk, stamps))
        chunk, stamps = inlet.pull_chunk(timeout=1.0)
        received += list(zip(chunk, stamps))
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "LSL: " in stderr and f"(source_id {stream_id})" in stderr
    _, records = read_log(tmp_path / "rec" / "messages.msgpack")
    emotions = {round(r.message().t_capture_s, 6): r.message().payload for r in records
                if r.topic == "emotion"}
    assert len(received) >= 5, (len(received), len(emotions))
    offset = pylsl.local_clock() - time.monotonic()
    labels = next(iter(emotions.values()))["labels"]
    assert len(received[0][0]) == len(labels)
    for sample, stamp in received:
        t_capture = min(emotions, key=lambda t: abs(t - (stamp - offset)))
        assert abs(t_capture - (stamp - offset)) < 1e-3
        # the wire rounds probabilities to 5 decimals; LSL carries them unrounded (float32)
        assert np.allclose(sample, emotions[t_capture]["probs"], atol=6e-6)


def test_without_pylsl_live_lsl_is_one_line_with_the_install_hint():
    code = ("import sys; sys.modules['pylsl'] = None; sys.argv = ['streamav', 'live', '--demo', "
            "'--lsl', '--no-preview']; from streamav.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=cli_env(), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("streamav: error: --lsl needs pylsl: pip install "
                                     "'streamav[lsl]' (or pip install pylsl)")
