"""One engine choice (streamav.engines.choice.EngineChoice), checked when it is made and when the
config loads, and the model's input contract (streamav.model.inputs) against the front end's
config. No torch needed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from streamav.config import load_config
from streamav.engines.choice import (AUTO_ORDER, BACKEND_NAMES, EngineChoice, EngineChoiceError,
                                     precision_problem)
from streamav.errors import InputError, MissingDependencyError
from streamav.model.inputs import (FACE_SIZE_PX, SAMPLE_RATE_HZ, SPECTRUM_BINS, check_frontend,
                                   face_to_model, frontend_mismatches)


def test_the_default_is_what_live_runs():
    choice = EngineChoice()
    assert (choice.backend, choice.device, choice.precision, choice.batch) == (
        "auto", "cpu", "fp32", 1)
    assert choice.is_auto and choice.label == "auto/cpu/fp32/b1"
    assert load_config(None, {}).model.engine == choice


def test_it_is_frozen_and_checked_again_when_changed():
    choice = EngineChoice("onnx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.backend = "eager"  # type: ignore[misc]
    with pytest.raises(EngineChoiceError, match="fp16 is for tensorrt"):
        dataclasses.replace(choice, precision="fp16")
    assert choice.with_backend("eager") == EngineChoice("eager")
    with pytest.raises(EngineChoiceError, match="int8 is for"):
        EngineChoice(precision="int8").with_backend("eager")


@pytest.mark.parametrize("kwargs, field, phrase", [
    ({"backend": "fast"}, "backend", "unknown backend 'fast'"),
    ({"device": "tpu"}, "device", "unknown device 'tpu'"),
    ({"precision": "fp8"}, "precision", "unknown precision 'fp8'"),
    ({"batch": 0}, "batch", "--batch must be at least 1"),
    ({"batch": True}, "batch", "--batch"),
    ({"backend": "onnx", "precision": "fp16"}, "precision", "fp16 is for tensorrt"),
    ({"backend": "compile", "precision": "int8"}, "precision", "compile builds fp32"),
    ({"backend": "eager", "precision": "int8"}, "precision", "int8 is for"),
    ({"backend": "eager", "precision": "fp16"}, "precision", "CUDA only"),
    ({"precision": "fp16"}, "precision", "no backend builds fp16 on cpu"),
])
def test_impossible_choices_name_the_field_at_fault(kwargs, field, phrase):
    with pytest.raises(EngineChoiceError, match=phrase) as caught:
        EngineChoice(**kwargs)
    assert caught.value.field == field
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2


def test_the_precisions_each_backend_builds():
    assert precision_problem("eager", "cuda", "fp16") is None
    assert precision_problem("onnx", "cpu", "int8") is None
    assert all(precision_problem("tensorrt", "cuda", p) is None for p in ("fp32", "fp16", "int8"))
    assert EngineChoice("tensorrt", "cuda", "int8").label == "tensorrt/cuda/int8/b1"
    # auto tries only the backends that build the precision, in the measured order
    assert EngineChoice(precision="int8").auto_candidates() == ("onnx",)
    assert EngineChoice(device="cuda", precision="fp16").auto_candidates() == (
        "tensorrt", "eager")
    assert EngineChoice(device="cuda").auto_candidates() == AUTO_ORDER["cuda"]
    assert set(AUTO_ORDER["cuda"]) == set(BACKEND_NAMES)


def test_bench_syntax():
    assert EngineChoice.parse("onnx:int8", batch=4) == EngineChoice("onnx", "cpu", "int8", 4)
    assert EngineChoice.parse(" Eager ").name == "eager"
    assert EngineChoice.parse("onnx:int8").name == "onnx:int8"
    with pytest.raises(EngineChoiceError, match="unknown precision 'int4'"):
        EngineChoice.parse("onnx:int4")


def test_the_config_makes_the_choice_when_it_loads():
    config = load_config(None, {"model.backend": "onnx", "model.device": "cpu"})
    assert config.model.engine == EngineChoice("onnx")
    with pytest.raises(InputError, match=r"^--backend: unknown backend 'foo'"):
        load_config(None, {"model.backend": "foo"})
    with pytest.raises(InputError, match=r"^--device: unknown device 'tpu'"):
        load_config(None, {"model.device": "tpu"})


def test_without_torch_a_choice_that_needs_it_fails_before_the_run(monkeypatch):
    """ModelStage checks at construction (before the pipeline binds or opens anything)."""
    import importlib.util

    from streamav import model_runner

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    model_runner.check_choice_here(EngineChoice())
    model_runner.check_choice_here(EngineChoice("onnx"))
    for needs in (EngineChoice("eager"), EngineChoice(precision="int8"),
                  EngineChoice(device="cuda")):
        with pytest.raises(MissingDependencyError, match="needs PyTorch"):
            model_runner.check_choice_here(needs)


# -- the model's input contract -----------------------------------------------------------------

def test_the_default_front_end_makes_what_the_model_reads():
    config = load_config(None, {})
    assert config.face.crop_size_px == FACE_SIZE_PX
    assert config.spectrum.sample_rate_hz == SAMPLE_RATE_HZ
    assert config.spectrum.n_bins == SPECTRUM_BINS == 513
    assert frontend_mismatches(config.face.crop_size_px, config.spectrum.sample_rate_hz,
                               config.spectrum.n_fft) == []
    check_frontend(64, 16_000, 1024)


def test_every_mismatch_is_named():
    with pytest.raises(InputError) as caught:
        check_frontend(96, 8_000, 2048)
    message = str(caught.value)
    for phrase in ("crop_size_px is 96", "sample_rate_hz is 8000", "n_fft is 2048",
                   "513-bin", "--no-model"):
        assert phrase in message, message


def test_face_scaling():
    crop = np.array([[[0, 255, 128]]], np.uint8).repeat(64, 0).repeat(64, 1)
    face = face_to_model(crop)
    assert face.shape == (3, 64, 64) and face.dtype == np.float32
    assert face[0].max() == -0.5 and face[1].min() == 0.5


def test_the_torch_side_converts_with_the_same_contract():
    torch = pytest.importorskip("torch")
    from streamav.model.streaming import face_rgb_from_tensor, face_tensor_from_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    tensor = face_tensor_from_rgb(rgb)
    assert torch.equal(tensor, torch.from_numpy(np.ascontiguousarray(face_to_model(rgb))))
    assert np.array_equal(face_rgb_from_tensor(tensor), rgb)


def test_the_choice_and_the_contract_import_no_torch():
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"
            "import streamav.engines.choice, streamav.engines.inputs, streamav.model.inputs\n"
            "import streamav.config\n"
            "from streamav.config import load_config\n"
            "print(load_config(None, {'model.backend': 'onnx'}).model.engine.label)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "onnx/cpu/fp32/b1"
