"""The webcam source's own code (open, read loop, timestamps, reconnect) on a real video file
handed to OpenCV where a device would go: the end of the file is a failed read, like an
unplugged camera. No fake of OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import CREMA_D_CLIPS, require_shared_data
from recording_sink import RecordingSink
from streamav.errors import DeviceError
from streamav.sources.camera import CameraConfig, CameraSource, parse_camera


def _frames_in(path) -> int:
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.grab():
        n += 1
    capture.release()
    return n


def test_camera_source_reads_reconnects_and_stamps():
    require_shared_data()
    path = CREMA_D_CLIPS[0]
    per_pass = _frames_in(path)
    assert per_pass > 50
    sink = RecordingSink()
    source = CameraSource(str(path), CameraConfig(reconnect_delay_s=0.01, max_reconnects=2))
    source.start(sink)
    assert sink.wait_ended("video", timeout_s=60)
    source.stop()
    assert source.error() is None
    assert len(sink.video) == 3 * per_pass  # the first pass and two reconnections
    assert [item.seq for item in sink.video] == list(range(3 * per_pass))
    states = [state for state, _ in sink.statuses]
    assert states == ["source_lost", "source_back", "source_lost", "source_back", "source_lost"]
    assert source.reconnects == 2
    times = np.array([item.t_capture_ns for item in sink.video])
    assert np.all(np.diff(times) > 0)
    # After reconnecting, reading starts again from the device's (here, the file's) beginning.
    np.testing.assert_array_equal(sink.video[0].image_bgr, sink.video[per_pass].image_bgr)
    assert sink.video[0].image_bgr.shape == (360, 480, 3)
    assert all(ns > 0 for ns in sink.video_decode_ns)


def test_camera_that_cannot_open_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="could not be opened"):
        CameraSource(str(tmp_path / "no-such-camera")).start(RecordingSink())


def test_camera_stop_while_reconnecting_returns_promptly(tmp_path):
    require_shared_data()
    sink = RecordingSink()
    source = CameraSource(str(CREMA_D_CLIPS[1]), CameraConfig(reconnect_delay_s=30.0))
    source.start(sink)
    assert sink.wait_until(lambda s: ("source_lost", f"{source.name}: read failed") in s.statuses,
                           timeout_s=30)
    source.stop()  # would hang for 30 s if the reconnect wait ignored stop
    assert sink.ended == {"video"}


def test_parse_camera():
    assert parse_camera("0") == 0 and parse_camera(2) == 2
    assert parse_camera("/dev/video1") == "/dev/video1"
