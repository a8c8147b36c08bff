"""The engine layer: the exported step, ONNX Runtime parity over 300 real frames with the state
fed back, the engine cache (hit, misses, corrupt files, concurrent builders), build-engines and
clear errors for backends that cannot run here."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import cli_env, streamav_command, tiny_config

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from streamav.engines import EngineCache, EngineChoice, open_engine  # noqa: E402
from streamav.engines import parity  # noqa: E402
from streamav.engines.backends.eager import EagerEngine  # noqa: E402
from streamav.engines.cache import identity_key  # noqa: E402
from streamav.engines.registry import (build_or_load, engine_identity,  # noqa: E402
                                       resolve_backend, weights_sha256)
from streamav.errors import DeviceError, InputError, MissingDependencyError  # noqa: E402
from streamav.model.io import save_model  # noqa: E402
from streamav.model.streaming import StreamingModel  # noqa: E402
from streamav.offline_features import OfflineInputs  # noqa: E402

INPUTS = OfflineInputs()  # the real frames of builds: calibration set, else the demo clip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0) -> StreamingModel:
    """A small model of the default architecture (the cache and the export are under test)."""
    torch.manual_seed(seed)
    return StreamingModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def real_frames(tmp_path_factory):
    """379 real frames: the calibration recordings through the live front end."""
    spectra, faces = INPUTS.reference_frames(300, tmp_path_factory.mktemp("frames"))
    return spectra, faces


def test_the_exported_step_computes_what_eager_does():
    from streamav.engines.export import export_step

    model = _model()
    program = export_step(model, batch=2)
    inputs = model.example_inputs(2)
    with torch.no_grad():
        exported = program.module()(*inputs)
        eager = model(*inputs)
    assert len(exported) == len(eager) == 15
    for a, b in zip(exported, eager):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


def test_onnx_runtime_matches_eager_over_300_real_frames_with_state_fed_back(
        shipped_model, real_frames, _engine_dir):
    """fp32 tolerance of the issue: max abs <= 1e-4 on the face and the probabilities, each
    backend driven by its own state; and the error does not grow over the run."""
    spectra, faces = real_frames
    frames = 300
    onnx = open_engine(shipped_model, EngineChoice("onnx"), EngineCache(_engine_dir), INPUTS,
                       threads=1)
    eager = EagerEngine(EngineChoice("eager"), shipped_model)
    ran = parity.run_engine(onnx, spectra, faces, frames)
    reference = parity.run_engine(eager, spectra, faces, frames)
    report = parity.compare(reference, ran)
    assert report["frames"] == frames
    assert report["max_abs"]["face_hat"] <= 1e-4, report["max_abs"]
    assert report["max_abs"]["emotion_probs"] <= 1e-4, report["max_abs"]
    assert report["emotion_agreement"] == 1.0
    for name in ("w_mean", "z_av", "h_av", "h_v"):
        first, last = report["max_abs_first_tenth"][name], report["max_abs_last_tenth"][name]
        assert last <= 10 * first + 1e-4, (name, first, last)
    # The state matters: the same frames with the state reset at every step give other outputs,
    # so a backend that dropped the fed-back state would fail the comparison above.
    fresh = [eager.step(*parity.batch_inputs(spectra, faces, t, 1), eager.initial_state())[0]
             for t in range(frames - 30, frames)]
    stateless_w = torch.stack([o.w_mean for o in fresh]).numpy()
    assert np.abs(stateless_w - reference["w_mean"][-30:]).max() > 1e-2


def test_onnx_int8_stays_within_its_tolerance_over_300_real_frames(
        shipped_model, real_frames, _engine_dir):
    """The CPU int8 engine (int8 weights of the matrix products): the int8 tolerances, and a
    face that stays close to eager's (PSNR against eager, not against the input)."""
    spectra, faces = real_frames
    frames = 300
    int8 = open_engine(shipped_model, EngineChoice("onnx", precision="int8"),
                       EngineCache(_engine_dir), INPUTS, threads=1)
    assert int8.path.stat().st_size < 0.5 * sum(
        p.numel() * 4 for p in shipped_model.parameters())  # int8 weights, not fp32
    report = parity.compare(
        parity.run_engine(EagerEngine(EngineChoice("eager"), shipped_model), spectra, faces,
                          frames),
        parity.run_engine(int8, spectra, faces, frames))
    assert parity.within_tolerance(report, "int8"), report["max_abs"]
    assert report["face_psnr_db_vs_reference"] >= 40.0
    assert report["max_abs"]["face_hat"] > 0  # it is really another computation


def test_onnx_engine_steps_several_streams_independently(real_frames, _engine_dir):
    spectra, faces = real_frames
    model = _model(3)
    onnx = open_engine(model, EngineChoice("onnx", batch=3), EngineCache(_engine_dir), INPUTS)
    ran = parity.run_engine(onnx, spectra, faces, 40)
    reference = parity.run_engine(EagerEngine(EngineChoice("eager", batch=3), model), spectra,
                                  faces, 40)
    report = parity.compare(reference, ran)
    assert report["max_abs"]["face_hat"] <= 1e-4 and report["max_abs"]["emotion_probs"] <= 1e-4
    assert ran["face_hat"].shape == (40, 3, 3, 64, 64)
    assert np.abs(ran["w_mean"][:, 0] - ran["w_mean"][:, 1]).max() > 0  # streams differ


# -- the cache ----------------------------------------------------------------------------------

def test_cache_hit_then_misses_on_changed_weights_and_versions(tmp_path):
    cache = EngineCache(tmp_path)
    model = _model()
    spec = EngineChoice("onnx")
    first = build_or_load(model, spec, cache, INPUTS, parity_frames=20)
    assert first.built and (first.folder / "step.onnx").is_file()
    manifest = json.loads((first.folder / "manifest.json").read_text())
    for key in ("weights_sha256", "inputs", "batch", "precision", "versions", "device_name",
                "compute_capability", "calibration_sha256"):
        assert key in manifest["identity"], key
    assert manifest["identity"]["versions"]["onnxruntime"]
    assert manifest["parity"]["within_tolerance"] is True
    assert manifest["latency_ms"]["p50"] > 0 and manifest["build_s"] > 0
    mtime = (first.folder / "step.onnx").stat().st_mtime_ns

    again = build_or_load(model, spec, cache, INPUTS, parity_frames=20)
    assert not again.built and again.folder == first.folder
    assert (again.folder / "step.onnx").stat().st_mtime_ns == mtime  # loaded, not rebuilt

    changed = _model()
    with torch.no_grad():
        changed.emotion.net.bias.add_(0.5)
    other = build_or_load(changed, spec, cache, INPUTS, parity_frames=20)
    assert other.built and other.folder != first.folder
    # An engine of another library version is another identity: a miss, never a wrong hit.
    identity = engine_identity(model, spec, weights_sha256(model))
    newer = dict(identity, versions=dict(identity["versions"], onnxruntime="99.0"))
    assert identity_key(newer) != identity_key(identity)
    # ... and so is the same weights with other settings (the identity path's filter, say)
    refiltered = StreamingModel(dataclasses.replace(
        model.cfg, refine=dataclasses.replace(model.cfg.refine, motion_share=0.5))).eval()
    refiltered.load_state_dict(model.state_dict())
    assert identity_key(engine_identity(refiltered, spec, weights_sha256(refiltered))) != (
        identity_key(identity))
    assert cache.load(newer) is None and cache.load(identity) is not None


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_corrupt_engine_is_detected_and_rebuilt(tmp_path, damage, caplog):
    cache = EngineCache(tmp_path)
    model = _model()
    built = build_or_load(model, EngineChoice("onnx"), cache, INPUTS, parity_frames=10)
    path = built.folder / "step.onnx"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    else:
        (built.folder / "manifest.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        rebuilt = build_or_load(model, EngineChoice("onnx"), cache, INPUTS, parity_frames=10)
    assert rebuilt.built
    assert "unusable" in caplog.text
    assert (rebuilt.folder / "step.onnx").read_bytes() != b"" and len(
        (rebuilt.folder / "step.onnx").read_bytes()) == len(data)
    engine = open_engine(model, EngineChoice("onnx"), cache)  # a hit: no frames needed
    outputs, _ = engine.step(*model.example_inputs(1)[:2], engine.initial_state())
    assert torch.isfinite(outputs.face_hat).all()


def _slow_builder(root: str, identity: dict, log_path: str, result_path: str) -> None:
    cache = EngineCache(root)

    def build(folder):
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        (folder / "engine.bin").write_bytes(b"x" * 4096)
        return {"note": "built by the test"}

    got = cache.get_or_build(identity, build)
    with open(result_path, "w") as f:
        f.write(str(got.folder))


def test_concurrent_builders_build_once_and_share_the_engine(tmp_path):
    identity = {"backend": "onnx", "device": "cpu", "precision": "fp32", "batch": 1,
                "weights_sha256": "test"}
    log_path = tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_slow_builder,
                               args=(str(tmp_path / "engines"), identity, str(log_path),
                                     str(tmp_path / f"result{i}")))
               for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(log_path.read_text().splitlines()) == 1  # one build, two waited and reused it
    folders = {(tmp_path / f"result{i}").read_text() for i in range(3)}
    assert len(folders) == 1
    leftovers = [p.name for p in (tmp_path / "engines").iterdir()
                 if p.name.startswith(".build-")]
    assert leftovers == []


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    cache = EngineCache(tmp_path)
    identity = {"backend": "onnx", "device": "cpu", "precision": "fp32", "batch": 1}

    def build(folder):
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_build(identity, build)
    assert [p for p in tmp_path.iterdir() if p.name != ".locks"] == []
    assert cache.load(identity) is None


# -- choosing backends, and errors ----------------------------------------------------------------

def test_auto_picks_onnx_on_cpu_and_says_why():
    chosen, why = resolve_backend(EngineChoice())
    assert chosen == EngineChoice("onnx") and "cpu" in why
    int8, _ = resolve_backend(EngineChoice(precision="int8"))
    assert int8 == EngineChoice("onnx", precision="int8")  # eager does not build int8


def test_a_build_without_real_frames_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="real frames"):
        build_or_load(_model(), EngineChoice("onnx"), EngineCache(tmp_path), parity_frames=10)
    assert [p for p in tmp_path.iterdir() if p.name != ".locks"] == []
    with pytest.raises(ValueError, match="resolve 'auto'"):
        EagerEngine(EngineChoice(), _model())


def test_unknown_and_impossible_backends_are_clear_errors():
    with pytest.raises(InputError, match="unknown backend 'fast'"):
        EngineChoice("fast")
    with pytest.raises(InputError, match="unknown device"):
        EngineChoice("onnx", device="tpu")
    with pytest.raises(InputError):
        open_engine(_model(), EngineChoice("onnx", precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            open_engine(_model(), EngineChoice("compile", device="cuda"))


def test_missing_onnx_runtime_is_one_line_with_the_install_hint(tmp_path):
    """A Python where `import onnxruntime` fails (a broken install: it is a dependency)."""
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from streamav.engines.choice import EngineChoice\n"
            "from streamav.engines.registry import check_backend, resolve_backend\n"
            "print(resolve_backend(EngineChoice())[0].backend)\n"
            "check_backend(EngineChoice('onnx'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "eager"  # auto falls back
    assert "MissingDependencyError" in result.stderr
    assert "pip install onnxruntime" in result.stderr
    assert MissingDependencyError.exit_code == 5


def test_build_engines_cli_builds_then_reuses(tmp_path):
    folder = tmp_path / "model"
    save_model(_model(5), folder)
    args = [*streamav_command(), "build-engines", "--backend", "onnx", "--model", str(folder),
            "--engine-dir", str(tmp_path / "engines")]
    first = subprocess.run([*args, "--json", str(tmp_path / "a.json")], capture_output=True,
                           text=True, env=cli_env(), timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([*args, "--json", str(tmp_path / "b.json")], capture_output=True,
                            text=True, env=cli_env(), timeout=300)
    assert second.returncode == 0, second.stderr
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a[0]["built_now"] is True and b[0]["built_now"] is False
    assert a[0]["key"] == b[0]["key"] and a[0]["parity"]["within_tolerance"]
    bad = subprocess.run([*streamav_command(), "build-engines", "--device", "cuda"],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    if not torch.cuda.is_available():
        assert bad.returncode == DeviceError.exit_code
        assert bad.stderr.strip().startswith("streamav: error:")
    wrong = subprocess.run([*streamav_command(), "build-engines", "--batch", "one"],
                           capture_output=True, text=True, env=cli_env(), timeout=120)
    assert wrong.returncode == InputError.exit_code and "--batch" in wrong.stderr


def test_the_checkouts_calibration_set_matches_its_recordings_and_front_end():
    """Parity checks and benchmarks read the checkout's calibration set; when it does not load
    (recordings or front-end settings changed) they fall back to the demo clip, and the manifest
    must say so. The shipped description must load: describe it again after a front-end change
    (calibration/README.md)."""
    from streamav.offline_features import OfflineInputs, load_calibration

    calibration = load_calibration()
    assert len(calibration.recordings) == 6
    assert OfflineInputs().reference_source() == "calibration/calibration.json"


def test_saved_frames_file_replaces_the_front_end_and_bad_files_are_one_error(
        real_frames, tmp_path):
    """scripts/bench_gpu_step.py on a machine without MediaPipe or PyAV reads the model inputs
    from an .npz (the calibration frames' cache): the same frames, looped, and a clear error for
    a missing or foreign file."""
    spectra, faces = real_frames
    saved = tmp_path / "frames.npz"
    np.savez(saved, spectra=spectra[:50], faces=faces[:50])
    inputs = OfflineInputs(frames_file=saved)
    assert inputs.reference_source() == str(saved)
    looped_spectra, looped_faces = inputs.reference_frames(120)
    assert looped_spectra.shape == (120, *spectra.shape[1:])
    np.testing.assert_array_equal(looped_faces[:50], faces[:50])
    np.testing.assert_array_equal(looped_faces[100:120], faces[:20])  # looped
    with pytest.raises(InputError, match="no such frames file"):
        OfflineInputs(frames_file=tmp_path / "missing.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(InputError, match="not a frames file"):
        OfflineInputs(frames_file=foreign).reference_frames(10)
