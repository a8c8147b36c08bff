"""Record and replay (#11 item 3): `streamav live --record DIR`, `streamav replay DIR`, and
`streamav live --no-realtime --video DIR` on a recording.

"Exactly": an offline run on a recording gives the recorded run's per-frame messages (emotion,
emotion.change, face, latent, video.denoised with its pixels) field for field, apart from the
envelope's stream id and clock times. Checked for a recording of an offline run and of a
real-time run of the bundled clip (the real-time one reads other audio windows than an offline
run of the clip would, and the rerun must reproduce those). SIGINT ends a recording cleanly
(subprocess); a full disk is a real tiny tmpfs where this process may mount one (root), and
always the narrowest seam: `RawOut._write_some`, the one os.write every recording file goes
through, failing with ENOSPC once a simulated disk is full (cutting a file back frees space,
as on a real disk)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import cli_env, default_sigint, free_tcp_port, streamav_command
from streamav.wire import messages
import wire_samples

STREAMAV = streamav_command()
PER_FRAME_TOPICS = ("face", "emotion", "emotion.change", "latent", "video.denoised")
ENVELOPE_CLOCKS = ("stream", "t_capture", "t_publish")


def _live(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMAV, "live", "--no-preview", "--control", "none",
                           "--publish", f"tcp://127.0.0.1:{free_tcp_port()}", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=cli_env(),
                          stdin=subprocess.DEVNULL)


def _per_frame(folder: Path) -> dict[str, list]:
    """The per-frame messages of a recording's log, by topic: (payload without the stream id
    and the clock times, buffers)."""
    from streamav.wire.msglog import read_log

    _, records = read_log(folder / "messages.msgpack")
    out: dict[str, list] = {topic: [] for topic in PER_FRAME_TOPICS}
    for record in records:
        if record.topic in out:
            payload = {k: v for k, v in record.message().payload.items()
                       if k not in ENVELOPE_CLOCKS}
            out[record.topic].append((payload, record.buffers))
    return out


def _assert_same_stream(recorded: Path, rerun: Path) -> None:
    a, b = _per_frame(recorded), _per_frame(rerun)
    assert len(a["face"]) > 0 and len(a["emotion"]) > 0
    for topic in PER_FRAME_TOPICS:
        assert len(a[topic]) == len(b[topic]), topic
        for i, (x, y) in enumerate(zip(a[topic], b[topic])):
            assert x == y, f"{topic} #{i}: {x[0]} != {y[0]}"


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _csv_rows(folder: Path) -> list:
    from streamav.sources.recording import read_frames

    return read_frames(folder)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The demo clip run offline with --record, then that recording rerun offline with
    --record (its messages are the rerun's stream)."""
    folder = tmp_path_factory.mktemp("offline")
    first = _live("--demo", "--no-realtime", "--record", str(folder / "a"))
    assert first.returncode == 0, first.stderr
    second = _live("--no-realtime", "--video", str(folder / "a"), "--record", str(folder / "b"))
    assert second.returncode == 0, second.stderr
    return SimpleNamespace(a=folder / "a", b=folder / "b", first=first, second=second)


def test_an_offline_run_on_a_recording_reproduces_the_recorded_stream(offline):
    _assert_same_stream(offline.a, offline.b)
    assert "emotion:" in offline.second.stderr.strip().splitlines()[-1]


def test_the_recording_holds_what_the_run_read_bit_for_bit(offline):
    import av

    from streamav.cli import demo_clip_path
    from streamav.sources.media_file import MediaFileSource
    from streamav.sources.recording import read_wav_samples

    with av.open(str(demo_clip_path())) as clip:
        expected = [f.to_ndarray(format="bgr24") for f in clip.decode(clip.streams.video[0])]
    with av.open(str(offline.a / "video.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "h264"
        recorded = [f.to_ndarray(format="bgr24") for f in video.decode(stream)]
    assert len(recorded) == len(expected) == 56
    assert all(np.array_equal(x, y) for x, y in zip(recorded, expected))  # lossless

    class Collect:
        def __init__(self):
            self.blocks = []
            self.ended = threading.Event()

        def write_audio(self, seq, t_capture_ns, samples):
            self.blocks.append(np.array(samples))

        def end_of_stream(self, kind):
            self.ended.set()

    sink = Collect()
    source = MediaFileSource(str(demo_clip_path()), realtime=False, use_video=False,
                             use_audio=True, anchor_ns=0)
    source.start(sink)
    assert sink.ended.wait(60)
    source.stop()
    heard = np.concatenate(sink.blocks)
    samples = read_wav_samples(offline.a / "audio.wav")
    rows = _csv_rows(offline.a)
    assert samples.dtype == np.float32 and 0 < samples.size <= heard.size
    assert np.array_equal(samples, heard[:samples.size])  # what the ring stored, exactly
    assert max(r.audio_end for r in rows) <= samples.size
    assert [r.seq for r in rows] == list(range(56)) and [r.frame for r in rows] == list(range(56))
    with av.open(str(offline.a / "audio.wav")) as wav:  # a WAV other tools read
        assert wav.streams.audio[0].rate == 16_000
        assert sum(f.samples for f in wav.decode(wav.streams.audio[0])) == samples.size


def test_the_manifest_and_the_log(offline):
    from streamav.wire.msglog import LogReader

    manifest = _manifest(offline.a)
    assert manifest["format"] == "streamav-recording" and manifest["closed"] is True
    assert manifest["stop_reason"] == "end of input" and manifest["recording_error"] is None
    assert manifest["rerun"] == {"command": f"streamav live --no-realtime --video {offline.a}",
                                 "exact": True, "notes": []}
    assert manifest["video"]["frames"] == manifest["counts"]["frames_recorded"] == 56
    assert manifest["model"]["engine"] == "onnx/cpu/fp32/b1"
    assert len(manifest["model"]["sha256"]["step.onnx"]) == 64
    assert manifest["versions"]["av"] and manifest["versions"]["python"]
    assert manifest["config"]["run"]["record"] == str(offline.a)
    assert manifest["started"]["utc"].endswith("+00:00")
    with LogReader(offline.a / "messages.msgpack") as reader:
        records = list(reader)
        assert reader.trailing_bytes == 0
        assert reader.header["stream"] == manifest["stream_id"]
    assert len(records) == manifest["messages"]["logged"] == manifest["counts"]["messages_logged"]
    topics = [r.topic for r in records]
    assert topics[0] == "status" and topics[-1] == "stats"
    assert records[-1].message().payload["final"] is True
    assert all(b.t_ns >= a.t_ns for a, b in zip(records, records[1:]))
    assert {r.message().stream for r in records} == {manifest["stream_id"]}
    assert f"recorded {offline.a} (56 frames" in offline.first.stderr


@pytest.mark.slow
def test_a_real_time_recording_reruns_to_the_same_stream(tmp_path):
    """Real time reads the newest frame and whatever audio has arrived: the rerun gives each
    recorded frame its recorded seq and audio window, and reproduces that run's stream."""
    first = _live("--demo", "--record", str(tmp_path / "r"))
    assert first.returncode == 0, first.stderr
    second = _live("--no-realtime", "--video", str(tmp_path / "r"), "--record",
                   str(tmp_path / "r2"))
    assert second.returncode == 0, second.stderr
    _assert_same_stream(tmp_path / "r", tmp_path / "r2")
    manifest = _manifest(tmp_path / "r")
    assert manifest["realtime"] is True and manifest["rerun"]["exact"] is True
    assert manifest["counts"]["frames_recorded"] == len(_csv_rows(tmp_path / "r"))


def _receive_replay(folder: Path, *flags: str) -> tuple[list, list, str]:
    from streamav.wire.subscriber import Subscriber

    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    with Subscriber(endpoint) as subscriber:
        process = subprocess.Popen([*STREAMAV, "replay", str(folder), "--publish", endpoint,
                                    "--wait-subscriber", "60", *flags],
                                   stderr=subprocess.PIPE, text=True, env=cli_env())
        messages, arrivals = [], []
        try:
            while True:
                message = subscriber.recv(timeout_s=20)
                if message is None:
                    break
                messages.append(message)
                arrivals.append(time.monotonic())
                if message.topic == "stats" and message.payload.get("final"):
                    break
        finally:
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return messages, arrivals, stderr


def test_replay_republishes_the_log_byte_for_byte_with_its_timing(offline):
    from streamav.wire.msglog import read_log

    _, records = read_log(offline.a / "messages.msgpack")
    span = (records[-1].t_ns - records[0].t_ns) / 1e9
    messages, arrivals, stderr = _receive_replay(offline.a, "--speed", "2")
    assert len(messages) == len(records)
    for message, record in zip(messages, records):
        assert message.topic == record.topic and message.buffers == record.buffers
        assert message.payload == record.message().payload  # envelope included
    took = arrivals[-1] - arrivals[0]
    assert span / 2 * 0.9 <= took <= span / 2 + 1.5, (took, span)
    assert f"replayed {len(records)} messages" in stderr
    fast, _, _ = _receive_replay(offline.a, "--no-realtime")
    assert [m.payload for m in fast] == [r.message().payload for r in records]


def _make_clip(path: Path, seconds: float, fps: int = 15) -> None:
    """A clip with a moving pattern and a tone (no face: runs use --no-model)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        x = np.arange(160)[None, :, None]
        for i in range(int(seconds * fps)):
            image = ((x + 4 * i) % 256).astype(np.uint8).repeat(120, 0).repeat(3, 2)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        t = np.arange(int(seconds * 16_000)) / 16_000
        tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16_000, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                container.mux(packet)


def _check_whole(folder: Path) -> dict:
    """Every file of a recording readable and the counts of manifest, video, frames.csv, WAV
    and log the same."""
    from streamav.recording import mp4_frame_count
    from streamav.sources.recording import read_wav_samples
    from streamav.wire.msglog import LogReader

    manifest = _manifest(folder)
    frames = mp4_frame_count(folder / "video.mp4")
    assert frames == manifest["video"]["frames"] == len(_csv_rows(folder))
    samples = read_wav_samples(folder / "audio.wav")
    assert samples.size == manifest["audio"]["samples"]
    assert (folder / "audio.wav").stat().st_size == 58 + 4 * samples.size
    with LogReader(folder / "messages.msgpack") as reader:
        assert sum(1 for _ in reader) == manifest["messages"]["logged"]
        assert reader.trailing_bytes == 0
    return manifest


@pytest.mark.slow
def test_sigint_closes_the_recording_cleanly(tmp_path):
    clip = tmp_path / "clip.mp4"
    _make_clip(clip, seconds=20)
    folder = tmp_path / "rec"
    process = subprocess.Popen(
        [*STREAMAV, "live", "--video", str(clip), "--no-model", "--no-preview", "--control",
         "none", "--publish", f"tcp://127.0.0.1:{free_tcp_port()}", "--record", str(folder)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=cli_env(),
        preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            csv = folder / "frames.csv"
            if csv.exists() and csv.read_text().count("\n") > 30:  # two seconds in
                break
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert stderr.strip().splitlines()[-1].endswith("stopped: interrupted"), stderr
    manifest = _check_whole(folder)
    assert manifest["closed"] is True and manifest["stop_reason"] == "interrupted"
    assert 30 <= manifest["video"]["frames"] < 300
    assert manifest["counts"]["frames_not_recorded"] == 0
    from streamav.wire.msglog import read_log

    _, records = read_log(folder / "messages.msgpack")
    assert records[-1].topic == "stats" and records[-1].message().payload["final"] is True
    assert [r.message().payload["state"] for r in records if r.topic == "status"] == [
        "started", "stopping"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_closes_the_recording_cleanly_real_tmpfs(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the seam test covers a full disk")
    try:
        folder = disk / "rec"
        result = _live("--demo", "--no-realtime", "--no-model", "--record", str(folder))
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "--record" in errors[0] and "No space left" in errors[0]
        manifest = _check_whole(folder)
        assert manifest["closed"] is True and "No space left" in manifest["recording_error"]
        assert 0 < manifest["video"]["frames"] < 56
        assert manifest["rerun"]["exact"] is False
        rerun = _live("--no-realtime", "--no-model", "--video", str(folder))
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stderr.strip().splitlines()[-1].startswith(
            f"streamav: {manifest['video']['frames']} frames")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


class _Disk:
    """A disk of `capacity` bytes shared by the files of one recording (their sizes)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.paths: list[Path] = []

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.paths if p.exists())

    def opener(self):
        from streamav.recording import RawOut

        disk = self

        class OnDisk(RawOut):
            def __init__(self, path):
                super().__init__(path)
                disk.paths.append(self.path)

            def _write_some(self, data):
                free = disk.capacity - disk.used()
                if free <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return os.write(self.fd, data[:free])

        return OnDisk


def _feed(recording, frames: int, seed: int = 0) -> tuple[list, np.ndarray]:
    """Frames, audio and messages as a run hands them in."""

    rng = np.random.default_rng(seed)
    images, audio = [], []
    base = np.linspace(0, 255, 160, dtype=np.float32)[None, :, None].repeat(120, 0).repeat(3, 2)
    for i in range(frames):
        image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        block = rng.normal(0, 0.1, 533).astype(np.float32)
        recording.audio(i * 533, block)
        t_ns = 10**12 + i * 33_333_333
        frame = SimpleNamespace(image_bgr=image, seq=i, t_capture_ns=t_ns, t_media_ns=t_ns,
                                pts_s=i / 30)
        recording(SimpleNamespace(frame=frame, audio_end=(i + 1) * 533))
        envelope = messages.Envelope(schema=1, stream="s", seq=i, t_capture=t_ns / 1e9,
                                     t_publish=t_ns / 1e9)
        recording.message(messages.encode_frames(wire_samples.face(i, found=False), envelope),
                          t_ns)
        images.append(image)
        audio.append(block)
    return images, np.concatenate(audio)


def _recording(folder: Path, opener):
    from streamav.config import LiveConfig
    from streamav.recording import Recording

    pipeline = SimpleNamespace(
        sources=[SimpleNamespace(name="test", video_fps=30.0)],
        publisher=SimpleNamespace(stream_id="seam-test", on_message=None), model=None,
        model_resets=0, profile_switches=0, on_audio=None)
    recording = Recording(folder, LiveConfig(), opener=opener)
    recording.attach(pipeline)
    recording.started()
    return recording


def test_a_full_disk_closes_the_recording_cleanly_at_the_write_seam(tmp_path):
    """ENOSPC from the one os.write all recording files use: each file is cut back to whole
    units, the manifest says where it stopped, and the recording plays up to there."""
    import av

    from streamav.recording import RecordingFailed
    from streamav.sources.recording import read_wav_samples

    whole = _Disk(10**12)
    recording = _recording(tmp_path / "whole", whole.opener())
    _feed(recording, 90)
    assert "90 frames" in recording.close("end of input", {"dropped_frames": 0})
    total = whole.used()
    _check_whole(tmp_path / "whole")

    disk = _Disk(int(total * 0.6))
    folder = tmp_path / "full"
    recording = _recording(folder, disk.opener())
    images, audio = _feed(recording, 90)
    with pytest.raises(RecordingFailed, match="No space left on device"):
        recording.close("end of input", {"dropped_frames": 0})
    manifest = _check_whole(folder)
    assert manifest["closed"] is True and "No space left" in manifest["recording_error"]
    kept = manifest["video"]["frames"]
    assert 0 < kept < 90
    with av.open(str(folder / "video.mp4")) as video:
        decoded = [f.to_ndarray(format="bgr24") for f in video.decode(video.streams.video[0])]
    assert len(decoded) == kept
    assert all(np.array_equal(a, b) for a, b in zip(decoded, images))
    samples = read_wav_samples(folder / "audio.wav")
    assert np.array_equal(samples, audio[:samples.size])
    assert manifest["rerun"]["exact"] is False
    assert [r.seq for r in _csv_rows(folder)] == list(range(kept))


def test_recording_refuses_a_folder_in_use_and_the_rerun_a_folder_that_is_none(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    result = _live("--demo", "--no-model", "--record", str(used))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"streamav: error: --record {used}: the folder is not "
                                     "empty (a recording is never written over: give a new or "
                                     "empty folder)")
    result = _live("--no-realtime", "--no-model", "--video", str(used))
    assert result.returncode == 2 and "not a media file (nor a recording folder" in result.stderr
    result = subprocess.run([*STREAMAV, "replay", str(used)], capture_output=True, text=True,
                            env=cli_env(), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"streamav: error: {used} is not a streamav recording "
                                     "(no manifest.json)")


def test_a_log_cut_short_reads_to_its_last_whole_record(tmp_path):
    from streamav.wire import msglog

    path = tmp_path / "messages.msgpack"
    video = messages.VideoDenoised(width=5, height=5, frame_seq=7)
    frames = messages.encode_frames(video, wire_samples.envelope(stream="x"), [b"\x00" * 75])
    data = msglog.header_bytes("x", {"t_monotonic": 1.0, "t_wall": 2.0})
    data += b"".join(msglog.record_bytes(frames, t) for t in range(5))
    path.write_bytes(data[:-30])
    with msglog.LogReader(path) as reader:
        records = list(reader)
        assert len(records) == 4 and reader.trailing_bytes > 0
    assert records[3].frames() == frames
    assert records[3].message().body == video


def test_the_publisher_hands_the_log_what_subscribers_receive():
    from streamav.wire.publisher import Publisher
    from streamav.wire.subscriber import Subscriber

    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    logged = []
    publisher = Publisher(endpoint=endpoint, stream_id="tap")
    publisher.on_message = lambda frames, t_ns: logged.append((list(frames), t_ns))
    with publisher, Subscriber(endpoint) as subscriber:
        deadline = time.monotonic() + 10
        while publisher.subscriptions_seen == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert publisher.subscriptions_seen > 0
        publisher.publish(messages.VideoDenoised(width=1, height=1, frame_seq=0), 123, [b"abc"])
        received = subscriber.recv(timeout_s=10)
        publisher.publish_raw("video.denoised", logged[0][0][1], [b"abc"])
        again = subscriber.recv(timeout_s=10)
    assert received is not None and again is not None
    assert logged[0][0] == [b"video.denoised", logged[0][0][1], b"abc"]
    assert received.payload == again.payload and again.buffers == (b"abc",)
    assert received.payload["t_publish"] == pytest.approx(logged[0][1] / 1e9)
