"""Results without a display (#11 items 2 and 5): `streamav live --demo` run for real with
--csv and --write-video, its final line and demo summary, the status line on a real
pseudo-terminal, a missing camera failing at once, and help without `<bool>`.

The demo runs once (offline, every frame) for the tests that read its files; each run is a
real `streamav` subprocess on the bundled clip with the shipped model on ONNX Runtime."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, free_tcp_port, streamav_command

STREAMAV = streamav_command()


def _run(*args: str, env=None, timeout_s: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*STREAMAV, *args], capture_output=True, text=True, timeout=timeout_s,
                          env=env or cli_env(), stdin=subprocess.DEVNULL)


def _model_labels() -> tuple[str, ...]:
    from streamav.emotion.estimator import EmotionEstimator
    from streamav.model_stage import default_model_folder

    return tuple(EmotionEstimator.load(default_model_folder()).labels)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One `live --demo --no-realtime` run with every output; TMPDIR points at a fresh folder
    so that the demo's strip lands there."""
    folder = tmp_path_factory.mktemp("demo")
    temp = folder / "tmp"
    temp.mkdir()
    env = cli_env()
    env["TMPDIR"] = str(temp)
    paths = {"csv": folder / "out" / "frames.csv", "video": folder / "out" / "seen.mp4",
             "stats_json": folder / "stats.json"}
    result = _run("live", "--demo", "--no-preview", "--no-realtime", "--control", "none",
                  "--publish", f"tcp://127.0.0.1:{free_tcp_port()}",
                  "--csv", str(paths["csv"]), "--write-video", str(paths["video"]),
                  "--stats-json", str(paths["stats_json"]), env=env)
    assert result.returncode == 0, result.stderr
    stats = json.loads(paths["stats_json"].read_text())["stats"]
    return {"result": result, "stats": stats, "temp": temp, **paths}


def test_the_final_line_names_the_engine_and_the_top_emotions(demo):
    last = demo["result"].stderr.strip().splitlines()[-1]
    assert last.startswith("streamav: ") and "model on onnx/cpu/fp32/b1" in last, last
    found = re.search(r"; emotion: (.+?) of (\d+) face frames", last)
    assert found, last
    named = re.findall(r"(\w+) (\d+) %", found.group(1))
    labels = _model_labels()
    assert named and all(label in labels for label, _ in named), last
    shares = [int(share) for _, share in named]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 101
    assert int(found.group(2)) == demo["stats"]["faces_found"]
    assert last.endswith("stopped: end of input")


def test_the_demo_prints_a_timeline_and_writes_the_denoised_strip(demo):
    lines = demo["result"].stderr.strip().splitlines()
    timeline = [line for line in lines if line.startswith("streamav: emotion per second: ")]
    assert len(timeline) == 1, lines
    labels = _model_labels()
    spans = re.findall(r"(\d+)-(\d+) s (\w+)\??", timeline[0])
    assert spans and spans[0][0] == "0" and all(label in labels for _, _, label in spans)
    assert spans[-1][1] == "2"  # the clip's 56 frames: 0 to 1.86 s
    strip_line = [line for line in lines if "denoised strip" in line]
    assert len(strip_line) == 1, lines
    path = Path(strip_line[0].rsplit(": ", 1)[1])
    assert path.parent.parent == demo["temp"] and path.is_file()
    import cv2

    image = cv2.imread(str(path))
    assert image.shape == (2 * 128 + 4, 8 * 132 - 4, 3)
    assert image[:128, :128].std() > 10 and image[132:, :128].std() > 10  # faces, not blanks


def test_csv_has_one_row_per_processed_frame_and_the_py_feat_style_columns(demo):
    from streamav.run_outputs import CSV_BACK, CSV_FRONT

    with demo["csv"].open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, rows = tuple(rows[0]), rows[1:]
    labels = _model_labels()
    assert header == CSV_FRONT + labels + CSV_BACK
    assert header[:4] == ("frame", "timestamp_s", "face_found", "face_x")
    stats = demo["stats"]
    assert len(rows) == stats["frames"] == 56
    column = {name: i for i, name in enumerate(header)}
    frames = [int(r[column["frame"]]) for r in rows]
    assert frames == list(range(56))  # offline: every frame, in order
    times = [float(r[column["timestamp_s"]]) for r in rows]
    assert all(b > a for a, b in zip(times, times[1:])) and times[-1] < 2.0
    found = [r for r in rows if r[column["face_found"]] == "1"]
    assert len(found) == stats["faces_found"]
    for row in found:
        x, y, w, h = (float(row[column[k]]) for k in ("face_x", "face_y", "face_width",
                                                         "face_height"))
        assert 0 <= x < 480 and 0 <= y < 360 and 20 < w < 480 and 20 < h < 360
        probs = np.array([float(row[column[label]]) for label in labels])
        assert abs(probs.sum() - 1.0) < 1e-3
        assert row[column["emotion_top"]] == labels[int(np.argmax(probs))]
        assert abs(float(row[column["emotion_confidence"]]) - probs.max()) < 1e-4
        assert row[column["uncertain"]] in ("0", "1")
    assert f"wrote {demo['csv']} (56 rows)" in demo["result"].stderr


def test_write_video_is_decodable_with_one_frame_per_processed_frame(demo):
    import av

    with av.open(str(demo["video"])) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="bgr24"))
            times.append(frame.time)
    assert len(frames) == demo["stats"]["frames"] == 56
    assert frames[0].shape == (504, 480 + 160, 3)  # the clip's 480x360 and the 160 px panel
    assert all(b > a for a, b in zip(times, times[1:])) and times[-1] < 2.0
    panel = frames[-1][:, 480:]
    assert panel[8:136, 16:144].std() > 10  # the crop
    assert panel[144:272, 16:144].std() > 10  # the denoised face
    bars = panel[306:410, 16 + 52:144]
    green = (np.abs(bars.astype(int) - (80, 220, 80)).sum(axis=2) < 90).sum()
    assert green > 20  # the top class's bar, in green
    assert f"wrote {demo['video']} (56 frames)" in demo["result"].stderr


def test_no_status_line_when_stderr_is_not_a_terminal(demo):
    assert "latency" not in demo["result"].stderr and "\x1b[" not in demo["result"].stderr


def test_the_status_line_on_a_terminal(tmp_path):
    """stderr on a real pseudo-terminal: the line is drawn (fps, latency, face, emotion) and
    erased (transient), and the final summary is the last line."""
    main, child = pty.openpty()
    try:
        process = subprocess.Popen(
            [*STREAMAV, "live", "--demo", "--no-preview", "--control", "none", "--publish",
             f"tcp://127.0.0.1:{free_tcp_port()}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child,
            env={**cli_env(), "TMPDIR": str(tmp_path), "COLUMNS": "100", "TERM": "xterm"})
        os.close(child)
        child = -1
        output = b""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        assert process.wait(30) == 0, output.decode(errors="replace")
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    raw = output.decode(errors="replace")
    assert "\x1b[2K" in raw  # erased when the run ended
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # without rich's colours
    line = r"● +\d+\.\d s +\d+\.\d fps +latency \d+\.\d ms +face ✓ +"
    emotion = r"(learning face \d+s|uncertain \(\w+ 0\.\d\d\)|\w+ 0\.\d\d)"
    assert re.search(line + emotion, text), text
    last = text.strip().splitlines()[-1]
    assert last.startswith("streamav: ") and "; emotion: " in last, text


def test_no_camera_fails_in_under_3_s_with_one_line():
    """Before any engine build: the camera is opened before the face tracker and the model."""
    if os.path.exists("/dev/video9"):
        pytest.skip("this machine has a /dev/video9")
    started = time.monotonic()
    result = _run("live", "--camera", "9", timeout_s=60)
    elapsed_s = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        "streamav: error: camera 9 could not be opened (see `streamav devices` for the "
        "cameras found)"], result.stderr
    assert elapsed_s < 3.0, elapsed_s


@pytest.mark.parametrize("args, phrase", [
    (["--write-video", "{tmp}/seen.avi"], "--write-video {tmp}/seen.avi: give a file ending in"),
    (["--write-video", "{tmp}"], "--write-video {tmp} is a directory"),
    (["--csv", "{tmp}"], "--csv {tmp} is a directory"),
    (["--csv", "{tmp}/blocker/frames.csv"], "--csv {tmp}/blocker/frames.csv: "),
])
def test_output_paths_are_refused_before_the_run(tmp_path, args, phrase):
    (tmp_path / "blocker").write_text("")  # a file where a folder would be needed
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    started = time.monotonic()
    result = _run("live", "--demo", "--no-preview", *args, timeout_s=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "streamav: error: " + phrase.replace("{tmp}", str(tmp_path))), result.stderr
    assert time.monotonic() - started < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_help_has_no_bool_metavars_and_live_has_examples():
    commands = [[], ["live"], ["subscribe"], ["train"], ["eval"], ["build-engines"], ["bench"],
                ["calibrate"], ["devices"], ["profiles"], ["profiles", "list"], ["corpus"]]
    for command in commands:
        result = _run(*command, "--help", env={**cli_env(), "COLUMNS": "200"}, timeout_s=60)
        assert result.returncode == 0, (command, result.stderr)
        assert "<bool>" not in result.stdout, (command, result.stdout)
    live = _run("live", "--help", env={**cli_env(), "COLUMNS": "200"}).stdout  # no wrapping
    assert "Examples:" in live and "streamav live --demo" in live and "--csv" in live
    assert "(default: 640)" in live and "(default: tcp://127.0.0.1:5555)" in live
    for flag in ("--no-audio", "--demo", "--no-model", "--help"):
        row = next(line for line in live.splitlines() if f" {flag} " in line)
        assert "<" not in row, row
