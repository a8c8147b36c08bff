"""File sources on the real clips: frame counts, container timestamps on the monotonic clock,
16 kHz mono audio of the right length, real-time pacing, and clear errors for bad files."""

from __future__ import annotations

import time
import wave

import av
import numpy as np
import pytest

from conftest import CREMA_D_CLIPS, OBAMA, require_shared_data
from streamav.errors import InputError
from streamav.ring import AVRing
from streamav.sources.media_file import MediaFileSource

RATE = 16_000


def _drain(source: MediaFileSource, blocking: bool = True):
    ring = AVRing(16, 30 * RATE, RATE, blocking=blocking)
    frames = []
    source.start(ring)
    try:
        while (frame := ring.video.read_next(timeout_s=20)) is not None:
            frames.append(frame)
        deadline = time.monotonic() + 20
        while "audio" not in ring.ended and source.has_audio and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        source.stop()
    return frames, ring


def _input_audio(path) -> tuple[int, int, int]:
    """(samples per channel, sample rate, channels) of the first audio stream, decoded by PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        n = sum(frame.samples for frame in container.decode(stream))
        return n, stream.rate, stream.channels


def _video_pts(path) -> list[float]:
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


@pytest.mark.parametrize("path", CREMA_D_CLIPS + [OBAMA], ids=lambda p: p.name)
def test_file_source_frames_timestamps_and_audio(path):
    require_shared_data()
    anchor_ns = 10**12
    frames, ring = _drain(MediaFileSource(str(path), realtime=False, anchor_ns=anchor_ns))
    expected_pts = _video_pts(path)
    assert len(frames) == len(expected_pts)
    assert [f.seq for f in frames] == list(range(len(frames)))
    t_ns = np.array([f.t_media_ns for f in frames])
    assert np.all(np.diff(t_ns) > 0)
    np.testing.assert_allclose((t_ns - anchor_ns) / 1e9, expected_pts, atol=1e-6)
    fps = (len(frames) - 1) / ((t_ns[-1] - t_ns[0]) / 1e9)
    nominal = 25.0 if path == OBAMA else 29.97
    assert abs(fps - nominal) < 0.3
    assert frames[0].image_bgr.shape == ((450, 450, 3) if path == OBAMA else (360, 480, 3))
    n_in, rate_in, channels = _input_audio(path)
    assert (rate_in, channels) == ((48_000, 2) if path == OBAMA else (44_100, 1))
    expected_samples = n_in * RATE / rate_in
    assert abs(ring.audio.written_samples - expected_samples) <= 32
    # Offline, the capture time is when the frame entered the ring: never in the future.
    assert all(f.t_capture_ns <= time.monotonic_ns() for f in frames)
    assert ring.audio.overwritten_samples == 0 and ring.video.dropped_frames == 0


def test_obama_is_twenty_seconds_of_25_fps():
    require_shared_data()
    frames, ring = _drain(MediaFileSource(str(OBAMA), realtime=False))
    assert len(frames) == 500
    assert ring.audio.written_samples == pytest.approx(20.0 * RATE, abs=200)
    # The audio is speech, not silence: check its loudness at the window of the middle frame.
    window = ring.audio.window_ending_at(frames[250].t_media_ns, 16_000)
    assert np.sqrt(np.mean(window.samples ** 2)) > 0.01


def test_realtime_file_plays_at_its_own_speed():
    require_shared_data()
    source = MediaFileSource(str(CREMA_D_CLIPS[0]), realtime=True)
    t0 = time.monotonic()
    frames, _ = _drain(source, blocking=False)
    elapsed_s = time.monotonic() - t0
    duration_s = (frames[-1].t_capture_ns - source.anchor_ns) / 1e9
    assert elapsed_s >= duration_s * 0.95  # paced by the timestamps, not as fast as possible
    lateness_ms = [(f.t_capture_ns - source.anchor_ns) / 1e6 - f.pts_s * 1e3 for f in frames]
    assert max(abs(x) for x in lateness_ms) < 1e-3  # capture times are the container's own


def test_missing_file_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        MediaFileSource(str(tmp_path / "nope.mp4"), realtime=False)


def test_unreadable_file_is_a_clear_input_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(InputError, match="cannot read"):
        MediaFileSource(str(junk), realtime=False)


def test_file_without_audio_or_video_is_a_clear_input_error(tmp_path):
    require_shared_data()
    silent = tmp_path / "silent.mp4"
    wav = tmp_path / "voice.wav"
    with av.open(str(silent), "w") as dst:
        out = dst.add_stream("mpeg4", rate=25)
        out.width, out.height, out.pix_fmt = 64, 64, "yuv420p"
        for i in range(10):
            image = np.full((64, 64, 3), 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in out.encode(frame):
                dst.mux(packet)
        for packet in out.encode(None):
            dst.mux(packet)
    with pytest.raises(InputError, match="no audio stream"):
        MediaFileSource(str(silent), realtime=False)
    assert MediaFileSource(str(silent), realtime=False, use_audio=False).has_video
    _write_wav(wav)
    with pytest.raises(InputError, match="no video stream"):
        MediaFileSource(str(wav), realtime=False)
    audio_only = MediaFileSource(str(wav), realtime=False, use_video=False)
    ring = AVRing(2, 2 * RATE, RATE, blocking=True)
    audio_only.start(ring)
    deadline = time.monotonic() + 10
    while "audio" not in ring.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    audio_only.stop()
    assert ring.audio.written_samples == pytest.approx(0.5 * RATE, abs=32)


def _write_wav(path) -> None:
    """Half a second of a 440 Hz tone, 16 kHz mono, 16-bit."""

    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / RATE) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(tone.tobytes())


def test_url_source_over_http_on_loopback():
    """A URL goes through the same PyAV path as a file: serve a real clip on 127.0.0.1."""
    require_shared_data()
    import functools
    import http.server
    import threading

    clip = CREMA_D_CLIPS[0]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
        source = MediaFileSource(url, realtime=False)
        assert source.name == url
        frames, ring = _drain(source)
        assert len(frames) == len(_video_pts(clip))
        n_in, rate_in, _ = _input_audio(clip)
        assert abs(ring.audio.written_samples - n_in * RATE / rate_in) <= 32
        with pytest.raises(InputError, match="cannot read"):
            MediaFileSource(url + ".missing", realtime=False)
    finally:
        server.shutdown()
        server.server_close()
