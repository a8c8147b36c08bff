"""`streamav live` with a model: a run on a real CREMA-D clip publishes every model topic, and a
bad model folder or noise spec is one clear line."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import zmq

from conftest import CREMA_D_CLIPS, cli_env, require_shared_data, streamav_command

torch = pytest.importorskip("torch")

MODEL_TOPICS = ("emotion", "video.denoised", "latent")  # + emotion.change when certain


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A default-preset model with its initial weights: publishing is the point here, not skill."""
    from streamav.model.config import preset
    from streamav.model.io import save_model
    from streamav.model.streaming import StreamingModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(StreamingModel(preset("default")), folder)
    return folder


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*streamav_command(), "live", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=180, stdin=subprocess.DEVNULL)


def _collect(endpoint: str, *args: str) -> dict[str, list]:
    """Run `streamav live ARGS --publish endpoint` and gather its messages by topic."""
    from streamav.wire.protocol import decode

    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    try:
        result = _run(*args, "--publish", endpoint, "--control", "none")
        assert result.returncode == 0, result.stderr
        messages = []
        while sub.poll(1500):
            messages.append(decode(sub.recv_multipart()))
    finally:
        sub.close(linger=0)
    by_topic: dict[str, list] = {}
    for message in messages:
        by_topic.setdefault(message.topic, []).append(message)
    return by_topic


def test_live_publishes_every_model_topic(model_folder, endpoint):
    require_shared_data()
    by_topic = _collect(endpoint, "--video", str(CREMA_D_CLIPS[0]), "--no-preview",
                        "--no-realtime", "--model", str(model_folder), "--noise", "occlude_mouth")
    assert set(MODEL_TOPICS) <= set(by_topic), sorted(by_topic)
    n_faces = sum(m.payload["found"] for m in by_topic["face"])
    assert len(by_topic["emotion"]) >= n_faces - 5  # one per frame with a face
    emotion = by_topic["emotion"][-1].payload
    assert len(emotion["labels"]) == len(emotion["probs"]) == 8
    assert abs(sum(emotion["probs"]) - 1.0) < 1e-3 and emotion["top"] in emotion["labels"]
    assert emotion["confidence"] == max(emotion["probs"])
    assert emotion["uncertain"] == (emotion["confidence"] < 0.5)
    if "emotion.change" in by_topic:
        change = by_topic["emotion.change"][0].payload
        assert change["from"] is None and change["to"] in emotion["labels"]
    else:  # an untrained head: flat probabilities, never certain, so no change is announced
        assert all(m.payload["uncertain"] for m in by_topic["emotion"])
    denoised = by_topic["video.denoised"][-1]
    assert (denoised.payload["width"], denoised.payload["height"]) == (64, 64)
    assert denoised.payload["format"] == "rgb24" and len(denoised.buffers[0]) == 64 * 64 * 3
    image = np.frombuffer(denoised.buffers[0], np.uint8)
    assert image.std() > 0  # a picture, not a constant
    latent = by_topic["latent"][-1].payload
    assert [len(latent[k]) for k in ("w", "z_av", "z_a", "z_v")] == [84, 16, 8, 4]
    assert all(np.isfinite(latent["w"]))
    frames = {m.payload["frame_seq"] for m in by_topic["emotion"]}
    assert frames <= {m.payload["frame_seq"] for m in by_topic["face"] if m.payload["found"]}
    final = [m for m in by_topic["stats"] if m.payload["final"]][0].payload
    assert final["latency_ms"]["model"]["p50"] > 0 and final["nonfinite_frames"] == 0
    assert final["model_engine"] == "onnx/cpu/fp32/b1"  # auto on a CPU
    # every message decoded as its topic's type (decode() raised otherwise), rounded on the wire
    from streamav.wire.messages import TOPIC_TYPES

    assert all(type(m.body) is TOPIC_TYPES[topic] for topic, got in by_topic.items() for m in got)
    assert all(p == round(p, 5) for p in emotion["probs"]) and len(set(emotion["probs"])) > 1
    landmarks = [xy for m in by_topic["face"] if m.payload["found"] for xy in m.payload["landmarks"]]
    assert landmarks and all(v == round(v, 2) for xy in landmarks for v in xy)


def test_live_on_onnx_publishes_what_eager_does(model_folder):
    """The same clip, every frame, through the live path on two backends: the emotion and the
    latents of every frame agree (the fp32 tolerance), the engine is named in the stats."""
    from conftest import free_tcp_port

    require_shared_data()
    runs = {}
    for backend in ("eager", "onnx"):
        by_topic = _collect(f"tcp://127.0.0.1:{free_tcp_port()}", "--video",
                            str(CREMA_D_CLIPS[1]), "--no-preview", "--no-realtime", "--model",
                            str(model_folder), "--backend", backend)
        final = [m for m in by_topic["stats"] if m.payload["final"]][0].payload
        assert final["model_engine"] == f"{backend}/cpu/fp32/b1"
        runs[backend] = {m.payload["frame_seq"]: m.payload for m in by_topic["emotion"]}, {
            m.payload["frame_seq"]: m.payload for m in by_topic["latent"]}
    (eager_emotion, eager_latent), (onnx_emotion, onnx_latent) = runs["eager"], runs["onnx"]
    assert len(eager_emotion) > 50 and eager_emotion.keys() == onnx_emotion.keys()
    for seq in eager_emotion:
        assert np.abs(np.subtract(eager_emotion[seq]["probs"], onnx_emotion[seq]["probs"])).max() <= 1e-4
        assert np.abs(np.subtract(eager_latent[seq]["w"], onnx_latent[seq]["w"])).max() <= 1e-4


def test_bad_model_folder_and_noise_are_one_line(tmp_path, endpoint):
    require_shared_data()
    clip = str(CREMA_D_CLIPS[0])
    for args, phrase in (
        (("--model", str(tmp_path / "missing")), "does not exist"),
        (("--model", str(tmp_path)), "incomplete"),
        (("--no-model", "--noise", "salt"), "unknown noise"),
    ):
        result = _run("--video", clip, "--no-preview", "--publish", endpoint, "--control", "none",
                      *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and phrase in result.stderr, result.stderr


def test_live_denoises_a_face_it_never_saw(tmp_path, endpoint):
    """The shipped model on a GRID speaker held out of its training, with gaussian 0.2 noise
    applied live: the published `video.denoised` frames beat the noisy crop by >= 8 dB against
    the clean crop the same run saved (`--save-features`)."""
    from conftest import SHARED_DATA
    from streamav.evaluate.metrics import psnr_db
    from streamav.frontend.corruption import parse_corruption
    from streamav.frontend.features import load_features

    require_shared_data()
    clip = SHARED_DATA / "grid" / "lwbsza.mpg"  # held out of the default model's training
    features = tmp_path / "features.npz"
    by_topic = _collect(endpoint, "--video", str(clip), "--no-preview", "--no-realtime",
                        "--noise", "gaussian:0.2", "--save-features", str(features))
    saved = load_features(features)
    index = {int(seq): i for i, seq in enumerate(saved.frame_seq)}
    denoised, clean = [], []
    for message in by_topic["video.denoised"]:
        i = index[message.payload["frame_seq"]]
        assert saved.face_found[i]
        denoised.append(np.frombuffer(message.buffers[0], np.uint8).reshape(64, 64, 3))
        clean.append(saved.face_crop_rgb[i])
    assert len(denoised) >= 60, len(denoised)
    clean_u8 = np.stack(clean)
    noisy = parse_corruption("gaussian:0.2").apply(clean_u8, np.random.default_rng(1))
    psnr_denoised = psnr_db(clean_u8 / 255.0, np.stack(denoised) / 255.0).mean()
    psnr_noisy = psnr_db(clean_u8 / 255.0, noisy / 255.0).mean()
    assert psnr_denoised >= psnr_noisy + 8.0, (psnr_denoised, psnr_noisy)
