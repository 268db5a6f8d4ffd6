"""INT8 ONNX graphs for CPUs: the MatMul/Gemm weights of exported graphs quantized by onnxruntime.quantization.

`python -m exporter --onnx-precision int8` runs this on every exported fp32 graph before the weights are
shared (exporter/onnx_weights.py). Dynamic quantization (`quantize_dynamic`): weights stored INT8 with one scale
per output channel, activations quantized to UINT8 on the fly per call, so no calibration data is needed and
every MatMul whose B is a weight becomes an integer matmul (MatMulInteger, fused by ONNX Runtime into
DynamicQuantizeMatMul). Attention's activation × activation MatMuls, the embeddings, norms and convolutions stay
FP32. A decoder step reads each weight once per token, so its time follows the weight bytes: INT8 reads a
quarter of FP32's (bench/decoder_step.py measures both, side by side).

Graphs over 2 GB (the real encoder) are read and written with external data (`use_external_data_format`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

ONNX_PROTO_LIMIT = 2**31 - 1  # bytes: larger models must keep their tensors outside the protobuf
OP_TYPES = ("MatMul", "Gemm")
# One scale per output channel instead of one per tensor: measured on the demo model (exporter.demo.evaluate)
# and at the full decoder shape (bench.decoder_step); see docs/benchmarks.md and models/demo/MODEL_CARD.md.
PER_CHANNEL = True


def graph_bytes(path: Path) -> int:
    """Bytes of an ONNX graph and the external data files beside it (the staging folder holds one graph)."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())


def quantize_graph(src: Path, dest: Path, per_channel: bool = PER_CHANNEL) -> Path:
    """Write an INT8 copy of the fp32 graph `src` (and its external data) to `dest`; return `dest`.

    Raises:
        ValueError: `src` is not a readable ONNX graph.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dest.parent.mkdir(parents=True, exist_ok=True)
    large = graph_bytes(src) > ONNX_PROTO_LIMIT // 2  # the quantizer adds tensors: leave room below 2 GB
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint through the root logger
    try:
        quantize_dynamic(src, dest, op_types_to_quantize=list(OP_TYPES), per_channel=per_channel,
                         weight_type=QuantType.QInt8, use_external_data_format=large,
                         extra_options={"MatMulConstBOnly": True})
    except Exception as e:  # onnx/onnxruntime raise their own untyped errors for a bad graph
        raise ValueError(f"cannot quantize {src}: {e}") from e
    finally:
        root.setLevel(level)
    return dest


def quantize_graphs(staged: dict[str, Path], per_channel: bool = PER_CHANNEL) -> dict[str, Path]:
    """INT8 copies of staged fp32 graphs (bundle file -> staged path), each in a folder of its own next to its
    source (`<name>-int8/`); the fp32 staging folders are removed. Returns bundle file -> INT8 graph."""
    out = {}
    for rel, src in staged.items():
        dest = src.parent.with_name(src.parent.name + "-int8") / src.name
        shutil.rmtree(dest.parent, ignore_errors=True)
        out[rel] = quantize_graph(src, dest, per_channel)
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
