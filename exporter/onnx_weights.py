"""Store the weights of several ONNX graphs once, in one external file they all point into.

Every encoder bucket is its own static-shape graph with the same weights; inline, a bundle with four buckets
carries the encoder four times. ONNX external data lets an initializer name a file, an offset and a length, so
the graphs can share one copy. onnx's own `save_as_external_data` writes one file per graph, hence this step.

Graphs over 2 GB (the real model's encoder) come out of torch's exporter with one external file per tensor,
named after the tensor, next to the graph; two buckets exported into one folder would overwrite each other's
bucket-shaped constants (the positional encodings). So each graph is exported into a staging folder of its
own and read from there (`sources`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

ALIGN = 4096  # page-aligned offsets, so ONNX Runtime can memory-map each tensor


def share_weights(graphs: list[Path], weights: Path, min_bytes: int = 1024,
                  sources: list[Path] | None = None) -> int:
    """Move every initializer of ≥ min_bytes from `graphs` into `weights` (same folder), each distinct tensor
    once; rewrite the graphs to reference it. Returns the size of the weights file in bytes.

    sources: where each graph is read from, with the external data it references there (default: the graph's
    own path); the rewritten graph is written to graphs[i].
    """
    if any(g.parent != weights.parent for g in graphs):
        raise ValueError("the weights file must sit next to the graphs that reference it")
    sources = sources or graphs
    if len(sources) != len(graphs):
        raise ValueError("one source per graph")
    index: dict[bytes, tuple[int, int]] = {}
    with open(weights, "wb") as f:
        for path, source in zip(graphs, sources, strict=True):
            model = onnx.load(str(source), load_external_data=True)
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
