"""What `streamav devices` shows: the cameras and audio inputs this machine has.

Cameras: on Linux every /dev/video* node, named from sysfs and opened once with OpenCV's V4L2
backend to read its default size and rate (metadata nodes simply do not open); elsewhere the
first few OpenCV indices. Audio inputs come from PortAudio via the microphone source; without
PortAudio the table is replaced by one line saying how to install it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamav.errors import DeviceError, MissingDependencyError

SYSFS_V4L = Path("/sys/class/video4linux")
N_PROBED_INDICES = 3  # camera indices tried where there are no /dev/video* nodes to list
OPENCV_LOG_FATAL = 1  # cv2.setLogLevel: only fatal messages (no "can't open camera" warnings)


def list_cameras() -> list[dict[str, Any]]:
    """One dict per camera: index, path (None off Linux), name, opens, width_px, height_px, fps,
    backend. `opens` is False for nodes OpenCV cannot capture from (e.g. metadata nodes)."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            f"OpenCV cannot be imported ({exc}); install it with: pip install opencv-contrib-python"
        ) from exc
    previous_level = cv2.getLogLevel()
    cv2.setLogLevel(OPENCV_LOG_FATAL)
    try:
        if sys.platform.startswith("linux"):
            return [_probe(cv2, _node_number(path), str(path), _v4l_name(path), cv2.CAP_V4L2)
                    for path in sorted(Path("/dev").glob("video*"), key=_node_number)
                    if _node_number(path) >= 0]
        cameras = [_probe(cv2, index, None, f"camera {index}", cv2.CAP_ANY)
                   for index in range(N_PROBED_INDICES)]
        return [camera for camera in cameras if camera["opens"]]
    finally:
        cv2.setLogLevel(previous_level)


def _node_number(path: Path) -> int:
    match = re.fullmatch(r"video(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _v4l_name(path: Path) -> str:
    try:
        return (SYSFS_V4L / path.name / "name").read_text().strip()
    except OSError:
        return ""


def _probe(cv2: Any, index: int, path: str | None, name: str, api: int) -> dict[str, Any]:
    """Open once, read the properties the driver reports without grabbing a frame, release."""
    capture = cv2.VideoCapture(path if path is not None else index, api)
    try:
        opens = bool(capture.isOpened())
        width_px = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) if opens else None
        height_px = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) if opens else None
        fps = float(capture.get(cv2.CAP_PROP_FPS)) if opens else None
        backend = str(capture.getBackendName()) if opens else None
    finally:
        capture.release()
    return {"index": index, "path": path, "name": name, "opens": opens, "width_px": width_px,
            "height_px": height_px, "fps": fps or None, "backend": backend}


def print_devices(console: Console) -> None:
    """Print a table of cameras and a table of audio inputs (or one line on what is missing)."""
    try:
        cameras = list_cameras()
    except MissingDependencyError as exc:
        console.print(Text(f"Cameras: {exc}"))
    else:
        console.print(_camera_table(cameras) if cameras else Text("Cameras: none found"))

    from streamav.sources.microphone import list_input_devices  # PortAudio only from here

    try:
        inputs = list_input_devices()
    except (MissingDependencyError, DeviceError) as exc:
        console.print(Text(f"Audio inputs: {exc}"))
        return
    console.print(_audio_table(inputs) if inputs else Text("Audio inputs: none found"))


def _camera_table(cameras: list[dict[str, Any]]) -> Table:
    table = Table(title="Cameras (streamav live --camera INDEX)", title_justify="left")
    for column in ("Index", "Device", "Name", "Size", "FPS", "Usable"):
        table.add_column(column)
    for camera in cameras:
        size = f"{camera['width_px']}x{camera['height_px']}" if camera["opens"] else "-"
        fps = f"{camera['fps']:.1f}" if camera["fps"] else "-"
        usable = "yes" if camera["opens"] else "no (cannot capture)"
        table.add_row(str(camera["index"]), camera["path"] or "-", Text(camera["name"] or "-"),
                      size, fps, usable)
    return table


def _audio_table(inputs: list[dict[str, Any]]) -> Table:
    table = Table(title="Audio inputs (streamav live --mic INDEX|NAME)", title_justify="left")
    for column in ("Index", "Name", "Host API", "Channels", "Default rate (Hz)", "Default"):
        table.add_column(column)
    for device in inputs:
        table.add_row(str(device["index"]), Text(device["name"]), device["hostapi"],
                      str(device["channels"]), f"{device['default_samplerate']:.0f}",
                      "*" if device["is_default"] else "")
    return table
