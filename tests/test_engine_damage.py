"""A damaged engine folder is rebuilt (#12 item 4): `--backend onnx` never fails on it and `auto`
is never sent to the slower eager backend by it; `.build-*` folders of killed builds are removed
while a running build's is kept. Real ONNX engines (export, ONNX Runtime) of a small model, real
processes; the builds' parity checks run on fixed random frames (tests/test_engines.py checks
parity on real ones), which keeps each rebuild to a second or two."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import RandomFrames, tiny_config

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from streamav.engines import EngineCache, EngineChoice  # noqa: E402
from streamav.engines.cache import MANIFEST_FILE, identity_key  # noqa: E402
from streamav.engines.registry import ENGINE_FILE, build_or_load, open_with_fallback  # noqa: E402
from streamav.host import file_sha256  # noqa: E402
from streamav.model.streaming import StreamingModel  # noqa: E402

ONNX = EngineChoice("onnx")


INPUTS = RandomFrames()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> StreamingModel:
    torch.manual_seed(0)
    return StreamingModel(tiny_config()).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, model) -> EngineCache:
    """One cache for the module (the real frames of parity checks are extracted once per
    cache folder), with the ONNX engine built in it."""
    cache = EngineCache(tmp_path_factory.mktemp("engines"))
    build_or_load(model, ONNX, cache, INPUTS, parity_frames=10)
    return cache


@pytest.fixture
def pristine(cache):
    """The built engine, put back as it was after the test."""
    folder = _engine_folder(cache)
    saved = folder.with_name("pristine-copy")
    shutil.copytree(folder, saved)
    yield folder
    for path in cache.root.iterdir():
        if path.name.startswith("onnx-"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    saved.rename(folder)


def _engine_folder(cache: EngineCache) -> Path:
    (folder,) = [p for p in cache.root.iterdir() if p.name.startswith("onnx-")]
    return folder


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())


def _write_manifest(folder: Path, **changes) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(dict(_manifest(folder), **changes)))


def _replace_folder_by_a_file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_text("not an engine")


def _manifest_is_a_folder(folder: Path) -> None:
    (folder / MANIFEST_FILE).unlink()
    (folder / MANIFEST_FILE).mkdir()


def _engine_that_passes_its_checks_but_does_not_load(folder: Path) -> None:
    """A garbage step.onnx with a manifest made to match it (size and sha256)."""
    path = folder / ENGINE_FILE["onnx"]
    path.write_bytes(b"\x08\x07garbage, not a protobuf" * 100)
    files = {path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}}
    _write_manifest(folder, files=files)


DAMAGE = {
    "manifest-is-a-list": lambda f: (f / MANIFEST_FILE).write_text("[]"),
    "files-is-a-list": lambda f: _write_manifest(f, files=["step.onnx"]),
    "manifest-is-a-folder": _manifest_is_a_folder,
    "engine-folder-is-a-file": _replace_folder_by_a_file,
    "file-entry-leaves-the-folder": lambda f: _write_manifest(
        f, files={"../step.onnx": {"bytes": 1, "sha256": "0"}}),
    "passes-checks-but-does-not-load": _engine_that_passes_its_checks_but_does_not_load,
}


CACHE_DAMAGE = sorted(set(DAMAGE) - {"passes-checks-but-does-not-load"})


@pytest.mark.parametrize("damage", CACHE_DAMAGE)
def test_a_damaged_engine_is_reported_and_removed_never_raised(cache, model, pristine, damage,
                                                               caplog):
    identity = _manifest(pristine)["identity"]
    assert cache.load(identity) is not None
    DAMAGE[damage](pristine)
    with caplog.at_level(logging.WARNING):
        assert cache.load(identity) is None
    assert "is unusable" in caplog.text and "rebuilding it" in caplog.text
    assert not pristine.exists() and not pristine.is_symlink()  # removed: the build goes there


@pytest.mark.parametrize("damage, backend", [("manifest-is-a-list", "onnx"),
                                             ("passes-checks-but-does-not-load", "auto")])
def test_a_damaged_engine_is_rebuilt_not_an_error_nor_eager(cache, model, pristine, damage,
                                                           backend, caplog):
    """Before: `--backend onnx` raised (AttributeError; onnxruntime's load error) and `auto`
    fell back to eager on every run, the damaged folder staying in place."""
    DAMAGE[damage](pristine)
    with caplog.at_level(logging.WARNING):
        engine = open_with_fallback(model, EngineChoice(backend), cache, inputs=INPUTS)
    assert engine.spec.backend == "onnx"
    assert "rebuilding it" in caplog.text and "falling back" not in caplog.text
    outputs, _ = engine.step(*model.example_inputs(1)[:2], engine.initial_state())
    assert torch.isfinite(outputs.face_hat).all()
    stamp = _manifest(pristine)["built_at"], (pristine / "step.onnx").stat().st_mtime_ns
    again = build_or_load(model, ONNX, cache, INPUTS)  # intact again: a hit from now on
    assert not again.built and again.folder == pristine
    assert (_manifest(pristine)["built_at"], (pristine / "step.onnx").stat().st_mtime_ns) == stamp


# -- builds killed half-way ------------------------------------------------------------------------

def _builder(root: str, identity: dict, started: str) -> None:
    """A build that takes its time (the cache's locking is under test, not the export)."""
    def build(folder: Path) -> dict:
        (folder / "engine.bin").write_bytes(b"x" * 4096)
        Path(started).write_text(str(folder))
        time.sleep(120)
        return {}

    EngineCache(root).get_or_build(identity, build)


def _start_builder(context, root: Path, name: str, tmp_path: Path):
    identity = {"backend": "onnx", "device": "cpu", "precision": "fp32", "batch": 1,
                "weights_sha256": name}
    started = tmp_path / f"{name}.started"
    process = context.Process(target=_builder, args=(str(root), identity, str(started)))
    process.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), f"builder {name} never started"
    return process, Path(started.read_text()), identity


def test_a_killed_builds_folder_is_removed_and_a_running_builds_is_kept(tmp_path, model,
                                                                          cache):
    root = cache.root
    context = multiprocessing.get_context("spawn")
    killed, killed_folder, _ = _start_builder(context, root, "killed", tmp_path)
    running, running_folder, running_identity = _start_builder(context, root, "running",
                                                               tmp_path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.join(10)
        assert killed_folder.is_dir() and killed_folder.name.startswith(".build-")
        old = root / ".build-leftover-of-an-old-version"
        old.mkdir()
        os.utime(old, (time.time() - 3 * 86400,) * 2)
        young = root / ".build-something-new"
        young.mkdir()

        removed = cache.sweep_stale_builds()
        assert sorted(removed) == sorted([killed_folder.name, old.name])
        assert not killed_folder.exists() and not old.exists()
        assert running_folder.is_dir() and young.is_dir()  # under way / too young to judge
        # and every engine use sweeps: the engine opens (a hit) with nothing stale left
        engine = open_with_fallback(model, ONNX, cache, inputs=INPUTS)
        assert engine.spec.backend == "onnx"
        assert identity_key(running_identity) in running_folder.name
    finally:
        running.kill()
        running.join(10)
    assert cache.sweep_stale_builds() == [running_folder.name]  # now it is a dead build's
