"""The webcam source: OpenCV capture in its own thread, with timestamps and reconnection.

The capture time is read right after `grab()` returns, before the frame is decoded (`retrieve()`),
which is as close to the device as OpenCV lets us get. When a read fails (unplugged camera, a
driver hiccup, the end of a file handed in place of a device), the source reports `source_lost`,
releases the device and reopens it with a delay until it works again (`source_back`) or it has
tried `max_reconnects` times.

`prepare()` opens the device before the run starts it: `streamav live` calls it before the face
tracker and the model are loaded, so that a camera that is not there fails in a second, not
after an engine build.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import cv2

from streamav.clock import now_ns
from streamav.errors import DeviceError
from streamav.sources.base import AVSink

log = logging.getLogger(__name__)

_OPENCV_LOG_FATAL = 1  # cv2.setLogLevel: fatal messages only
_AV_LOG_QUIET = -8  # FFmpeg's AV_LOG_QUIET, for OpenCV's FFmpeg backend


@dataclass(frozen=True)
class CameraConfig:
    width_px: int = 640
    height_px: int = 480
    fps: float = 30.0
    reconnect_delay_s: float = 0.5
    max_reconnects: int | None = None  # None: keep trying for as long as the run lasts


def parse_camera(device: str | int) -> int | str:
    """'0' → 0 (an index); anything else (/dev/video2, a file path, a URL) stays a string."""
    if isinstance(device, int):
        return device
    return int(device) if device.strip().isdigit() else device


class CameraSource:
    """Frames from a camera index, a device path, or anything else OpenCV opens."""

    has_video = True
    has_audio = False

    def __init__(self, device: int | str = 0, config: CameraConfig = CameraConfig()) -> None:
        self.device = parse_camera(device)
        self.config = config
        self.name = f"camera:{self.device}"
        self._capture: cv2.VideoCapture | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.reconnects = 0

    def _open(self) -> cv2.VideoCapture | None:
        # OpenCV's and its FFmpeg's own lines ("can't open camera by index", "moov atom not
        # found") would come before our one error line, and again on every reconnect attempt.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", str(_AV_LOG_QUIET))
        previous_level = cv2.getLogLevel()
        cv2.setLogLevel(_OPENCV_LOG_FATAL)
        try:
            capture = cv2.VideoCapture(self.device)
        finally:
            cv2.setLogLevel(previous_level)
        if not capture.isOpened():
            capture.release()
            return None
        if isinstance(self.device, int):  # sizes and rates only mean something for devices
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width_px)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height_px)
            capture.set(cv2.CAP_PROP_FPS, self.config.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frames, not a backlog
        return capture

    def prepare(self) -> None:
        """Open the device now (a DeviceError if it cannot be); `start` then uses it."""
        if self._capture is None:
            self._capture = self._open()
        if self._capture is None:
            raise DeviceError(f"camera {self.device!r} could not be opened "
                              "(see `streamav devices` for the cameras found)")

    def start(self, sink: AVSink) -> None:
        self.prepare()
        self._thread = threading.Thread(target=self._run, args=(sink,), name="streamav-camera",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def error(self) -> BaseException | None:
        return self._error

    def _run(self, sink: AVSink) -> None:
        seq = 0
        try:
            while not self._stop.is_set():
                capture = self._capture
                if capture is not None and capture.grab():
                    t_capture_ns = now_ns()
                    t0 = time.perf_counter_ns()
                    ok, image = capture.retrieve()
                    if ok and image is not None and image.ndim == 3:
                        sink.write_video(seq, t_capture_ns, image, None,
                                         time.perf_counter_ns() - t0)
                        seq += 1
                        continue
                if not self._reconnect(sink):
                    return
        finally:
            sink.end_of_stream("video")

    def _reconnect(self, sink: AVSink) -> bool:
        """Release and reopen the device until it works. False when giving up or stopping."""
        sink.status("source_lost", f"{self.name}: read failed")
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        while not self._stop.is_set():
            limit = self.config.max_reconnects
            if limit is not None and self.reconnects >= limit:
                log.warning("%s: giving up after %d reconnects", self.name, self.reconnects)
                return False
            if self._stop.wait(self.config.reconnect_delay_s):
                return False
            self.reconnects += 1
            self._capture = self._open()
            if self._capture is not None:
                sink.status("source_back", f"{self.name}: reopened")
                return True
        return False
