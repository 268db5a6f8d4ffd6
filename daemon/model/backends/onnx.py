"""ONNX Runtime sessions (CPU): the default backend off macOS."""

from __future__ import annotations

import os

import numpy as np

from daemon.errors import BackendError
from daemon.model.bundle import GraphSpec

from .base import Array


class OnnxSession:
    """One ONNX graph in an onnxruntime.InferenceSession."""

    def __init__(self, graph: GraphSpec) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("the onnx backend needs the onnxruntime package (pip install onnxruntime)") from e
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        threads = int(os.environ.get("COHERE_ONNX_THREADS", "0"))  # 0 = onnxruntime's choice
        opts.intra_op_num_threads = threads
        try:
            self._sess = ort.InferenceSession(str(graph.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            raise BackendError(f"cannot load {graph.path}: {e}") from e
        self._outputs = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        values = self._sess.run(self._outputs, feeds)
        return {n: np.asarray(v) for n, v in zip(self._outputs, values, strict=True)}
