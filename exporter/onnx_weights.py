"""Store the weights of several ONNX graphs once, in one external file they all point into.

Every encoder bucket is its own static-shape graph with the same weights; inline, a bundle with four buckets
carries the encoder four times. ONNX external data lets an initializer name a file, an offset and a length, so
the graphs can share one copy. onnx's own `save_as_external_data` writes one file per graph, hence this step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

ALIGN = 4096  # page-aligned offsets, so ONNX Runtime can memory-map each tensor


def share_weights(graphs: list[Path], weights: Path, min_bytes: int = 1024) -> int:
    """Move every initializer of ≥ min_bytes from `graphs` into `weights` (same folder), each distinct tensor
    once; rewrite the graphs to reference it. Returns the size of the weights file in bytes."""
    if any(g.parent != weights.parent for g in graphs):
        raise ValueError("the weights file must sit next to the graphs that reference it")
    index: dict[bytes, tuple[int, int]] = {}
    with open(weights, "wb") as f:
        for path in graphs:
            model = onnx.load(str(path), load_external_data=True)
            for init in model.graph.initializer:
                if init.data_location == onnx.TensorProto.EXTERNAL or len(init.raw_data) < min_bytes:
                    continue
                data = init.raw_data
                key = hashlib.sha256(data).digest() + init.data_type.to_bytes(4, "little")
                if key not in index:
                    f.write(b"\0" * (-f.tell() % ALIGN))
                    index[key] = (f.tell(), len(data))
                    f.write(data)
                offset, length = index[key]
                init.ClearField("raw_data")
                init.data_location = onnx.TensorProto.EXTERNAL
                del init.external_data[:]
                for k, v in (("location", weights.name), ("offset", str(offset)), ("length", str(length))):
                    entry = init.external_data.add()
                    entry.key, entry.value = k, v
            onnx.save_model(model, str(path))
        return f.tell()
