"""`streamav train` on a real cache: each stage's loss falls, checkpoints resume, the model folder
is written and loads, and the emotion stage fits the head on w."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import CREMA_D_CLIPS, cli_env, require_shared_data, streamav_command

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    require_shared_data()
    from streamav.corpus.cache import build_cache

    root = tmp_path_factory.mktemp("corpus")
    for clip in CREMA_D_CLIPS[:3]:
        (root / clip.name).symlink_to(clip)
    out = tmp_path_factory.mktemp("cache")
    build_cache(root, "crema-d", out, workers=0)
    return out


def _falls(history: list[float]) -> bool:
    return np.mean(history[-3:]) < np.mean(history[:3])


def test_stages_train_resume_and_write_a_model(cache, tmp_path):
    from streamav.model.io import load_model
    from streamav.train.stages import train_stage

    out = tmp_path / "model"
    audio = train_stage("vqvae-audio", cache, out, steps=30, batch_size=16)
    assert _falls(json.loads((out / "train/vqvae-audio/progress.json").read_text())
                  ["history"]["loss"])
    visual = train_stage("vqvae-visual", cache, out, steps=30, batch_size=8)
    assert _falls(json.loads((out / "train/vqvae-visual/progress.json").read_text())
                  ["history"]["loss"])
    mdvae = train_stage("mdvae", cache, out, steps=20, batch_size=2, learning_rate=1e-3)
    assert _falls(json.loads((out / "train/mdvae/progress.json").read_text())["history"]["loss"])
    assert audio["steps"] == 30 and visual["final"]["mse"] < 0.1 and mdvae["resumed_from"] == 0
    for stage in ("vqvae-audio", "vqvae-visual", "mdvae"):
        assert (out / "train" / stage / "loss.png").stat().st_size > 1000
    # Resume: asking for more steps continues from the checkpoint, not from scratch.
    more = train_stage("vqvae-audio", cache, out, steps=35, batch_size=16)
    assert more["resumed_from"] == 30 and more["steps"] == 35
    emotion = train_stage("emotion", cache, out)
    assert emotion["examples"] > 50 and emotion["train_accuracy"] > 0.5
    model = load_model(out)
    meta = json.loads((out / "config.json").read_text())
    assert set(meta["extra"]["training"]) == {"vqvae-audio", "vqvae-visual", "mdvae", "emotion"}
    probs = model.emotion(torch.zeros(1, model.cfg.mdvae.w_dim))
    assert torch.allclose(probs.sum(), torch.tensor(1.0))
    # --estimator-only: the estimator is fitted again, the weights and config are not touched
    weights, config = (out / "model.safetensors").read_bytes(), (out / "config.json").read_bytes()
    for name in ("emotion.json", "emotion.safetensors"):
        (out / name).unlink()
    only = train_stage("emotion", cache, out, estimator_only=True)
    assert only["estimator"]["train_frames"] > 50 and "examples" not in only
    root = Path(json.loads((cache / "manifest.json").read_text())["root"])
    assert only["estimator"]["cache"] == (f"a cache of the crema-d corpus {root.name!r}, "
                                          "--split-seed 0")  # named, not a local path
    assert (out / "emotion.safetensors").is_file() and (out / "emotion.json").is_file()
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "config.json").read_bytes() == config
    from streamav.errors import InputError

    with pytest.raises(InputError, match="emotion stage"):
        train_stage("mdvae", cache, out, estimator_only=True)
    with pytest.raises(InputError, match="has none"):
        train_stage("emotion", cache, tmp_path / "no-model", estimator_only=True)


def test_train_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([*streamav_command(), "train", "mdvae", "--cache", str(tmp_path),
                             "--out", str(tmp_path / "m")], capture_output=True, text=True,
                            env=cli_env(), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a feature cache" in result.stderr
    result = subprocess.run([*streamav_command(), "train", "sing", "--cache", str(tmp_path),
                             "--out", str(tmp_path / "m")], capture_output=True, text=True,
                            env=cli_env(), timeout=120)
    assert result.returncode == 2 and "unknown stage" in result.stderr
