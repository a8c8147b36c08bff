"""The TensorRT backend (torch-tensorrt, ModelOpt INT8).

Everywhere: clear errors where it cannot run (no GPU, no torch-tensorrt, no ModelOpt) with their
exit codes; `auto` never picks it on a CPU; the INT8 calibration loop (pure PyTorch) visits every
frame with the state fed back and reset at each recording; the compile keywords for old and new
torch-tensorrt releases; the ModelOpt config for both quant_cfg formats.

On a machine with an NVIDIA GPU and torch-tensorrt (the `gpu` tests, skipped elsewhere): build
fp32, fp16 and int8 engines, check parity with eager over 300 real frames with the state fed
back, save/reload, and CUDA graphs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from streamav.engines import parity  # noqa: E402
from streamav.engines.backends import tensorrt as trt_backend  # noqa: E402
from streamav.engines.choice import EngineChoice  # noqa: E402
from streamav.engines.inputs import CalibrationFrames  # noqa: E402
from streamav.engines.registry import open_engine, resolve_backend  # noqa: E402
from streamav.errors import (DeviceError, MissingDependencyError,  # noqa: E402
                             StreamavError)
from streamav.model.config import preset  # noqa: E402
from streamav.model.streaming import OUTPUT_NAMES, State, StreamingModel  # noqa: E402
from streamav.model.synthetic import smooth_sequences  # noqa: E402

HAVE_CUDA = torch.cuda.is_available()
HAVE_TRT = importlib.util.find_spec("torch_tensorrt") is not None
HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None
gpu = pytest.mark.skipif(not (HAVE_CUDA and HAVE_TRT),
                         reason="needs an NVIDIA GPU and torch-tensorrt (pip install "
                                "'streamav[tensorrt]' --extra-index-url https://pypi.nvidia.com)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0) -> StreamingModel:
    torch.manual_seed(seed)
    return StreamingModel(preset("default")).eval()


# -- errors where TensorRT cannot run ----------------------------------------------------------

def test_cpu_device_is_refused_with_device_error():
    with pytest.raises(DeviceError) as caught:
        trt_backend.check_available("cpu")
    assert caught.value.exit_code == DeviceError.exit_code == 3
    assert "NVIDIA GPUs only" in str(caught.value)
    assert "--device cuda" in str(caught.value)


@pytest.mark.skipif(HAVE_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_device_error():
    with pytest.raises(DeviceError) as caught:
        trt_backend.check_available("cuda")
    assert caught.value.exit_code == 3
    assert "NVIDIA GPUs only" in str(caught.value)


def test_missing_torch_tensorrt_is_a_missing_dependency_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # `import torch_tensorrt` fails
    with pytest.raises(MissingDependencyError) as caught:
        trt_backend.check_available("cuda")
    message = str(caught.value)
    assert caught.value.exit_code == MissingDependencyError.exit_code == 5
    assert "pip install 'streamav[tensorrt]'" in message
    assert "--extra-index-url https://pypi.nvidia.com" in message
    assert torch.__version__.split("+")[0] in message


def test_missing_modelopt_is_a_missing_dependency_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(MissingDependencyError) as caught:
        trt_backend.import_modelopt()
    assert caught.value.exit_code == 5
    assert "pip install 'nvidia-modelopt[torch]'" in str(caught.value)


def test_auto_never_picks_tensorrt_on_cpu():
    chosen, why = resolve_backend(EngineChoice())
    assert chosen.backend != "tensorrt"
    assert chosen.backend in ("onnx", "eager")


@pytest.mark.skipif(HAVE_CUDA, reason="this machine has a CUDA GPU")
def test_auto_on_cuda_without_a_gpu_is_a_device_error():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_backend(EngineChoice(device="cuda"))


@pytest.mark.skipif(HAVE_CUDA and HAVE_TRT, reason="TensorRT can run here")
def test_open_engine_tensorrt_fails_clearly_where_it_cannot_run(tmp_path):
    from streamav.engines.cache import EngineCache

    with pytest.raises(StreamavError) as caught:
        open_engine(_model(), EngineChoice("tensorrt", "cuda"), cache=EngineCache(tmp_path))
    message = str(caught.value)
    if not HAVE_CUDA:
        assert isinstance(caught.value, DeviceError) and caught.value.exit_code == 3
        assert "cuda" in message.lower() and "GPU" in message
    else:
        assert isinstance(caught.value, MissingDependencyError)
        assert "streamav[tensorrt]" in message
    assert not any(tmp_path.iterdir())  # nothing half-built in the cache


def test_tensorrt_engine_refuses_cpu_spec(tmp_path):
    with pytest.raises(DeviceError):
        trt_backend.TensorRTEngine(EngineChoice("tensorrt", "cpu"), _model(), tmp_path / "step.ep")


# -- the INT8 calibration loop (pure PyTorch) ---------------------------------------------------

def _frames(lengths: list[int], seed: int = 0) -> CalibrationFrames:
    spectra, faces = smooth_sequences(1, sum(lengths), seed=seed)
    starts = tuple(int(s) for s in np.cumsum([0, *lengths[:-1]]))
    return CalibrationFrames(spectra[0].numpy().astype(np.float32),
                             faces[0].numpy().astype(np.float32), starts)


def test_calibration_loop_visits_every_frame_and_resets_state_per_recording():
    model = _model()
    frames = _frames([5, 7, 4])
    seen_inputs: list[tuple[torch.Tensor, ...]] = []
    seen_states_out: list[State] = []

    def before(module, args):
        seen_inputs.append(tuple(a.detach().clone() for a in args))

    def after(module, args, results):
        seen_states_out.append(State(*(r.detach().clone() for r in results[len(OUTPUT_NAMES):])))

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        stepped = trt_backend.calibration_loop(model, frames)
    finally:
        for handle in handles:
            handle.remove()

    assert stepped == frames.n_frames == 16
    assert len(seen_inputs) == frames.n_frames  # one forward per frame, in order
    fresh = model.initial_state(1)
    for t, args in enumerate(seen_inputs):
        spectrum, face, *state_in = args
        assert spectrum.shape == (1, 513) and face.shape == (1, 3, 64, 64)
        assert torch.equal(spectrum[0], torch.from_numpy(frames.spectra[t]))
        assert torch.equal(face[0], torch.from_numpy(frames.faces[t]))
        if t in frames.recording_starts:
            expected = fresh  # a recording's first frame starts from the initial state
        else:
            expected = seen_states_out[t - 1]  # otherwise the state the previous step returned
        for got, want in zip(state_in, expected):
            assert torch.equal(got, want), f"frame {t}"
    # the state does move within a recording (so the checks above are not vacuous)
    assert not torch.equal(seen_states_out[3].h_av, fresh.h_av)


def test_calibration_loop_on_one_recording_without_starts_listed():
    model = _model(1)
    frames = _frames([6])
    frames = CalibrationFrames(frames.spectra, frames.faces, ())
    calls = []
    handle = model.register_forward_hook(lambda m, a, r: calls.append(a[2].abs().sum().item()))
    try:
        assert trt_backend.calibration_loop(model, frames) == 6
    finally:
        handle.remove()
    assert len(calls) == 6 and calls[0] == 0.0  # frame 0 still starts from a fresh state


# -- compile keywords and the ModelOpt config (no GPU needed) -----------------------------------

OLD_COMPILE = {"exported_program", "inputs", "arg_inputs", "enabled_precisions", "disable_tf32",
               "min_block_size", "use_python_runtime", "use_explicit_typing",
               "timing_cache_path"}
NEW_COMPILE = OLD_COMPILE | {"enable_autocast", "autocast_low_precision_type"}


def test_compile_kwargs_on_releases_with_autocast_use_strong_typing():
    fp32 = trt_backend.compile_kwargs("fp32", NEW_COMPILE)
    assert fp32["disable_tf32"] is True and fp32["use_explicit_typing"] is True
    assert "enabled_precisions" not in fp32 and fp32["min_block_size"] == 1
    fp16 = trt_backend.compile_kwargs("fp16", NEW_COMPILE, Path("/tmp/t.bin"))
    assert fp16["enable_autocast"] is True
    assert fp16["autocast_low_precision_type"] is torch.float16
    assert "enabled_precisions" not in fp16 and "disable_tf32" not in fp16
    assert fp16["timing_cache_path"] == "/tmp/t.bin"
    int8 = trt_backend.compile_kwargs("int8", NEW_COMPILE)
    assert int8["use_explicit_typing"] is True and "enabled_precisions" not in int8
    assert "enable_autocast" not in int8


def test_compile_kwargs_on_older_releases_use_enabled_precisions():
    fp16 = trt_backend.compile_kwargs("fp16", OLD_COMPILE)
    assert fp16["enabled_precisions"] == {torch.float32, torch.float16}
    assert fp16["use_explicit_typing"] is False
    assert trt_backend.compile_kwargs("int8", OLD_COMPILE)["enabled_precisions"] == {
        torch.float32, torch.int8}
    # keywords a release does not know are never passed
    bare = trt_backend.compile_kwargs("fp32", {"exported_program", "inputs", "min_block_size"})
    assert bare == {"min_block_size": 1}


def test_int8_quant_config_turns_the_recurrent_part_off_in_both_formats():
    as_list = {"quant_cfg": [{"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8}}],
               "algorithm": "max"}
    out = trt_backend.int8_quant_config(as_list)
    assert out["quant_cfg"][0] == as_list["quant_cfg"][0] and len(as_list["quant_cfg"]) == 1
    assert {"quantizer_name": "*mdvae.*", "enable": False} in out["quant_cfg"]
    assert {"quantizer_name": "*emotion.*", "enable": False} in out["quant_cfg"]
    as_dict = {"quant_cfg": {"*weight_quantizer": {"num_bits": 8}}, "algorithm": "max"}
    out = trt_backend.int8_quant_config(as_dict)
    assert out["quant_cfg"]["*mdvae.*"] == {"enable": False}
    assert "*mdvae.*" not in as_dict["quant_cfg"]  # the library's constant is not modified
    import fnmatch

    names = [n for n, _ in _model().named_modules()]
    off = [n for n in names if any(fnmatch.fnmatch(n + ".input_quantizer", p)
                                   for p in trt_backend.INT8_FLOAT_MODULES)]
    assert any(n.startswith("mdvae.gru_av") for n in off)
    assert not any(n.startswith(("audio.", "visual.")) for n in off)


# -- on a GPU with torch-tensorrt ----------------------------------------------------------------

def _real_model() -> StreamingModel:
    """The shipped model if the package has one, else the default preset at a fixed seed."""
    from streamav.model.io import load_model
    from streamav.data import default_model_folder

    folder = default_model_folder()
    if (folder / "config.json").is_file():
        return load_model(folder)
    return _model()


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory):
    from streamav.offline_features import OfflineInputs

    if not (HAVE_CUDA and HAVE_TRT):
        pytest.skip("needs an NVIDIA GPU and torch-tensorrt")
    return OfflineInputs().reference_frames(300, tmp_path_factory.mktemp("frames"))


def _build_and_open(tmp_path: Path, precision: str, batch: int = 1):
    from streamav.offline_features import load_calibration

    model = _real_model()
    spec = EngineChoice("tensorrt", "cuda", precision, batch)
    path = tmp_path / "step.ep"
    calibration = load_calibration() if precision == "int8" else None
    trt_backend.build_tensorrt(model, spec, path, calibration, tmp_path)
    return model, spec, trt_backend.TensorRTEngine(spec, model, path)


def _eager_reference(model, batch, spectra, faces):
    from streamav.engines.backends.eager import EagerEngine

    return parity.run_engine(EagerEngine(EngineChoice("eager", "cuda", "fp32", batch), model),
                             spectra, faces, 300)


@gpu
@pytest.mark.parametrize("precision", [
    "fp32", "fp16",
    pytest.param("int8", marks=pytest.mark.skipif(not HAVE_MODELOPT,
                                                  reason="needs nvidia-modelopt"))])
def test_parity_with_eager_over_300_real_frames(tmp_path, real_frames, precision):
    spectra, faces = real_frames
    model, spec, engine = _build_and_open(tmp_path, precision)
    try:
        reference = _eager_reference(model, 1, spectra, faces)
        ran = parity.run_engine(engine, spectra, faces, 300)
    finally:
        engine.close()
    report = parity.compare(reference, ran)
    assert report["frames"] == 300
    assert parity.within_tolerance(report, precision), (precision, report["max_abs"])
    for name in ("face_hat", "emotion_probs"):
        assert np.isfinite(ran[name]).all()


@gpu
def test_saved_engine_reloads_and_matches_the_first_load(tmp_path, real_frames):
    spectra, faces = real_frames
    model, spec, first = _build_and_open(tmp_path, "fp32")
    try:
        a = parity.run_engine(first, spectra, faces, 50)
    finally:
        first.close()
    second = trt_backend.TensorRTEngine(spec, model, tmp_path / "step.ep")  # a fresh load
    try:
        b = parity.run_engine(second, spectra, faces, 50)
    finally:
        second.close()
    report = parity.compare(a, b)
    assert max(report["max_abs"].values()) <= 1e-6


@gpu
def test_cuda_graphs_give_the_same_steps_and_fresh_output_tensors(tmp_path, real_frames):
    spectra, faces = real_frames
    model, spec, graphed = _build_and_open(tmp_path, "fp32", batch=2)
    plain = trt_backend.TensorRTEngine(spec, model, tmp_path / "step.ep", cuda_graphs=False)
    try:
        state = graphed.initial_state()
        outputs = []
        for t in range(5):
            spectrum, face = parity.batch_inputs(spectra, faces, t, 2)
            out, state = graphed.step(spectrum, face, state)
            outputs.append(out.face_hat)
        # outputs of earlier replays were not overwritten by later ones
        assert len({o.data_ptr() for o in outputs}) == len(outputs)
        graphed.close()
        a = parity.run_engine(plain, spectra, faces, 60)
        graphed = trt_backend.TensorRTEngine(spec, model, tmp_path / "step.ep")
        b = parity.run_engine(graphed, spectra, faces, 60)
    finally:
        graphed.close()
        plain.close()
    report = parity.compare(a, b)
    assert max(report["max_abs"].values()) <= 1e-5


@gpu
def test_open_engine_builds_caches_and_reuses_the_tensorrt_engine(tmp_path):
    from streamav.engines.cache import EngineCache
    from streamav.engines.registry import build_or_load
    from streamav.offline_features import OfflineInputs

    model = _real_model()
    cache = EngineCache(tmp_path)
    spec = EngineChoice("tensorrt", "cuda", "fp16")
    built = build_or_load(model, spec, cache, OfflineInputs(), parity_frames=60)
    assert built.built and (built.folder / "step.ep").is_file()
    again = build_or_load(model, spec, cache, OfflineInputs(), parity_frames=60)
    assert not again.built and again.folder == built.folder
    engine = open_engine(model, spec, cache=cache, parity_frames=60)
    try:
        outputs, state = engine.step(torch.rand(1, 513), torch.rand(1, 3, 64, 64) - 0.5,
                                     engine.initial_state())
        assert outputs.face_hat.device.type == "cuda"
        assert outputs.face_hat.dtype == torch.float32 and state.h_av.dtype == torch.float32
    finally:
        engine.close()
