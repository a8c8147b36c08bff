"""Rewrite an exported step's ONNX graph into an equivalent one that ONNX Runtime's CPU provider
runs faster (issue 13; docs/engines.md "Graph rewrites", BENCHMARKS.md has the numbers).

`rewrite_step(src, dst)` folds the graph's constants with ONNX Runtime's *basic* optimisations
(constant folding and node eliminations: standard ONNX ops only, no hardware-specific layout, so
the file runs anywhere) and then applies these passes, each an exact identity up to float32
rounding (the engine build's parity check against eager still judges the result):

- `softmax_on_inner_axis`: a Softmax over an axis other than the last (the identity path's
  per-pixel weights over ten candidate faces, axis 1 of (B, 10, 64, 64)) becomes
  exp(x - max) / sum over that axis with ReduceMax / Sub / Exp / ReduceSum / Div. ONNX Runtime
  runs a Softmax over an inner axis as transpose, a row-wise softmax of 10 values per pixel and
  transpose back: 0.43 ms of a 6.2 ms step.
- `separable_blurs`: a depthwise (or single-channel) Conv whose every kernel is an outer product
  (the identity path's Gaussian and box blurs, 5x5 to 9x9, rank 1 to float32 precision) becomes a
  (k, 1) Conv followed by a (1, k) Conv: 2k taps per pixel instead of k^2, and ONNX Runtime's
  grouped-convolution path is far slower on square kernels than on 1-D ones.

`REWRITE_RECIPE` names the passes; an engine's identity holds it, so a change of recipe builds
new engines. Needs the `onnx` package (the `train` extra: every build that exports has it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

REWRITE_RECIPE = "ort-basic-fold+softmax-inner-axis+separable-blurs/1"
RANK1_TOLERANCE = 1e-6  # second singular value / first: a kernel below this is separable


def fold_constants(src: Path, dst: Path) -> None:
    """`src` with ONNX Runtime's basic graph optimisations applied (constant folding, redundant
    node elimination), written to `dst`: a standard ONNX model, portable across machines."""
    from streamav.engines.backends.onnx_numpy import import_ort

    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def rewrite_step(src: Path, dst: Path) -> dict[str, int]:
    """Write the rewritten graph of the ONNX model `src` to `dst`; returns how many nodes each
    pass rewrote."""
    import onnx

    with tempfile.TemporaryDirectory() as scratch:
        folded = Path(scratch) / "folded.onnx"
        fold_constants(Path(src), folded)
        model = onnx.load(str(folded))
    counts = {"softmax_on_inner_axis": softmax_on_inner_axis(model),
              "inner_axis_sums_as_matmul": inner_axis_sums_as_matmul(model),
              "edge_padded_blurs_as_matmul": edge_padded_blurs_as_matmul(model),
              "separable_blurs": separable_blurs(model),
              "conv_over_concat": conv_over_concat(model)}
    _prune(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst), save_as_external_data=False)
    return counts


def _prune(model) -> None:
    """Drop the initializers no node reads any more and the opset imports of domains no node
    uses (ONNX Runtime's saved model imports every domain it knows)."""
    graph = model.graph
    read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    domains = {n.domain for n in graph.node} | {""}
    imports = [o for o in model.opset_import if o.domain in domains
               or (o.domain == "ai.onnx" and "" in domains)]
    del model.opset_import[:]
    model.opset_import.extend(imports)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _shapes(model, float_only: bool = False) -> dict[str, tuple[int | None, ...]]:
    """The shape of every tensor shape inference knows (None for a dimension it does not);
    `float_only`: of the float32 tensors only."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if float_only and tensor.elem_type != onnx.TensorProto.FLOAT:
            continue
        if tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                      for d in tensor.shape.dim)
    return shapes


def _replace_node(graph, old, new_nodes: list) -> None:
    """Put `new_nodes` where `old` stood (the graph stays topologically sorted)."""
    nodes = list(graph.node)
    index = next(i for i, n in enumerate(nodes) if list(n.output) == list(old.output))
    nodes[index:index + 1] = new_nodes
    del graph.node[:]
    graph.node.extend(nodes)


def softmax_on_inner_axis(model) -> int:
    """Softmax over a non-last axis → exp(x - max) / sum with reductions over that axis."""
    from onnx import helper, numpy_helper

    if _opset(model) < 18:  # ReduceMax takes its axes as an input from opset 18
        return 0
    graph = model.graph
    shapes = _shapes(model)
    done = 0
    for node in [n for n in graph.node if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]:
        rank = len(shapes[node.input[0]]) if node.input[0] in shapes else None
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"),
                    -1)
        if rank is None or axis % rank == rank - 1:
            continue
        base = f"{node.name or node.output[0]}__rw"
        axes = numpy_helper.from_array(np.array([axis], np.int64), f"{base}_axes")
        graph.initializer.append(axes)
        x, y = node.input[0], node.output[0]
        _replace_node(graph, node, [
            helper.make_node("ReduceMax", [x, axes.name], [f"{base}_max"], keepdims=1,
                             name=f"{base}_max"),
            helper.make_node("Sub", [x, f"{base}_max"], [f"{base}_shift"], name=f"{base}_sub"),
            helper.make_node("Exp", [f"{base}_shift"], [f"{base}_exp"], name=f"{base}_exp"),
            helper.make_node("ReduceSum", [f"{base}_exp", axes.name], [f"{base}_sum"],
                             keepdims=1, name=f"{base}_sum"),
            helper.make_node("Div", [f"{base}_exp", f"{base}_sum"], [y], name=f"{base}_div"),
        ])
        done += 1
    return done


def inner_axis_sums_as_matmul(model) -> int:
    """ReduceSum / ReduceMean over one axis that is not the last, of a tensor of static shape →
    Reshape to (outer, R, inner), MatMul by a (1, R) row of ones (or 1/R), Reshape back.
    ONNX Runtime reduces an inner axis element by element; as a product it is one small GEMM
    (the identity path's sum over nine weighted candidates: 0.14 -> 0.02 ms measured alone)."""
    from onnx import helper, numpy_helper

    if _opset(model) < 18:  # ReduceMean takes its axes as an input from opset 18
        return 0
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shapes = _shapes(model, float_only=True)  # a product needs float32 (not shape arithmetic)
    done = 0
    for node in [n for n in graph.node if n.op_type in ("ReduceSum", "ReduceMean")
                 and n.domain in ("", "ai.onnx")]:
        shape = shapes.get(node.input[0])
        if (shape is None or None in shape or len(node.input) < 2
                or node.input[1] not in inits):
            continue
        axes = numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(axes) != 1 or attrs.get("noop_with_empty_axes", 0):
            continue
        axis = int(axes[0]) % len(shape)
        if axis == len(shape) - 1:
            continue
        keepdims = attrs.get("keepdims", 1)
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        reduced, inner = shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64))
        out_shape = [*shape[:axis], *([1] if keepdims else []), *shape[axis + 1:]]
        weight = 1.0 / reduced if node.op_type == "ReduceMean" else 1.0
        base = f"{node.name or node.output[0]}__mm"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([outer, reduced, inner], np.int64), f"{base}_in"),
            numpy_helper.from_array(np.full((1, reduced), weight, np.float32), f"{base}_w"),
            numpy_helper.from_array(np.array(out_shape, np.int64), f"{base}_out")])
        _replace_node(graph, node, [
            helper.make_node("Reshape", [node.input[0], f"{base}_in"], [f"{base}_3d"],
                             name=f"{base}_reshape_in"),
            helper.make_node("MatMul", [f"{base}_w", f"{base}_3d"], [f"{base}_sum"],
                             name=f"{base}_matmul"),
            helper.make_node("Reshape", [f"{base}_sum", f"{base}_out"], list(node.output),
                             name=f"{base}_reshape_out"),
        ])
        done += 1
    return done


def _rank1_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with kernel == outer(column, row) to float32 precision, else None."""
    u, s, vt = np.linalg.svd(kernel.astype(np.float64))
    if s[0] == 0 or (len(s) > 1 and s[1] > RANK1_TOLERANCE * s[0]):
        return None
    scale = np.sqrt(s[0])
    column, row = u[:, 0] * scale, vt[0] * scale
    if column.sum() < 0:  # a blur's factors both positive
        column, row = -column, -row
    return column, row


def separable_blurs(model) -> int:
    """A 2-D depthwise Conv with rank-1 kernels (stride 1, no dilation) → (k, 1) then (1, k)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    done = 0
    for node in [n for n in graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 4 or weight.dtype != np.float32:
            continue
        channels, per_group, kh, kw = weight.shape
        group = attrs.get("group", 1)
        if (per_group != 1 or group != channels or kh < 2 or kw < 2
                or any(s != 1 for s in attrs.get("strides", [1, 1]))
                or any(d != 1 for d in attrs.get("dilations", [1, 1]))
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        factors = [_rank1_factors(weight[c, 0]) for c in range(channels)]
        if any(f is None for f in factors):
            continue
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
        base = f"{node.name or node.output[0]}__sep"
        column = numpy_helper.from_array(
            np.stack([f[0] for f in factors]).astype(np.float32).reshape(channels, 1, kh, 1),
            f"{base}_column")
        row = numpy_helper.from_array(
            np.stack([f[1] for f in factors]).astype(np.float32).reshape(channels, 1, 1, kw),
            f"{base}_row")
        graph.initializer.extend([column, row])
        _replace_node(graph, node, [
            helper.make_node("Conv", [node.input[0], column.name], [f"{base}_mid"],
                             kernel_shape=[kh, 1], pads=[top, 0, bottom, 0], group=group,
                             name=f"{base}_v"),
            helper.make_node("Conv", [f"{base}_mid", row.name, *node.input[2:]],
                             list(node.output), kernel_shape=[1, kw], pads=[0, left, 0, right],
                             group=group, name=f"{base}_h"),
        ])
        done += 1
    return done


def _graph_index(model) -> tuple[dict, dict, dict, dict[str, int], set[str]]:
    """What the fusing passes look up: initializers by name, known shapes, each tensor's
    producing node, how many nodes read each tensor, and the graph's output names."""
    graph = model.graph
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    return ({i.name: i for i in graph.initializer}, _shapes(model),
            {o: n for n in graph.node for o in n.output}, readers,
            {o.name for o in graph.output})


def conv_over_concat(model) -> int:
    """Conv (one group) of the channel Concat of two tensors, that Concat read by nothing else
    → the sum of two Convs, one per tensor, on the matching slices of the kernel (the bias on
    the first). The identity path's head (3x3, 16 + 18 -> 13 channels at 64x64): the Concat's copy
    goes, and the 16-channel half runs on ONNX Runtime's blocked (NCHWc) convolution."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits, shapes, producers, readers, outputs = _graph_index(model)
    done = 0
    for node in [n for n in graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        concat = producers.get(node.input[0])
        if (concat is None or concat.op_type != "Concat" or len(concat.input) != 2
                or readers.get(concat.output[0]) != 1 or concat.output[0] in outputs
                or len(node.input) < 2 or node.input[1] not in inits):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(shapes.get(concat.output[0], ()))
        axis = next((helper.get_attribute_value(a) for a in concat.attribute
                     if a.name == "axis"), None)
        parts = [shapes.get(name) for name in concat.input]
        if (attrs.get("group", 1) != 1 or rank < 3 or axis is None or axis % rank != 1
                or any(p is None or p[1] is None for p in parts)):
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        split = parts[0][1]
        base = f"{node.name or node.output[0]}__cat"
        halves = [numpy_helper.from_array(np.ascontiguousarray(weight[:, :split]), f"{base}_w0"),
                  numpy_helper.from_array(np.ascontiguousarray(weight[:, split:]), f"{base}_w1")]
        graph.initializer.extend(halves)
        conv_attrs = {k: v for k, v in attrs.items()}
        _replace_node(graph, node, [
            helper.make_node("Conv", [concat.input[0], halves[0].name, *node.input[2:]],
                             [f"{base}_y0"], name=f"{base}_conv0", **conv_attrs),
            helper.make_node("Conv", [concat.input[1], halves[1].name], [f"{base}_y1"],
                             name=f"{base}_conv1", **conv_attrs),
            helper.make_node("Add", [f"{base}_y0", f"{base}_y1"], list(node.output),
                             name=f"{base}_add"),
        ])
        nodes = [n for n in graph.node if list(n.output) != list(concat.output)]
        del graph.node[:]
        graph.node.extend(nodes)
        done += 1
    return done


MATMUL_BLUR_MAX_CHANNELS = 4  # measured: faster as two products up to 3 channels, not at 9 or 12


def _band(taps: np.ndarray, size: int, pad_before: int, out_size: int) -> np.ndarray:
    """(size, out_size) matrix M with (x @ M)[j] = sum_t taps[t] * x[clip(j + t - pad_before)]:
    a 1-D correlation of a row of `size` values, edge-padded, as one product."""
    band = np.zeros((size, out_size), np.float64)
    for j in range(out_size):
        for t, tap in enumerate(taps):
            band[min(max(j + t - pad_before, 0), size - 1), j] += tap
    return band


def edge_padded_blurs_as_matmul(model) -> int:
    """Pad (edge, on the two spatial axes only) then a depthwise Conv of few channels with one
    rank-1 kernel for all → X @ Bw then Bh @ (that), two small matrix products with the edge
    padding folded into the band matrices Bw, Bh (the identity path's 9x9 blurs of one-channel
    maps: a Pad and 81 taps per pixel through the grouped-convolution path before)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits, shapes, producers, readers, outputs = _graph_index(model)
    done = 0
    for node in [n for n in graph.node if n.op_type == "Conv" and n.domain in ("", "ai.onnx")]:
        pad = producers.get(node.input[0])
        if (pad is None or pad.op_type != "Pad" or len(node.input) < 2
                or node.input[1] not in inits or readers.get(pad.output[0]) != 1
                or pad.output[0] in outputs or len(pad.input) < 2
                or pad.input[1] not in inits or (len(pad.input) > 3 and pad.input[3])):
            continue
        pad_attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(pad.input[0])
        weight = numpy_helper.to_array(inits[node.input[1]])
        if (pad_attrs.get("mode") not in (b"edge", "edge") or shape is None or len(shape) != 4
                or None in shape or weight.ndim != 4 or weight.dtype != np.float32):
            continue
        pads = numpy_helper.to_array(inits[pad.input[1]]).reshape(-1).tolist()
        channels, per_group, kh, kw = weight.shape
        if (pads[:2] != [0, 0] or pads[4:6] != [0, 0] or per_group != 1
                or attrs.get("group", 1) != channels or channels != shape[1]
                or channels > MATMUL_BLUR_MAX_CHANNELS
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or any(v != 0 for v in attrs.get("pads", [0, 0, 0, 0]))
                or any(v != 1 for v in attrs.get("strides", [1, 1]))
                or any(v != 1 for v in attrs.get("dilations", [1, 1]))
                or not np.array_equal(weight, np.broadcast_to(weight[:1], weight.shape))):
            continue
        factors = _rank1_factors(weight[0, 0])
        if factors is None:
            continue
        column, row = factors
        height, width = shape[2], shape[3]
        out_h = height + pads[2] + pads[6] - kh + 1
        out_w = width + pads[3] + pads[7] - kw + 1
        base = f"{node.name or node.output[0]}__band"
        across = numpy_helper.from_array(_band(row, width, pads[3], out_w).astype(np.float32),
                                         f"{base}_w")
        down = numpy_helper.from_array(
            np.ascontiguousarray(_band(column, height, pads[2], out_h).T).astype(np.float32),
            f"{base}_h")
        graph.initializer.extend([across, down])
        new_nodes = [
            helper.make_node("MatMul", [pad.input[0], across.name], [f"{base}_rows"],
                             name=f"{base}_across"),
            helper.make_node("MatMul", [down.name, f"{base}_rows"],
                             [f"{base}_out" if len(node.input) > 2 else node.output[0]],
                             name=f"{base}_down")]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]]).reshape(1, channels, 1, 1)
            graph.initializer.append(numpy_helper.from_array(bias, f"{base}_bias"))
            new_nodes.append(helper.make_node("Add", [f"{base}_out", f"{base}_bias"],
                                              [node.output[0]], name=f"{base}_add"))
        _replace_node(graph, node, new_nodes)
        nodes = [n for n in graph.node if list(n.output) != list(pad.output)]
        del graph.node[:]
        graph.node.extend(nodes)
        done += 1
    return done
