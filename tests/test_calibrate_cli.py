"""`streamav calibrate`, `streamav profiles` and `streamav live --profile` end to end, through
the CLI, with the shipped model, on the real CREMA-D actor (1001) and the real GRID speakers:

- a profile from the first halves of the six clips gets >= 5 of the six second halves right
  (clip level: the mean probability of the live run's `emotion` messages);
- a profile from the neutral clip alone gets >= 3 of the other five clips right (not yet:
  strict xfail, so that reaching it is noticed);
- without a profile, the eleven neutral GRID clips come out neutral or uncertain (>= 10 of
  11), none a confident (>= 0.8) other emotion, with at most two `emotion.change` each;
- bad input (unknown label, a clip with no face, an unreadable profile) is one line, exit 2,
  and nothing is overwritten.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import zmq

from conftest import CREMA_D_CLIPS, SHARED_DATA, cli_env, free_tcp_port, require_shared_data, \
    streamav_command

pytest.importorskip("torch")

GRID = SHARED_DATA / "grid"
LABEL_OF = {"ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy",
            "NEU": "neutral", "SAD": "sad"}


@pytest.fixture()
def env(tmp_path):
    environment = cli_env()
    environment["XDG_DATA_HOME"] = str(tmp_path / "data")  # the profiles go here
    return environment


def _cli(env, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*streamav_command(), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _label(clip: Path) -> str:
    return LABEL_OF[clip.stem.split("_")[2]]


def _duration_s(clip: Path) -> float:
    import av

    with av.open(str(clip)) as container:
        times = [f.time for f in container.decode(video=0)]
    return float(times[-1] + (times[-1] - times[-2]))


def _live_emotions(env, *args: str) -> list[dict]:
    """Run `streamav live ARGS` and return its `emotion` and `emotion.change` payloads."""
    from streamav.wire.protocol import decode

    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"emotion")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    try:
        result = _cli(env, "live", *args, "--no-preview", "--no-realtime", "--publish", endpoint,
                      "--control", "none")
        assert result.returncode == 0, result.stderr
        messages = []
        while sub.poll(1500):
            messages.append(decode(sub.recv_multipart()))
    finally:
        sub.close(linger=0)
    return [{"topic": m.topic, **m.payload} for m in messages]


def _clip_answer(messages: list[dict]) -> tuple[str, float]:
    rows = [m for m in messages if m["topic"] == "emotion"]
    probs = np.mean([m["probs"] for m in rows], axis=0)
    return rows[0]["labels"][int(np.argmax(probs))], float(probs.max())


def test_profile_from_first_halves_reads_second_halves(env, tmp_path):
    require_shared_data()
    from streamav.sources.media_cut import cut_media

    halves = {}
    for clip in CREMA_D_CLIPS:
        half = _duration_s(clip) / 2.0
        result = _cli(env, "calibrate", "--profile", "actor", "--label", _label(clip),
                      "--video", str(clip), "--end", f"{half:.3f}")
        assert result.returncode == 0, result.stderr
        halves[clip] = cut_media(clip, half, 1e9, tmp_path / "halves")
    listed = _cli(env, "profiles", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("actor"), listed.stdout
    right = []
    for clip, (video, wav) in halves.items():
        top, _ = _clip_answer(_live_emotions(env, "--video", str(video), "--audio", str(wav),
                                             "--profile", "actor"))
        right.append(top == _label(clip))
    print("second halves right:", right)
    assert sum(right) >= 5, right


@pytest.mark.xfail(strict=True, reason="issue #10 acceptance not met yet: 1 of 5 (2026-12-03). "
                   "The population head is fitted on synthetic expressions that do not match "
                   "real ones for several classes (the FACS generator of #10 item 2 is not built)")
def test_profile_from_the_neutral_clip_alone(env):
    require_shared_data()
    neutral = next(c for c in CREMA_D_CLIPS if _label(c) == "neutral")
    result = _cli(env, "calibrate", "--profile", "calm", "--label", "neutral",
                  "--video", str(neutral))
    assert result.returncode == 0, result.stderr
    assert "baseline only" in result.stderr
    right = [_clip_answer(_live_emotions(env, "--video", str(c), "--profile", "calm"))[0]
             == _label(c) for c in CREMA_D_CLIPS if c != neutral]
    print("other clips right:", right)
    assert sum(right) >= 3, right


def test_grid_neutral_speech_without_a_profile(env):
    clips = sorted(GRID.glob("*.mpg"))
    if len(clips) < 11:
        pytest.skip(f"the GRID clips are not at {GRID}")
    outcomes = []
    for clip in clips:
        messages = _live_emotions(env, "--video", str(clip))
        rows = [m for m in messages if m["topic"] == "emotion"]
        top, confidence = _clip_answer(messages)
        uncertain = confidence < 0.5
        changes = sum(m["topic"] == "emotion.change" for m in messages)
        assert all(("uncertain" in m and "baseline_s" in m) for m in rows)
        outcomes.append((clip.stem, top, round(confidence, 3), uncertain, changes))
    print(outcomes)
    assert sum(top == "neutral" or uncertain for _, top, _, uncertain, _ in outcomes) >= 10
    assert not [o for o in outcomes if o[1] != "neutral" and o[2] >= 0.8]
    assert max(o[4] for o in outcomes) <= 2


def test_calibrate_bad_inputs_are_one_line_and_change_nothing(env, tmp_path):
    require_shared_data()
    clip = CREMA_D_CLIPS[0]
    unknown = _cli(env, "calibrate", "--profile", "p", "--label", "bored", "--video", str(clip))
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "unknown label 'bored'" in unknown.stderr
    made = _cli(env, "calibrate", "--profile", "p", "--label", _label(clip), "--video", str(clip),
                "--end", "1.0")
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
