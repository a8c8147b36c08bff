"""The ONNX graph rewrites of the engine build (streamav.engines.graph_rewrite): each pass
rewrites its pattern into the same function and leaves other nodes alone, a second rewrite
changes nothing, the shipped step rewritten computes what it did over real frames, and an ONNX
engine's identity names the recipe (a new recipe builds new engines)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from streamav.engines.graph_rewrite import REWRITE_RECIPE, rewrite_step  # noqa: E402

SIZE = 16


def _gaussian(k: int) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(k) - k // 2) / 1.1) ** 2)
    return (g / g.sum()).astype(np.float32)


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _pattern_model(path) -> None:
    """One instance of every pattern, and look-alikes that must stay as they are."""
    rng = np.random.default_rng(0)
    g5, g3 = _gaussian(5), _gaussian(3)
    inputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10, SIZE, SIZE]),
              helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, SIZE, SIZE]),
              helper.make_tensor_value_info("nine", TensorProto.FLOAT, [1, 9, SIZE, SIZE]),
              helper.make_tensor_value_info("counts", TensorProto.INT64, [1, 4, 5])]
    inits = [
        _const("axis1", np.array([1], np.int64)), _const("axis_last", np.array([3], np.int64)),
        _const("pads2", np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64)),
        _const("blur1", np.outer(g5, g5)[None, None].astype(np.float32)),
        _const("blur1_bias", np.array([0.25], np.float32)),
        _const("blur3", np.repeat(np.outer(g3, g3)[None, None], 3, 0).astype(np.float32)),
        _const("blur9", np.repeat(np.outer(g5, g5)[None, None], 9, 0).astype(np.float32)),
        _const("full_rank", rng.normal(size=(3, 1, 3, 3)).astype(np.float32)),
        _const("head", (0.1 * rng.normal(size=(4, 13, 3, 3))).astype(np.float32)),
        _const("head_bias", rng.normal(size=4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Softmax", ["logits"], ["weights"], axis=1),
        helper.make_node("Softmax", ["logits"], ["softmax_last"], axis=-1),  # stays
        helper.make_node("ReduceSum", ["weights", "axis1"], ["sum_kept"], keepdims=1),
        helper.make_node("ReduceMean", ["rgb", "axis1"], ["gray"], keepdims=1),
        helper.make_node("ReduceSum", ["rgb", "axis_last"], ["row_sums"], keepdims=0),  # stays
        helper.make_node("ReduceSum", ["counts", "axis1"], ["count_sums"], keepdims=0),  # int64
        helper.make_node("Pad", ["gray", "pads2"], ["gray_padded"], mode="edge"),
        helper.make_node("Conv", ["gray_padded", "blur1", "blur1_bias"], ["gray_blurred"],
                         kernel_shape=[5, 5], group=1),
        helper.make_node("Conv", ["rgb", "blur3"], ["rgb_blurred"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=3),
        helper.make_node("Pad", ["nine", "pads2"], ["nine_padded"], mode="edge"),
        helper.make_node("Conv", ["nine_padded", "blur9"], ["nine_blurred"],
                         kernel_shape=[5, 5], group=9),
        helper.make_node("Conv", ["rgb", "full_rank"], ["rgb_sharpened"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=3),  # not separable: stays
        helper.make_node("Concat", ["rgb", "weights"], ["stacked"], axis=1),
        helper.make_node("Conv", ["stacked", "head", "head_bias"], ["head_out"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    shapes = {"softmax_last": [1, 10, SIZE, SIZE], "sum_kept": [1, 1, SIZE, SIZE],
              "row_sums": [1, 3, SIZE], "gray_blurred": [1, 1, SIZE, SIZE],
              "rgb_blurred": [1, 3, SIZE, SIZE], "nine_blurred": [1, 9, SIZE, SIZE],
              "rgb_sharpened": [1, 3, SIZE, SIZE], "head_out": [1, 4, SIZE, SIZE]}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in shapes.items()]
    outputs.append(helper.make_tensor_value_info("count_sums", TensorProto.INT64, [1, 5]))
    model = helper.make_model(helper.make_graph(nodes, "patterns", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _run(path, feeds: dict) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def test_each_pass_rewrites_its_pattern_into_the_same_function(tmp_path):
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    _pattern_model(before)
    counts = rewrite_step(before, after)
    assert counts == {"softmax_on_inner_axis": 1, "inner_axis_sums_as_matmul": 3,
                      "edge_padded_blurs_as_matmul": 1, "separable_blurs": 2,
                      "conv_over_concat": 1}
    graph = onnx.load(str(after)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["Softmax"] == 1 and ops["Concat"] == 0 and ops["Pad"] == 1  # the 9-channel Pad
    kernels = sorted(tuple(numpy_helper.to_array(i).shape[2:]) for i in graph.initializer
                     if i.name in {n.input[1] for n in graph.node if n.op_type == "Conv"})
    assert kernels.count((3, 3)) == 3  # the full-rank kernel and the two halves of the head
    assert (5, 5) not in kernels and (3, 1) in kernels and (1, 5) in kernels
    rng = np.random.default_rng(1)
    feeds = {"logits": rng.normal(0, 3, (1, 10, SIZE, SIZE)).astype(np.float32),
             "rgb": rng.uniform(-0.5, 0.5, (1, 3, SIZE, SIZE)).astype(np.float32),
             "nine": rng.uniform(-0.5, 0.5, (1, 9, SIZE, SIZE)).astype(np.float32),
             "counts": rng.integers(0, 1000, (1, 4, 5))}
    expected, got = _run(before, feeds), _run(after, feeds)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        assert np.abs(got[name] - value).max() <= 2e-6 * max(1.0, np.abs(value).max()), name


def test_a_rewritten_graph_is_left_as_it_is(tmp_path):
    _pattern_model(tmp_path / "before.onnx")
    rewrite_step(tmp_path / "before.onnx", tmp_path / "once.onnx")
    counts = rewrite_step(tmp_path / "once.onnx", tmp_path / "twice.onnx")
    assert not any(counts.values()), counts


def test_the_shipped_step_rewritten_computes_what_it_did_over_real_frames(tmp_path):
    """The rewrite alone, on the real graph: the model folder's step.onnx before and after, each
    fed its own state over the demo clip's real frames (the step's parity against eager is
    tests/test_shipped_step.py's, and every engine build's)."""
    from streamav.data import default_model_folder, demo_clip_path
    from streamav.engines.backends.onnx_numpy import NumpyOnnxStep
    from streamav.engines.shipped import STEP_FILE, ShippedStep, read_step_manifest
    from streamav.model.inputs import face_to_model
    from streamav.offline_features import extract_clip_features

    folder = default_model_folder()
    shipped = ShippedStep(folder / STEP_FILE, read_step_manifest(folder))
    rewritten = tmp_path / "step.onnx"
    counts = rewrite_step(shipped.path, rewritten)
    assert sum(counts.values()) > 0 or shipped.manifest.get("graph_rewrite"), counts
    features = extract_clip_features(demo_clip_path())
    spectra = features.spectrum[features.face_found].astype(np.float32)
    faces = face_to_model(features.face_crop_rgb[features.face_found]).astype(np.float32)
    assert len(spectra) >= 40
    before = NumpyOnnxStep(shipped, threads=1)
    after = NumpyOnnxStep(ShippedStep(rewritten, shipped.manifest), threads=1)
    state_before, state_after = before.initial_state(), after.initial_state()
    worst: dict[str, float] = {}
    for t in range(len(spectra)):
        out_before, state_before = before.step(spectra[t:t + 1], faces[t:t + 1], state_before)
        out_after, state_after = after.step(spectra[t:t + 1], faces[t:t + 1], state_after)
        for name in ("face_hat", "emotion_probs", "w_mean", "z_av"):
            worst[name] = max(worst.get(name, 0.0),
                              float(np.abs(out_after[name] - out_before[name]).max()))
        for i, (a, b) in enumerate(zip(state_after, state_before)):
            worst[f"state{i}"] = max(worst.get(f"state{i}", 0.0), float(np.abs(a - b).max()))
    # measured ~4e-7 on the face; the engines' fp32 tolerance against eager is 1e-4
    assert all(value <= 1e-5 for value in worst.values()), worst


def test_an_onnx_engines_identity_names_the_rewrite_recipe():
    pytest.importorskip("torch")
    from conftest import tiny_config
    from streamav.engines.choice import EngineChoice
    from streamav.engines.registry import engine_identity
    from streamav.model.streaming import StreamingModel

    model = StreamingModel(tiny_config())
    onnx_identity = engine_identity(model, EngineChoice("onnx", "cpu", "fp32", 1), "w")
    int8_identity = engine_identity(model, EngineChoice("onnx", "cpu", "int8", 1), "w")
    assert onnx_identity["graph_rewrite"] == REWRITE_RECIPE == int8_identity["graph_rewrite"]
