"""ONNX weights outside the graphs, streamed one tensor at a time: written beside a graph as it is exported,
then stored once, in one external file every graph of the bundle points into.

A graph file holds only the structure; each initializer of ≥ min_bytes names a file, an offset and a length
(ONNX external data). Nothing here ever holds more than one tensor's bytes: at the real model's size (8 GB of
fp32 weights) a second copy of the weights would not fit a 16 GB Mac next to the model being exported.

`write_graph` stores a graph whose tensors come as torch/numpy arrays (exporter/to_onnx.py streams the
exporter's parameters through it); `share_weights` merges graphs written that way (or by any ONNX tool,
with external data in one file or a file per tensor, or inline) into the bundle's `onnx/weights.bin`, each
distinct tensor once (encoder buckets or graphs that share tensors carry them once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import onnx

ALIGN = 4096  # page-aligned offsets, so ONNX Runtime can memory-map each tensor
MIN_BYTES = 1024  # smaller tensors stay inline in the graph


class WeightsFile:
    """An external data file being written: tensors appended page-aligned, each distinct one once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[bytes] = open(path, "wb")  # closed by close() or the with block
        self._index: dict[bytes, tuple[int, int]] = {}

    def add(self, data: bytes | memoryview, data_type: int) -> tuple[int, int]:
        """Store `data` (a tensor's raw bytes) unless an identical tensor is there; its (offset, length)."""
        key = hashlib.sha256(data).digest() + data_type.to_bytes(4, "little")
        if key not in self._index:
            self._f.write(b"\0" * (-self._f.tell() % ALIGN))
            self._index[key] = (self._f.tell(), len(data))
            self._f.write(data)
        return self._index[key]

    def externalize(self, init: onnx.TensorProto, data: bytes | memoryview) -> None:
        """Point the initializer at `data` in this file (stored by `add`); its inline bytes are dropped."""
        offset, length = self.add(data, init.data_type)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v

    def close(self) -> int:
        """Close the file; its size in bytes."""
        size = self._f.tell()
        self._f.close()
        return size

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._f.closed:
            self.close()


def write_graph(model: onnx.ModelProto, tensors: Iterator[tuple[str, Any]], path: Path,
                min_bytes: int = MIN_BYTES) -> int:
    """Write `model` to `path` with `tensors` ((name, array) pairs, arrays with .tobytes(): numpy or torch
    through .numpy()) as its initializers: those of ≥ min_bytes into `<path>.data` beside it, one at a time.
    A graph input of the same name is dropped (torch's exporter lists parameters as inputs when it writes no
    initializers). Returns the bytes of external data written."""
    from onnx import numpy_helper

    inputs = {i.name for i in model.graph.input}
    dropped = set()
    with WeightsFile(path.with_name(path.name + ".data")) as wf:
        for name, array in tensors:
            init = numpy_helper.from_array(array, name)  # one tensor's bytes, dropped once external
            if len(init.raw_data) >= min_bytes:
                wf.externalize(init, init.raw_data)
            model.graph.initializer.append(init)
            dropped.add(name)
        size = wf.close()
    if dropped & inputs:
        kept = [i for i in model.graph.input if i.name not in dropped]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    onnx.save_model(model, str(path))
    return size


def share_weights(graphs: list[Path], weights: Path, min_bytes: int = MIN_BYTES,
                  sources: list[Path] | None = None) -> int:
    """Move every initializer of ≥ min_bytes from `graphs` into `weights` (same folder), each distinct tensor
    once; rewrite the graphs to reference it. Returns the size of the weights file in bytes.

    sources: where each graph is read from, with the external data it references there (default: the graph's
    own path); the rewritten graph is written to graphs[i]. Tensors are read one at a time.
    """
    if any(g.parent != weights.parent for g in graphs):
        raise ValueError("the weights file must sit next to the graphs that reference it")
    sources = sources or graphs
    if len(sources) != len(graphs):
        raise ValueError("one source per graph")
    if weights in sources or any(s.parent == weights.parent and _external_files(s) & {weights.name}
                                 for s in sources):
        raise ValueError(f"{weights} would overwrite external data a graph reads")
    with WeightsFile(weights) as wf:
        for path, source in zip(graphs, sources, strict=True):
            model = onnx.load(str(source), load_external_data=False)
            inline = [i for i in model.graph.initializer
                      if i.data_location != onnx.TensorProto.EXTERNAL and len(i.raw_data) >= min_bytes]
            for tensor in _all_tensors(model):  # initializers and Constant nodes' tensors (ONNX tools write both)
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    wf.externalize(tensor, _read_external(tensor, source.parent))
            for init in inline:
                wf.externalize(init, init.raw_data)
            onnx.save_model(model, str(path))
        return wf.close()


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and node attributes, subgraphs included."""
    from onnx.external_data_helper import _get_all_tensors

    yield from _get_all_tensors(model)


def _location(tensor: onnx.TensorProto) -> str | None:
    return next((e.value for e in tensor.external_data if e.key == "location"), None)


def _external_files(graph: Path) -> set[str]:
    model = onnx.load(str(graph), load_external_data=False)
    return {loc for t in _all_tensors(model) if (loc := _location(t)) is not None}


def _read_external(init: onnx.TensorProto, folder: Path) -> bytes:
    """The bytes an external initializer names (location, offset, length; no length: to the end)."""
    info = {e.key: e.value for e in init.external_data}
    with open(folder / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()
