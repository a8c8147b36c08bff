#!/usr/bin/env python3
"""The real-clip emotion checks of issue #10, through the command line as a user runs them.

    1. CREMA-D actor 1001: `streamav calibrate` on the first half of each of the six clips (one
       profile), then `streamav live --profile` on each second half (cut with PyAV); a clip is
       right when the mean probability of its `emotion` messages peaks at its label.
    2. The same actor, a profile from the neutral clip alone, `live --profile` on the other five.
    3. The eleven GRID clips (neutral read speech), `live` without a profile: the clip-level
       answer, whether it is uncertain (mean top probability < 0.5), the `emotion.change` count.
    4. CREMA-D without a profile: the clip-level answer of each clip.

Profiles go to a temporary $XDG_DATA_HOME, so the user's own are untouched. Prints one JSON
document; ~4 minutes on the 2-core machine. tests/test_calibrate_cli.py runs these functions.

    python scripts/emotion_real_clips.py [--shared ../shared/data] [--json out.json] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from streamav.host import streamav_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABEL_OF = {"ANG": "angry", "DIS": "disgusted", "FEA": "fear", "HAP": "happy",
            "NEU": "neutral", "SAD": "sad"}


MODEL_ARGS: list[str] = []  # ["--model", folder] for live and calibrate (default: shipped)


def cli(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    if args and args[0] in ("live", "calibrate"):
        args = (args[0], *MODEL_ARGS, *args[1:])
    return subprocess.run([*streamav_command(), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def crema_label(clip: Path) -> str:
    return LABEL_OF[clip.stem.split("_")[2]]


def duration_s(clip: Path) -> float:
    import av

    with av.open(str(clip)) as container:
        times = [f.time for f in container.decode(video=0)]
    return float(times[-1] + (times[-1] - times[-2]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_emotions(env: dict, *args: str) -> list[dict]:
    """Run `streamav live ARGS` (every frame, no preview) and return its `emotion` and
    `emotion.change` payloads, each with its topic."""
    import zmq

    from streamav.wire.protocol import decode

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"emotion")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    try:
        result = cli(env, "live", *args, "--no-preview", "--no-realtime", "--publish", endpoint,
                     "--control", "none")
        if result.returncode != 0:
            raise RuntimeError(f"streamav live {' '.join(args)}: {result.stderr.strip()}")
        messages = []
        while sub.poll(1500):
            messages.append(decode(sub.recv_multipart()))
    finally:
        sub.close(linger=0)
    return [{"topic": m.topic, **m.payload} for m in messages]


def clip_answer(messages: list[dict]) -> dict:
    rows = [m for m in messages if m["topic"] == "emotion"]
    probs = np.mean([m["probs"] for m in rows], axis=0)
    top = int(np.argmax(probs))
    return {"top": rows[0]["labels"][top], "mean_top_probability": round(float(probs[top]), 4),
            "uncertain": bool(probs[top] < 0.5),
            "changes": sum(m["topic"] == "emotion.change" for m in messages)}


def calibrate(env: dict, profile: str, label: str, video: Path, *extra: str) -> None:
    result = cli(env, "calibrate", "--profile", profile, "--label", label, "--video", str(video),
                 *extra)
    if result.returncode != 0:
        raise RuntimeError(f"streamav calibrate {video}: {result.stderr.strip()}")


def first_halves(env: dict, clips: list[Path], work: Path) -> list[dict]:
    from streamav.sources.media_cut import cut_media

    halves = {}
    for clip in clips:
        half = duration_s(clip) / 2.0
        calibrate(env, "halves", crema_label(clip), clip, "--end", f"{half:.3f}")
        halves[clip] = cut_media(clip, half, 1e9, work / "halves")
    out = []
    for clip, (video, wav) in halves.items():
        answer = clip_answer(live_emotions(env, "--video", str(video), "--audio", str(wav),
                                           "--profile", "halves"))
        out.append({"clip": clip.stem, "label": crema_label(clip), **answer})
    return out


def neutral_only(env: dict, clips: list[Path]) -> list[dict]:
    neutral = next(c for c in clips if crema_label(c) == "neutral")
    calibrate(env, "neutral-only", "neutral", neutral)
    return [{"clip": c.stem, "label": crema_label(c),
             **clip_answer(live_emotions(env, "--video", str(c), "--profile", "neutral-only"))}
            for c in clips if c != neutral]


def no_profile(env: dict, clips: list[Path], label: str | None = None) -> list[dict]:
    return [{"clip": c.stem, "label": label or crema_label(c),
             **clip_answer(live_emotions(env, "--video", str(c)))} for c in clips]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder for live and calibrate (default: the shipped one)")
    args = parser.parse_args()
    if args.model is not None:
        MODEL_ARGS[:] = ["--model", str(args.model.resolve())]
    crema = sorted((args.shared / "crema-d").glob("*.flv"))
    grid = sorted((args.shared / "grid").glob("*.mpg"))
    work = Path(tempfile.mkdtemp(prefix="streamav-emotion-"))
    env = dict(os.environ, XDG_DATA_HOME=str(work / "data"), GLOG_minloglevel="2")
    env.pop("DISPLAY", None)
    try:
        halves = first_halves(env, crema, work)
        neutral = neutral_only(env, crema)
        grid_rows = no_profile(env, grid, "neutral")
        crema_rows = no_profile(env, crema)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "crema_first_halves_profile": {"right": sum(r["top"] == r["label"] for r in halves),
                                       "of": len(halves), "clips": halves},
        "crema_neutral_profile": {"right": sum(r["top"] == r["label"] for r in neutral),
                                  "of": len(neutral), "clips": neutral},
        "grid_no_profile": {
            "neutral_or_uncertain": sum(r["top"] == "neutral" or r["uncertain"]
                                        for r in grid_rows),
            "argmax_neutral": sum(r["top"] == "neutral" for r in grid_rows),
            "confident_non_neutral": sum(r["top"] != "neutral"
                                         and r["mean_top_probability"] >= 0.8 for r in grid_rows),
            "max_changes": max(r["changes"] for r in grid_rows), "of": len(grid_rows),
            "clips": grid_rows},
        "crema_no_profile": {"right": sum(r["top"] == r["label"] for r in crema_rows),
                             "uncertain": sum(r["uncertain"] for r in crema_rows),
                             "of": len(crema_rows), "clips": crema_rows},
    }
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
