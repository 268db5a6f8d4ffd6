"""INT8 ONNX graphs for CPUs: MatMul/Gemm weights become ONNX Runtime's DynamicQuantizeMatMul.

`python -m exporter --onnx-precision int8` runs this on every exported FP32 graph before the weights are shared
(exporter/onnx_weights.py). It writes what `onnxruntime.quantization.quantize_dynamic(per_channel=True,
weight_type=QInt8)` writes — weights INT8, symmetric, one scale per output channel; activations quantized to
UINT8 on every call, int8 products — but one tensor at a time: quantize_dynamic holds the whole graph several
times over (22.3 GB peak RSS on the real encoder's 7.3 GB, measured), which a 16 GB Mac cannot run.
tests/test_quantize.py checks the two write the same weights.

What is quantized, chosen by measurement (docs/benchmarks.md, models/demo/MODEL_CARD.md):
- decoder: every MatMul/Gemm weight. A step reads every weight once per token, so its time follows the weight
  bytes (a quarter of FP32's).
- encoder: the Conformer's feed-forward layers (two per block, 61 % of its products), 3x faster than FP32
  there (a 438×1280×5120 product: 8.8 vs 27.7 ms on a 2-core AVX-512 VNNI CPU). Quantizing its attention
  projections and convolutions too made the 35 s window faster still, but moved the demo model's
  multi-sentence WER by +0.8 to +1.2 points (one activation scale per window is too coarse there); with the
  feed-forward layers alone pooled WER moves +0.37. Attention's projections, the positional projection,
  convolutions, norms and embeddings stay FP32.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

OP_TYPES = ("MatMul", "Gemm")
ENCODER_SCOPE = "/feed_forward"  # in the encoder only MatMuls under the feed-forward modules (node names of
# torch.onnx's export: /encoder/layers.N/feed_forward1/linear1/MatMul)
QMAX = 127  # symmetric INT8 weights in [-127, 127], zero point 0 (quantize_dynamic's QInt8 range)
MS_DOMAIN = "com.microsoft"


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) FP32 weight → (K, N) INT8 and (N,) FP32 scales, one per output column: w ≈ q · scale."""
    absmax = np.abs(w).max(axis=0).astype(np.float64)
    scale = np.where(absmax > 0, absmax / QMAX, 1.0)
    q = np.clip(np.rint(w / scale.astype(np.float32)), -QMAX, QMAX).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize_graph(src: Path, dest: Path, scope: str = "") -> Path:
    """Write an INT8 copy of the FP32 graph `src` (its external data beside it) to `dest` and `dest`.data;
    return `dest`. Weights are read, quantized and written one at a time.

    Args:
        scope: only MatMul/Gemm nodes whose name contains this ("" = all).

    Raises:
        ValueError: `src` is not a readable ONNX graph, or no node in `scope` has a weight to quantize.
    """
    import onnx

    from .onnx_weights import write_graph

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises its own untyped errors for a bad file
        raise ValueError(f"cannot quantize {src}: {e}") from e
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, quantized = [], {}  # quantized: weight name → transpose it first (Gemm transB)
    for node in graph.node:
        weight = _constant_weight(node, inits) if scope in node.name else None
        if weight is None:
            nodes.append(node)
            continue
        trans = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        key = f"{weight}{'_t' if trans else ''}"
        quantized[key] = (weight, trans)
        bias = list(node.input[2:3]) if node.op_type == "Gemm" else []
        nodes.append(onnx.helper.make_node(
            "DynamicQuantizeMatMul", [node.input[0], f"{key}_quantized", f"{key}_scale", f"{key}_zero_point",
                                      *bias], list(node.output), name=f"{node.name}_int8" if node.name else "",
            domain=MS_DOMAIN))
    if not quantized:
        raise ValueError(f"cannot quantize {src}: no MatMul/Gemm with a weight" + (f" under {scope!r}" if scope else ""))
    used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_graph(model, _tensors(kept, quantized, inits, src.parent), dest)
    return dest


def _constant_weight(node: Any, inits: dict[str, Any]) -> str | None:
    """The name of the 2-D initializer `node` multiplies by, if it is a MatMul/Gemm DynamicQuantizeMatMul can
    take (Gemm: alpha = beta = 1, A not transposed, a 1-D bias or none); else None."""
    if node.op_type not in OP_TYPES or len(node.input) < 2 or node.input[1] not in inits:
        return None
    if len(inits[node.input[1]].dims) != 2:
        return None
    if node.op_type == "Gemm":
        attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            return None
        if len(node.input) > 2 and node.input[2] and (node.input[2] not in inits
                                                       or len(inits[node.input[2]].dims) != 1):
            return None
    return str(node.input[1])


def _tensors(kept: list[Any], quantized: dict[str, tuple[str, bool]], inits: dict[str, Any], folder: Path
             ) -> Iterator[tuple[str, np.ndarray]]:
    """The new graph's initializers as (name, array), each read from `folder` only when it is written."""
    from onnx import numpy_helper

    for init in kept:
        yield init.name, numpy_helper.to_array(init, base_dir=str(folder))
    for key, (name, trans) in quantized.items():
        w = numpy_helper.to_array(inits[name], base_dir=str(folder)).astype(np.float32)
        q, scale = quantize_weight(w.T if trans else w)
        del w
        yield f"{key}_quantized", q
        yield f"{key}_scale", scale
        yield f"{key}_zero_point", np.zeros(scale.shape, np.int8)


def quantize_graphs(staged: dict[str, Path]) -> dict[str, Path]:
    """INT8 copies of staged FP32 graphs (bundle file -> staged path), each in a folder of its own next to its
    source (`<name>-int8/`); the FP32 staging folders are removed. Returns bundle file -> INT8 graph."""
    import shutil

    out = {}
    for rel, src in staged.items():
        dest = src.parent.with_name(src.parent.name + "-int8") / src.name
        shutil.rmtree(dest.parent, ignore_errors=True)
        out[rel] = quantize_graph(src, dest, ENCODER_SCOPE if "encoder" in Path(rel).name else "")
        shutil.rmtree(src.parent, ignore_errors=True)
    return out


def weight_bytes(path: Path) -> dict[str, int]:
    """Bytes of a graph's initializers by element type name (FLOAT, INT8, ...), external data included."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        kind = onnx.TensorProto.DataType.Name(init.data_type)
        sizes[kind] = sizes.get(kind, 0) + n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return sizes
