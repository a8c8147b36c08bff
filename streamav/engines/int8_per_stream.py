"""The CPU int8 engine with every stream quantized on its own: the ONNX int8 recipe.

ONNX Runtime's dynamic quantization (`quantize_dynamic`) turns each matrix product into
DynamicQuantizeLinear + an integer product: the activations' uint8 scale and zero point are the
min and max of the *whole input tensor*, taken afresh each step. At batch B that tensor holds B
streams, so one stream's range sets the resolution of all the others: a stream's outputs depend
on which streams share its batch (docs/engines.md has the measurements).

The recipe here keeps ONNX Runtime's own kernels and fixes what they see: before quantizing,
every Gemm/MatMul with a constant weight on a batch of B > 1 streams is rewritten as Split (one
row block per stream) → one product per stream → Concat. Each product then quantizes one
stream's activations with that stream's own range, exactly the computation of the same stream
at batch 1, and the int8 weights are stored once (the B products share one initializer). At
batch 1 nothing is split: the engine is the batch-1 dynamic int8 engine as before.

Weights: signed int8, one scale per tensor; activations: uint8, per stream and step. No
calibration set is needed (nothing static to calibrate). Convolutions stay fp32: they are most
of the step at batch > 1 (BENCHMARKS.md) and int8 convolutions through static QDQ were measured
slower here and outside the face tolerance on held-out clips (docs/engines.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from streamav.errors import InputError

# Part of every ONNX int8 engine's identity (registry.engine_identity): change it whenever the
# recipe changes, so a cached engine of another recipe is never loaded.
INT8_RECIPE = "dynamic-per-stream-1: Gemm/MatMul split per stream, ORT quantize_dynamic QInt8"
QUANTIZED_OPS = ("MatMul", "Gemm")


def quantize_int8_per_stream(float_path: Path, out_path: Path, batch: int) -> Path:
    """The int8 engine of the fp32 step at `float_path` (static batch `batch`) at `out_path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    split_path = out_path.with_name(out_path.stem + ".split.onnx")
    source = split_products_per_stream(float_path, split_path, batch) if batch > 1 else float_path
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice to pre-process, logged on the root
    try:
        quantize_dynamic(str(source), str(out_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(QUANTIZED_OPS))
    finally:
        root.setLevel(level)
        split_path.unlink(missing_ok=True)
    return out_path


def split_products_per_stream(float_path: Path, out_path: Path, batch: int) -> Path:
    """The model at `float_path` with each Gemm/MatMul of a constant weight computed per stream:
    its input (rows = `batch` x m, stream-major) split into `batch` blocks along axis 0, one
    product per block, the results concatenated. InputError when a product's input does not
    have a first dimension that is a multiple of the batch (its streams cannot be told apart)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(float_path)))
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    first_dim = {v.name: (v.type.tensor_type.shape.dim[0].dim_value
                          if v.type.tensor_type.shape.dim else 0)
                 for v in (*graph.input, *graph.value_info, *graph.output)}
    nodes = []
    for node in graph.node:
        if (node.op_type not in QUANTIZED_OPS or len(node.input) < 2
                or node.input[1] not in constants):
            nodes.append(node)
            continue
        rows = first_dim.get(node.input[0], 0)
        if rows == 0 or rows % batch:
            raise InputError(f"int8 per stream: {node.op_type} {node.name!r} has an input of "
                             f"{rows or 'unknown'} rows, not a multiple of the batch {batch}")
        parts = [f"{node.name}__stream{b}_in" for b in range(batch)]
        outs = [f"{node.name}__stream{b}_out" for b in range(batch)]
        sizes = numpy_helper.from_array(np.full(batch, rows // batch, np.int64),
                                        f"{node.name}__stream_rows")
        graph.initializer.append(sizes)
        nodes.append(helper.make_node("Split", [node.input[0], sizes.name], parts, axis=0,
                                      name=f"{node.name}__split"))
        for b in range(batch):
            product = helper.make_node(node.op_type, [parts[b], *node.input[1:]], [outs[b]],
                                       name=f"{node.name}__stream{b}")
            product.attribute.extend(node.attribute)
            nodes.append(product)
        nodes.append(helper.make_node("Concat", outs, [node.output[0]], axis=0,
                                      name=f"{node.name}__concat"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the rewritten graph's shapes are inferred again where needed
    onnx.save(model, str(out_path))
    return Path(out_path)
