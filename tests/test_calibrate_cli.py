"""`streamav calibrate`, `streamav profiles` and `streamav live --profile` end to end, through
the CLI, with the shipped model, on the real CREMA-D actor (1001) and the real GRID speakers:

- a profile from the first halves of the six clips gets >= 5 of the six second halves right
  (clip level: the mean probability of the live run's `emotion` messages);
- a profile from the neutral clip alone gets >= 3 of the other five clips right (issue #10;
  NOT met by the v2.8 head: 0 of 5 (v2.7: 1), an expected failure; v2.4's 3 of 5 was a lucky
  draw among heads equally good on synthetic faces, docs/model.md "v2.7 head" and "v2.8 head");
- without a profile, the eleven neutral GRID clips come out neutral or uncertain (>= 10 of
  11), none a confident (>= 0.8) other emotion, with at most two `emotion.change` each;
- bad input (unknown label, a clip with no face, an unreadable profile) is one line, exit 2,
  and nothing is overwritten.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CREMA_D_CLIPS, REPO, SHARED_DATA, cli_env, free_tcp_port, \
    require_shared_data

pytest.importorskip("torch")
sys.path.insert(0, str(REPO / "scripts"))
import emotion_real_clips as real  # noqa: E402  (the script is the one implementation)

GRID = SHARED_DATA / "grid"


@pytest.fixture()
def env(tmp_path):
    environment = cli_env()
    environment["XDG_DATA_HOME"] = str(tmp_path / "data")  # the profiles go here
    return environment


def _cli(env, *args: str) -> subprocess.CompletedProcess:
    return real.cli(env, *args)


def test_profile_from_first_halves_reads_second_halves(env, tmp_path):
    require_shared_data()
    rows = real.first_halves(env, CREMA_D_CLIPS, tmp_path)
    listed = _cli(env, "profiles", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("halves"), listed.stdout
    print(rows)
    assert sum(r["top"] == r["label"] for r in rows) >= 5, rows


@pytest.mark.xfail(strict=True, reason="issue #10 target not met by the v2.8 head: 0 of 5 "
                   "(angry and sad read as neutral, fear and happy as surprised, disgusted as "
                   "angry; v2.7: 1); heads fitted on random synthetic speaker subsets get 1-2 of "
                   "5 (docs/model.md)")
def test_profile_from_the_neutral_clip_alone(env):
    require_shared_data()
    rows = real.neutral_only(env, CREMA_D_CLIPS)
    print(rows)
    assert sum(r["top"] == r["label"] for r in rows) >= 3, rows


def test_grid_neutral_speech_without_a_profile(env):
    clips = sorted(GRID.glob("*.mpg"))
    if len(clips) < 11:
        pytest.skip(f"the GRID clips are not at {GRID}")
    rows = real.no_profile(env, clips, "neutral")
    print(rows)
    assert sum(r["top"] == "neutral" or r["uncertain"] for r in rows) >= 10
    assert not [r for r in rows if r["top"] != "neutral" and r["mean_top_probability"] >= 0.8]
    assert max(r["changes"] for r in rows) <= 2
    messages = real.live_emotions(env, "--video", str(clips[0]), "--max-frames", "20")
    assert all("uncertain" in m and "baseline_s" in m for m in messages
               if m["topic"] == "emotion")


def test_calibrate_bad_inputs_are_one_line_and_change_nothing(env, tmp_path):
    require_shared_data()
    clip = CREMA_D_CLIPS[0]
    unknown = _cli(env, "calibrate", "--profile", "p", "--label", "bored", "--video", str(clip))
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "unknown label 'bored'" in unknown.stderr
    made = _cli(env, "calibrate", "--profile", "p", "--label", real.crema_label(clip),
                "--video", str(clip), "--end", "1.0")
    assert made.returncode == 0, made.stderr
    profile_json = Path(env["XDG_DATA_HOME"]) / "streamav" / "profiles" / "p.json"
    before = profile_json.read_bytes()
    blank = _blank_video(tmp_path / "blank.mp4")
    faceless = _cli(env, "calibrate", "--profile", "p", "--label", "sad", "--video", str(blank),
                    "--no-audio")
    assert faceless.returncode == 2 and "no face" in faceless.stderr, faceless.stderr
    assert faceless.stderr.count("\n") == 1
    assert profile_json.read_bytes() == before
    profile_json.with_suffix(".safetensors").write_bytes(b"\0" * 16)
    broken = _cli(env, "live", "--video", str(clip), "--no-preview", "--no-realtime",
                  "--control", "none", "--profile", "p", "--publish",
                  f"tcp://127.0.0.1:{free_tcp_port()}")
    assert broken.returncode == 2 and "cannot be read" in broken.stderr, broken.stderr
    missing = _cli(env, "live", "--video", str(clip), "--profile", "nobody", "--no-preview")
    assert missing.returncode == 2 and "no such profile" in missing.stderr, missing.stderr
    removed = _cli(env, "profiles", "remove", "p")
    assert removed.returncode == 0 and not profile_json.exists()


def _blank_video(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(20):
            image = np.full((120, 160, 3), 40 + i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_control_socket_loads_a_profile_and_resets(env):
    """`profile.load` switches the profile of a running `live` (its `emotion` messages say so and
    read against a fixed baseline), an unknown name answers ok false, `reset` answers ok."""
    require_shared_data()
    import time

    import zmq

    from conftest import OBAMA
    from streamav.wire.control import request
    from streamav.wire.protocol import decode

    clip = CREMA_D_CLIPS[0]
    made = _cli(env, "calibrate", "--profile", "me", "--label", real.crema_label(clip),
                "--video", str(clip))
    assert made.returncode == 0, made.stderr
    pub, ctl = free_tcp_port(), free_tcp_port()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"emotion")
    sub.connect(f"tcp://127.0.0.1:{pub}")
    process = subprocess.Popen(
        [*real.streamav_command(), "live", "--video", str(OBAMA), "--no-preview",
         "--publish", f"tcp://127.0.0.1:{pub}", "--control", f"tcp://127.0.0.1:{ctl}",
         "--duration", "20"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = f"tcp://127.0.0.1:{ctl}"
        reply = None
        for _ in range(200):  # the model and its engine load first
            try:
                reply = request(endpoint, "profile.load", timeout_s=0.5, name="nobody")
                break
            except Exception:
                time.sleep(0.1)
        assert reply is not None and reply["ok"] is False and "nobody" in reply["error"]
        assert request(endpoint, "profile.load", name="me")["ok"] is True
        deadline, seen = time.monotonic() + 15, None
        while time.monotonic() < deadline and seen is None:
            if sub.poll(500):
                payload = decode(sub.recv_multipart()).payload
                if payload.get("profile") == "me":
                    seen = payload
        assert seen is not None and seen["baseline_s"] is None  # a profile's fixed baseline
        assert request(endpoint, "reset")["ok"] is True
        assert request(endpoint, "profile.load", name=None)["ok"] is True
        deadline, unprofiled = time.monotonic() + 10, None
        while time.monotonic() < deadline and unprofiled is None:
            if sub.poll(500):
                payload = decode(sub.recv_multipart()).payload
                if payload.get("profile") is None:
                    unprofiled = payload
        assert unprofiled is not None and unprofiled["baseline_s"] < 10  # a fresh running baseline
        process.terminate()
        assert process.wait(30) == 0, process.stderr.read()
    finally:
        process.kill()
        sub.close(linger=0)
