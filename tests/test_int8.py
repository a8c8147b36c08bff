"""The CPU int8 engine keeps every stream to itself (streamav/engines/int8_per_stream.py): each
stream's outputs are within the int8 tolerances of eager fp32 at B = 1, 8 and 32, and a stream's
outputs do not depend on the streams that share its batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from streamav.engines import EngineCache, EngineChoice, open_engine, parity  # noqa: E402
from streamav.engines.backends.eager import EagerEngine  # noqa: E402
from streamav.engines.cache import identity_key  # noqa: E402
from streamav.offline_features import OfflineInputs  # noqa: E402

INPUTS = OfflineInputs()
STREAM = 3  # the stream followed through the batch
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return INPUTS.reference_frames(120, tmp_path_factory.mktemp("frames"))


def _int8(model, batch, engine_dir):
    # The build's own parity check is short here: the tests below are the parity under test.
    return open_engine(model, EngineChoice("onnx", precision="int8", batch=batch),
                       EngineCache(engine_dir), INPUTS, parity_frames=2, threads=1)


@pytest.mark.parametrize("batch,steps", [(1, 12), (8, 12), (32, 5)])
def test_each_stream_is_within_the_int8_tolerance_of_fp32(shipped_model, frames, batch, steps,
                                                          _engine_dir):
    spectra, faces = frames
    int8 = _int8(shipped_model, batch, _engine_dir)
    eager = EagerEngine(EngineChoice("eager", batch=batch), shipped_model)
    reference = parity.run_engine(eager, spectra, faces, steps)
    ran = parity.run_engine(int8, spectra, faces, steps)
    report = parity.compare(reference, ran)
    assert parity.within_tolerance(report, "int8"), (batch, report["max_abs"])
    assert report["max_abs"]["face_hat"] > 0  # int8 really ran
    per_stream_face = np.abs(ran["face_hat"] - reference["face_hat"]).reshape(
        steps, batch, -1).max(axis=(0, 2))
    assert per_stream_face.shape == (batch,)


def _follow(engine, spectra, faces, others, steps):
    """Stream STREAM's face and probabilities over `steps` (state fed back) with `others`
    (a seed: random faces and spectra of random loudness; None: alone at batch 1)."""
    rng = np.random.default_rng(others)
    state = engine.initial_state()
    batch, k = engine.spec.batch, (STREAM if engine.spec.batch > 1 else 0)
    face_hat, probs = [], []
    for t in range(steps):
        spectrum = (spectra[rng.integers(0, len(spectra), batch)]
                    * rng.uniform(0.0, 100.0, (batch, 1))).astype(np.float32)
        face = rng.uniform(-0.5, 0.5, (batch, 3, 64, 64)).astype(np.float32)
        spectrum[k], face[k] = spectra[t], faces[t]
        outputs, state = engine.step(torch.from_numpy(spectrum), torch.from_numpy(face), state)
        face_hat.append(outputs.face_hat[k].numpy().copy())
        probs.append(outputs.emotion_probs[k].numpy().copy())
    return np.stack(face_hat), np.stack(probs)


def test_a_stream_does_not_depend_on_the_others_in_its_batch(shipped_model, frames,
                                                             _engine_dir):
    spectra, faces = frames
    steps = 20
    batched = _int8(shipped_model, 8, _engine_dir)
    with_x = _follow(batched, spectra, faces, 1, steps)
    with_y = _follow(batched, spectra, faces, 2, steps)
    # Other streams, other loudness: the followed stream's outputs are the same. The
    # shared-scale engine (one activation range for the batch) differed by 1e-2 in the probs.
    assert np.abs(with_x[0] - with_y[0]).max() <= 1e-6
    assert np.abs(with_x[1] - with_y[1]).max() <= 1e-6
    # Alone at batch 1: the same computation, up to fp32's own last-bit differences between
    # batch sizes (9e-8 in ONNX Runtime fp32), which an int8 rounding occasionally turns into
    # one quantization step (measured 1.6e-4 face, 1.6e-3 probs over 100 frames).
    alone = _follow(_int8(shipped_model, 1, _engine_dir), spectra, faces, None, steps)
    assert np.abs(with_x[0] - alone[0]).max() <= 2e-3
    assert np.abs(with_x[1] - alone[1]).max() <= 1e-2


def test_the_int8_recipe_is_part_of_the_engine_key(monkeypatch):
    from streamav.engines import registry
    from streamav.model.streaming import StreamingModel
    from conftest import tiny_config

    model = StreamingModel(tiny_config()).eval()
    spec = EngineChoice("onnx", precision="int8", batch=8)
    identity = registry.engine_identity(model, spec, "w")
    assert identity["int8_recipe"] == registry.INT8_RECIPE
    assert "int8_recipe" not in registry.engine_identity(model, EngineChoice("onnx"), "w")
    monkeypatch.setattr(registry, "INT8_RECIPE", "another recipe")
    assert identity_key(registry.engine_identity(model, spec, "w")) != identity_key(identity)


def test_a_product_whose_rows_are_not_streams_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from streamav.engines.int8_per_stream import split_products_per_stream
    from streamav.errors import InputError

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
                              [weight])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(InputError, match="not a multiple of the batch 2"):
        split_products_per_stream(path, tmp_path / "out.onnx", 2)
    split_products_per_stream(path, tmp_path / "ok.onnx", 3)  # 3 rows, 3 streams: split
    ops = [n.op_type for n in onnx.load(tmp_path / "ok.onnx").graph.node]
    assert ops == ["Split", "MatMul", "MatMul", "MatMul", "Concat"]
