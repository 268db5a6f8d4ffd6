"""INT8 ONNX graphs for CPUs: the MatMul/Gemm weights of exported graphs quantized by onnxruntime.quantization.

`python -m exporter --onnx-precision int8` runs this on every exported FP32 graph before the weights are
shared (exporter/onnx_weights.py). Two recipes, chosen per graph by measurement (docs/benchmarks.md,
models/demo/MODEL_CARD.md):

- decoder: dynamic quantization (`quantize_dynamic`): weights INT8 with one scale per output channel,
  activations quantized to UINT8 per call (ONNX Runtime fuses them into DynamicQuantizeMatMul). A step reads
  every weight once per token, so its time follows the weight bytes: INT8 reads a quarter of FP32's.
- encoder: INT8 weights in blocks of 32 with a scale each (`MatMulNBitsQuantizer`, bits 8, MatMulNBits ops;
  accuracy level 4: int8 products with activations quantized per block). On the demo model, dynamic
  quantization of the encoder (one activation scale per whole window) cost 1-3 WER points on the
  multi-sentence sets; blockwise weights cost none.

Attention's activation × activation MatMuls, embeddings, norms and convolutions stay FP32. Graphs over 2 GB (the
real encoder) are read and written with external data (`use_external_data_format`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

ONNX_PROTO_LIMIT = 2**31 - 1  # bytes: larger models must keep their tensors outside the protobuf
OP_TYPES = ("MatMul", "Gemm")
PER_CHANNEL = True  # decoder: one weight scale per output channel rather than per tensor
BLOCK = 32  # encoder: weights per scale (the Core ML hybrid encoder's INT8_BLOCK too)
ACCURACY_LEVEL = 4  # MatMulNBits: int8 compute (activations quantized per block)


def graph_bytes(path: Path) -> int:
    """Bytes of an ONNX graph and the external data files beside it (the staging folder holds one graph)."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())


def recipe_for(name: str) -> str:
    """The recipe for a bundle graph file: "dynamic" for the decoder, "blockwise" for the encoder."""
    return "dynamic" if "decoder" in Path(name).name else "blockwise"


def quantize_graph(src: Path, dest: Path, recipe: str = "dynamic", per_channel: bool = PER_CHANNEL) -> Path:
    """Write an INT8 copy of the FP32 graph `src` (and its external data) to `dest`; return `dest`.

    Args:
        recipe: "dynamic" (quantize_dynamic, QInt8 weights, dynamic UINT8 activations) or "blockwise"
            (MatMulNBits, 8-bit weights in blocks of BLOCK).

    Raises:
        ValueError: `src` is not a readable ONNX graph, or an unknown recipe.
    """
    if recipe not in ("dynamic", "blockwise"):
        raise ValueError(f"unknown INT8 recipe {recipe!r} (dynamic or blockwise)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    large = graph_bytes(src) > ONNX_PROTO_LIMIT // 2  # the quantizer adds tensors: leave room below 2 GB
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizers log every node they skip through the root logger
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    try:
        if recipe == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(src, dest, op_types_to_quantize=list(OP_TYPES), per_channel=per_channel,
                             weight_type=QuantType.QInt8, use_external_data_format=large,
                             extra_options={"MatMulConstBOnly": True})
        else:
            _blockwise(src, dest, large)
    except Exception as e:  # onnx/onnxruntime raise their own untyped errors for a bad graph
        raise ValueError(f"cannot quantize {src}: {e}") from e
    finally:
        root.setLevel(level)
    return dest


def _blockwise(src: Path, dest: Path, large: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dest), large)


def quantize_graphs(staged: dict[str, Path]) -> dict[str, Path]:
    """INT8 copies of staged FP32 graphs (bundle file -> staged path), each in a folder of its own next to its
    source (`<name>-int8/`), by `recipe_for` the bundle file; the FP32 staging folders are removed. Returns
    bundle file -> INT8 graph."""
    out = {}
    for rel, src in staged.items():
        dest = src.parent.with_name(src.parent.name + "-int8") / src.name
        shutil.rmtree(dest.parent, ignore_errors=True)
        out[rel] = quantize_graph(src, dest, recipe_for(rel))
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
