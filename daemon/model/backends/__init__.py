"""Backends by name: `onnx` (ONNX Runtime, the default off macOS) and `coreml` (macOS)."""

from __future__ import annotations

import platform

from daemon.errors import ConfigError
from daemon.model.bundle import Bundle

from .base import Backend, EncoderOutput, Session

__all__ = ["BACKENDS", "Backend", "EncoderOutput", "Session", "default_backend", "get_backend"]

BACKENDS = ("onnx", "coreml")


def default_backend(bundle: Bundle) -> str:
    """coreml on a Mac when the bundle has Core ML files, onnx everywhere else."""
    if platform.system() == "Darwin" and "coreml" in bundle.backends:
        return "coreml"
    return "onnx"


def get_backend(bundle: Bundle, name: str | None = None, compute_units: str = "all") -> Backend:
    """Load a backend for a bundle; `name` None picks the default for this machine. `compute_units` (coreml
    only): all, cpu_and_ne, cpu_and_gpu or cpu_only."""
    name = name or default_backend(bundle)
    if name == "onnx":
        from .onnx import OnnxSession

        return Backend(bundle, name, OnnxSession)
    if name == "coreml":
        from .coreml import coreml_backend

        return coreml_backend(bundle, compute_units)
    raise ConfigError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
