"""The AV ring buffer: overwrite and drop counting in real time, back-pressure and order offline,
and the causal audio window."""

from __future__ import annotations

import threading
import time

import numpy as np

from streamav.ring import AudioRing, VideoRing


def _image(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def test_realtime_video_ring_overwrites_oldest_and_counts():
    ring = VideoRing(capacity_frames=3, blocking=False)
    for seq in range(5):
        ring.write(seq, 1000 + seq, _image(seq), pts_s=None)
    assert ring.overwritten_frames == 2
    frame = ring.read_next(timeout_s=0)
    assert frame is not None and frame.seq == 2 and frame.image_bgr[0, 0, 0] == 2
    newest = ring.read_newest(timeout_s=0)
    assert newest is not None and newest.seq == 4 and newest.t_capture_ns == 1004
    assert ring.skipped_frames == 1
    assert ring.dropped_frames == 3
    assert ring.read_newest(timeout_s=0.01) is None  # nothing new


def test_frame_copy_is_independent_of_later_writes():
    ring = VideoRing(capacity_frames=1, blocking=False)
    ring.write(0, 0, _image(7), None)
    frame = ring.read_next(timeout_s=0)
    ring.write(1, 1, _image(9), None)
    assert frame.image_bgr[0, 0, 0] == 7


def test_offline_video_ring_blocks_writer_and_keeps_every_frame():
    ring = VideoRing(capacity_frames=2, blocking=True)
    n = 50

    def produce():
        for seq in range(n):
            ring.write(seq, seq, _image(seq % 256), pts_s=seq / 30)
        ring.close()

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    while (frame := ring.read_next(timeout_s=5)) is not None:
        seen.append(frame.seq)
        assert frame.image_bgr[0, 0, 0] == frame.seq % 256
    producer.join(5)
    assert seen == list(range(n))
    assert ring.dropped_frames == 0


def test_abort_wakes_a_blocked_writer():
    ring = VideoRing(capacity_frames=1, blocking=True)
    ring.write(0, 0, _image(0), None)
    writer = threading.Thread(target=ring.write, args=(1, 1, _image(1), None))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # blocked: the ring is full
    ring.abort()
    writer.join(2)
    assert not writer.is_alive()


def test_frame_size_change_reallocates():
    ring = VideoRing(capacity_frames=2, blocking=False)
    ring.write(0, 0, _image(1), None)
    ring.write(1, 1, np.zeros((8, 8, 3), np.uint8), None)
    frame = ring.read_next(timeout_s=0)
    assert frame.image_bgr.shape == (8, 8, 3) and frame.seq == 1
    assert ring.overwritten_frames == 1


def test_audio_window_ends_at_frame_time_across_wraparound():
    rate = 16_000
    ring = AudioRing(capacity_samples=4000, sample_rate_hz=rate, blocking=False)
    signal = np.arange(20_000, dtype=np.float32)
    t0 = 5_000_000_000
    for start in range(0, signal.size, 300):  # blocks that do not divide the capacity
        ring.write(t0 + start * 62_500, signal[start:start + 300])
    t_frame = t0 + 19_000 * 62_500  # sample 19000 captured at t_frame
    window = ring.window_ending_at(t_frame, 1024)
    np.testing.assert_array_equal(window.samples, signal[19_000 - 1024:19_000])
    assert window.end_index == 19_000 and window.skew_ns == 0


def test_audio_window_before_stream_start_is_zero_padded():
    ring = AudioRing(capacity_samples=4000, sample_rate_hz=16_000, blocking=False)
    ring.write(1_000_000_000, np.ones(1000, np.float32))
    window = ring.window_ending_at(1_000_000_000 + 100 * 62_500, 1024)
    assert window.samples[:-100].sum() == 0 and np.all(window.samples[-100:] == 1)


def test_realtime_audio_lag_is_reported_as_skew():
    ring = AudioRing(capacity_samples=4000, sample_rate_hz=16_000, blocking=False)
    ring.write(0, np.ones(1600, np.float32))  # 100 ms of audio
    window = ring.window_ending_at(150_000_000, 1024)  # a frame at 150 ms
    assert window.end_index == 1600
    assert window.skew_ns == 50_000_000


def test_realtime_audio_overwrite_is_counted_when_read():
    ring = AudioRing(capacity_samples=2000, sample_rate_hz=16_000, blocking=False)
    ring.write(0, np.ones(1500, np.float32))
    ring.write(1500 * 62_500, np.ones(1500, np.float32))  # overwrites the oldest 1000
    window = ring.window_ending_at(3000 * 62_500, 2500)
    assert ring.overwritten_samples == 500
    assert window.samples[:500].sum() == 0


def test_offline_audio_waits_for_the_samples_of_the_frame():
    ring = AudioRing(capacity_samples=2048, sample_rate_hz=16_000, blocking=True)
    ring.write(0, np.zeros(500, np.float32))
    result = {}

    def read():
        result["window"] = ring.window_ending_at(1500 * 62_500, 1024, timeout_s=5)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # waiting for samples 500..1500
    ring.write(500 * 62_500, np.ones(1000, np.float32))
    reader.join(5)
    assert result["window"].end_index == 1500 and result["window"].samples[-1000:].min() == 1


def test_offline_audio_writer_can_run_far_ahead_of_a_late_video_start():
    """Audio that starts long before the video must not deadlock the blocking ring."""
    ring = AudioRing(capacity_samples=4096, sample_rate_hz=16_000, blocking=True)
    signal = np.arange(40_000, dtype=np.float32)

    def produce():
        for start in range(0, signal.size, 512):
            ring.write(start * 62_500, signal[start:start + 512])
        ring.close()

    producer = threading.Thread(target=produce)
    producer.start()
    window = ring.window_ending_at(30_000 * 62_500, 1024, timeout_s=10)  # far beyond capacity
    assert ring.written_samples >= 30_000
    ring.abort()  # the reader is done: the pipeline aborts the ring at the end of a run
    producer.join(10)
    assert not producer.is_alive()
    np.testing.assert_array_equal(window.samples, signal[30_000 - 1024:30_000])


def test_offline_capture_time_is_entry_time_and_media_time_is_kept():
    ring = VideoRing(capacity_frames=2, blocking=True)
    far_future_ns = time.monotonic_ns() + 10**12
    ring.write(0, far_future_ns, _image(0), pts_s=1000.0)
    frame = ring.read_next(timeout_s=0)
    assert frame.t_media_ns == far_future_ns
    assert frame.t_capture_ns <= time.monotonic_ns()
    realtime = VideoRing(capacity_frames=2, blocking=False)
    realtime.write(0, 12345, _image(0), pts_s=None)
    frame = realtime.read_newest(timeout_s=0)
    assert frame.t_capture_ns == frame.t_media_ns == 12345
