"""The runtime without PyTorch: the step shipped as ONNX (streamav/data/model/step.onnx).

- the shipped step.onnx was made from the shipped model.safetensors (so forgetting to run
  scripts/export_step.py after a weights change fails here), and is under 20 MB;
- it computes what the eager PyTorch step does over the demo clip's real frames, the state
  fed back (tolerances below);
- a stale or corrupt step is refused with the reason, never run;
- `streamav live --demo` in a Python where torch (and onnx, onnxscript, scikit-image: the
  `train` extra) cannot be imported runs the model on ONNX Runtime, publishes emotions and
  denoised faces, and never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zmq

from conftest import REPO, cli_env
from streamav.engines.shipped import STEP_FILE, STEP_MANIFEST, find_shipped_step
from streamav.errors import MissingDependencyError
from streamav.host import file_sha256
from streamav.model.config import ModelConfig
from streamav.model_stage import default_model_folder

MAX_BYTES = 20 * 1024 * 1024
# Max abs against eager over the demo clip (56 frames, state fed back). docs/model.md: the ONNX
# export runs within ~2e-6 of eager; measured here face 2.4e-7, probabilities 5.7e-7, w 2.9e-6,
# GRU states 1.5e-6. The limits leave ~5x room for other CPUs' float32 kernels; the engines'
# fp32 tolerance (parity.TOLERANCES, 1e-4 on face and probabilities) is 10x looser still.
TOLERANCE = {"face_hat": 1e-5, "emotion_probs": 1e-5, "w_mean": 2e-5, "w_var": 2e-5,
             "z_av": 2e-5, "z_a": 2e-5, "z_v": 2e-5}
STATE_TOLERANCE = 2e-5
SPECTRUM_RELATIVE = 1e-5  # spectrum_hat is raw power (up to ~1e3): relative to the frame's peak
NO_TRAIN_EXTRA = ("torch", "onnx", "onnxscript", "skimage")


@pytest.fixture(scope="module")
def shipped():
    folder = default_model_folder()
    if not (folder / STEP_FILE).is_file():
        pytest.fail(f"{folder} has no {STEP_FILE}: run python scripts/export_step.py")
    step, why = find_shipped_step(folder)
    assert step is not None, f"{folder / STEP_FILE}: {why}"
    return step


def test_the_shipped_step_was_made_from_the_shipped_weights_and_is_small(shipped):
    folder = default_model_folder()
    assert shipped.manifest["source"]["weights_sha256"] == file_sha256(folder / "model.safetensors")
    settings = ModelConfig.from_dict(json.loads((folder / "config.json").read_text())["model"])
    assert shipped.manifest["source"]["config_sha256"] == settings.sha256()
    assert shipped.manifest["sha256"] == file_sha256(shipped.path)
    assert shipped.path.stat().st_size < MAX_BYTES
    config = json.loads((folder / "config.json").read_text())
    assert shipped.labels == tuple(config["labels"])
    assert shipped.manifest["batch"] == 1


def test_the_shipped_step_computes_what_eager_does_over_real_frames(shipped):
    torch = pytest.importorskip("torch")
    from streamav.data import demo_clip_path
    from streamav.engines.backends.onnx_numpy import NumpyOnnxStep
    from streamav.offline_features import extract_clip_features
    from streamav.model.inputs import face_to_model
    from streamav.model.io import load_model

    features = extract_clip_features(demo_clip_path())
    keep = features.face_found
    spectra = features.spectrum[keep].astype(np.float32)
    faces = face_to_model(features.face_crop_rgb[keep]).astype(np.float32)
    assert len(spectra) >= 40
    model = load_model(default_model_folder())
    step = NumpyOnnxStep(shipped, threads=1)
    state, eager_state = step.initial_state(), model.initial_state(1)
    for a, b in zip(state, eager_state):
        assert np.array_equal(a, b.numpy())
    worst: dict[str, float] = {}
    with torch.inference_mode():
        for t in range(len(spectra)):
            outputs, state = step.step(spectra[t:t + 1], faces[t:t + 1], state)
            reference, eager_state = model.step(torch.from_numpy(spectra[t:t + 1]),
                                                torch.from_numpy(faces[t:t + 1]), eager_state)
            for name, value in reference._asdict().items():
                diff = float(np.abs(outputs[name] - value.numpy()).max())
                if name == "spectrum_hat":
                    diff /= max(1.0, float(value.abs().max()))
                worst[name] = max(worst.get(name, 0.0), diff)
            for i, (a, b) in enumerate(zip(state, eager_state)):
                worst[f"state{i}"] = max(worst.get(f"state{i}", 0.0),
                                         float(np.abs(a - b.numpy()).max()))
    for name, limit in TOLERANCE.items():
        assert worst[name] <= limit, (name, worst)
    assert worst["spectrum_hat"] <= SPECTRUM_RELATIVE, worst
    assert all(worst[f"state{i}"] <= STATE_TOLERANCE for i in range(len(state))), worst


def _copy_model(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_folder(), folder)
    return folder


def test_a_stale_or_corrupt_step_is_refused_with_the_reason(tmp_path, monkeypatch):
    from streamav import model_runner
    from streamav.engines.choice import EngineChoice
    from streamav.model_runner import open_runner

    folder = _copy_model(tmp_path)
    assert find_shipped_step(folder)[0] is not None
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights, as after retraining without re-exporting
    weights.write_bytes(bytes(data))
    step, why = find_shipped_step(folder)
    assert step is None and "stale" in why and "export_step.py" in why
    monkeypatch.setattr(model_runner, "torch_importable", lambda: False)
    with pytest.raises(MissingDependencyError, match="stale"):
        open_runner(folder, EngineChoice())

    folder = _copy_model(tmp_path / "settings")  # same weights, the filter's settings changed
    config = json.loads((folder / "config.json").read_text())
    config["model"]["refine"]["motion_share"] = 0.5
    (folder / "config.json").write_text(json.dumps(config))
    step, why = find_shipped_step(folder)
    assert step is None and "other settings" in why and "export_step.py" in why

    folder = _copy_model(tmp_path / "b")
    with open(folder / STEP_FILE, "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    step, why = find_shipped_step(folder)
    assert step is None and "sha256" in why
    (folder / STEP_MANIFEST).unlink()
    assert find_shipped_step(folder) == (None, f"no {STEP_MANIFEST}")


def test_without_torch_other_engines_ask_for_it(monkeypatch):
    from streamav import model_runner
    from streamav.engines.choice import EngineChoice
    from streamav.model_runner import open_runner

    monkeypatch.setattr(model_runner, "torch_importable", lambda: False)
    with pytest.raises(MissingDependencyError, match="needs PyTorch"):
        open_runner(default_model_folder(), EngineChoice(backend="eager"))
    with pytest.raises(MissingDependencyError, match="needs PyTorch"):
        open_runner(default_model_folder(), EngineChoice(precision="int8"))


def _blocked_python(code: str) -> list[str]:
    """`python -c` where torch and the rest of the train extra cannot be imported."""
    block = f"import sys\nfor _name in {NO_TRAIN_EXTRA!r}:\n    sys.modules[_name] = None\n"
    return [sys.executable, "-c", block + textwrap.dedent(code)]


def test_the_torch_free_path_imports_no_torch():
    code = """
        import streamav.live, streamav.model_stage, streamav.model_runner, streamav.model
        import streamav.engines.shipped, streamav.engines.backends.onnx_numpy
        from streamav.engines.choice import EngineChoice
        from streamav.model_runner import open_runner
        from streamav.model_stage import default_model_folder
        runner = open_runner(default_model_folder(), EngineChoice())
        import numpy as np
        out = runner.step(np.zeros((1, 513), np.float32), np.zeros((1, 3, 64, 64), np.float32))
        assert out["face_hat"].shape == (1, 3, 64, 64), out["face_hat"].shape
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")
                    and sys.modules[m] is not None]
        print(runner.label)
        """
    result = subprocess.run(_blocked_python(code), capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "onnx/cpu/fp32/b1"


def test_without_torch_a_stale_shipped_step_leaves_the_front_end_alone(tmp_path):
    folder = _copy_model(tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    code = f"""
        import logging
        from pathlib import Path
        import streamav.live as live
        from streamav.config import load_config
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        live.default_model_folder = lambda: Path({str(folder)!r})
        print(live._model(load_config(None, {{}})))
        """
    result = subprocess.run(_blocked_python(code), capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
    assert "front end only" in result.stderr and "stale" in result.stderr


def test_the_demo_runs_the_model_without_torch(tmp_path, endpoint):
    """README command 1's run, in a Python without the train extra: emotions and denoised
    faces are published, the final line names the engine, torch is never imported."""
    stats = tmp_path / "stats.json"
    code = f"""
        sys.argv = ["streamav", "live", "--demo", "--no-preview", "--control", "none",
                    "--publish", {endpoint!r}, "--stats-json", {str(stats)!r}]
        from streamav.cli import main
        try:
            main()
        finally:
            loaded = [m for m in sys.modules if m.split(".")[0] in {NO_TRAIN_EXTRA!r}
                      and sys.modules[m] is not None]
            print("loaded:", loaded, file=sys.stderr)
        """
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    try:
        result = subprocess.run(_blocked_python(code), capture_output=True, text=True,
                                timeout=180, env=cli_env(), cwd=REPO, stdin=subprocess.DEVNULL)
        topics: dict[str, int] = {}
        while sub.poll(1500):
            topic = sub.recv_multipart()[0].decode()
            topics[topic] = topics.get(topic, 0) + 1
    finally:
        sub.close(linger=0)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stderr
    summary = [line for line in result.stderr.splitlines() if " frames in " in line]
    assert len(summary) == 1 and "model on onnx/cpu/fp32/b1" in summary[0], result.stderr
    final = json.loads(stats.read_text())["stats"]
    assert final["model_engine"] == "onnx/cpu/fp32/b1" and final["faces_found"] >= 40
    assert topics.get("emotion", 0) >= final["faces_found"] - 5, topics
    assert topics.get("video.denoised", 0) >= final["faces_found"] - 5, topics


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("STREAMAV_SKIP_WHEEL_TEST") == "1",
                    reason="STREAMAV_SKIP_WHEEL_TEST=1")
def test_the_wheel_in_a_fresh_venv_without_torch_runs_the_model(tmp_path, endpoint):
    """README command 1 for real: `pip install .` into a new venv (no torch: the default
    install), then `streamav live --demo`. About 1 min here, where pip installs from a local
    index; the venv (1.3 GB, MediaPipe's dependencies) is removed afterwards."""
    source = tmp_path / "source"  # built outside the checkout: no build/ left in it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "streamav", source / "streamav",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    python = getattr(sys, "_base_executable", None) or shutil.which("python3")
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                                 capture_output=True, text=True, timeout=900)
        assert install.returncode == 0, install.stderr[-3000:]
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
        demo = subprocess.run([str(venv / "bin" / "streamav"), "live", "--demo", "--no-preview",
                               "--control", "none", "--publish", endpoint],
                              capture_output=True, text=True, timeout=300, env=cli_env(),
                              cwd=tmp_path, stdin=subprocess.DEVNULL)
        assert demo.returncode == 0, demo.stderr
        last = demo.stderr.strip().splitlines()[-1]
        assert "model on onnx/cpu/fp32/b1" in last and "face found on" in last, demo.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)
