"""The real preview window: an OpenCV (Qt) window on a virtual X display (Xvfb), closed by
pressing `q` (xdotool). Skipped where Xvfb or xdotool is missing (.ci/run installs both)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import OBAMA, cli_env, free_tcp_port, require_shared_data, streamav_command


@pytest.fixture
def virtual_display():
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        pytest.skip("Xvfb and xdotool are needed (apt-get install xvfb xdotool)")
    display = f":{100 + os.getpid() % 500}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if server.poll() is not None:
        pytest.skip("Xvfb did not start")
    yield display
    server.terminate()
    server.wait(10)


def _find_window(env: dict, title: str, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = subprocess.run(["xdotool", "search", "--name", title], env=env,
                               capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.split()[0]
        time.sleep(0.2)
    return None


def test_preview_window_opens_and_q_quits(virtual_display, tmp_path):
    require_shared_data()
    env = cli_env()
    env["DISPLAY"] = virtual_display
    stats = tmp_path / "stats.json"
    live = subprocess.Popen(
        [*streamav_command(), "live", "--video", str(OBAMA), "--publish",
         f"tcp://127.0.0.1:{free_tcp_port()}", "--control", "none", "--stats-json", str(stats)],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        window = _find_window(env, "streamav", timeout_s=30)
        assert window is not None, "no preview window appeared"
        time.sleep(1.0)  # let it show a few frames
        subprocess.run(["xdotool", "windowactivate", "--sync", window], env=env, check=False)
        subprocess.run(["xdotool", "key", "--window", window, "q"], env=env, check=True)
        assert live.wait(15) == 0  # the clip lasts 20 s: only `q` ends it this early
    finally:
        live.kill()
    stderr = live.stderr.read()
    assert "running without preview" not in stderr
    document = json.loads(stats.read_text())
    assert document["stop_reason"] == "quit from the preview"
    assert 10 < document["stats"]["frames"] < 500
