"""Core ML sessions (macOS only): ML Program .mlpackage files run through coremltools.

Core ML can only predict on macOS; elsewhere `CoreMLSession` fails at once with a clear message.
"""

from __future__ import annotations

import logging
import platform

import numpy as np

from daemon.errors import BackendError
from daemon.model.bundle import GraphSpec

from .base import Array


def check_available() -> None:
    """Raise BackendError unless this machine can run Core ML predictions."""
    if platform.system() != "Darwin":
        raise BackendError(f"the coreml backend runs only on macOS (this is {platform.system()}); "
                           "use --backend onnx")
    try:
        logging.getLogger("coremltools").setLevel(logging.ERROR)
        import coremltools  # noqa: F401
    except ImportError as e:
        raise BackendError("the coreml backend needs coremltools (pip install 'coremltools==9.0')") from e


class CoreMLSession:
    """One .mlpackage loaded with coremltools (compute units: all, so the Neural Engine may be used)."""

    def __init__(self, graph: GraphSpec) -> None:
        check_available()
        import coremltools as ct

        try:
            self._model = ct.models.MLModel(str(graph.path), compute_units=ct.ComputeUnit.ALL)
        except Exception as e:  # coremltools raises plain Exception for load failures
            raise BackendError(f"cannot load {graph.path}: {e}") from e

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        out = self._model.predict(feeds)
        return {k: np.asarray(v) for k, v in out.items()}
