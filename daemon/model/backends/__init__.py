"""Backends by name: `onnx` (ONNX Runtime, the default off macOS), `coreml` (macOS) and `coreml-reference`
(the Core ML files evaluated op by op in numpy on any OS: slow, for checking a bundle without a Mac)."""

from __future__ import annotations

import logging
import platform

from daemon.errors import BackendError, ConfigError
from daemon.model.bundle import Bundle

from .base import Backend, EncoderOutput, Session
from .fluidaudio import backend_class

__all__ = ["BACKENDS", "Backend", "EncoderOutput", "Session", "backend_class", "default_backend", "files_of",
           "get_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "coreml", "coreml-reference")
FILES = {"coreml-reference": "coreml"}  # runtime -> the bundle's files key it reads, where they differ


def files_of(name: str) -> str:
    """The key of the bundle's files (manifest `backends`) that the runtime `name` runs."""
    return FILES.get(name, name)


def default_backend(bundle: Bundle) -> str:
    """coreml on a Mac that can run the bundle's Core ML files, onnx everywhere else (with a warning on a Mac
    that cannot: a macOS older than the files' target, or no coremltools)."""
    if platform.system() != "Darwin" and bundle.contract.startswith("fluidaudio"):
        raise BackendError(f"{bundle.root} holds Core ML files only: run it on a Mac (--backend coreml), or check it "
                           "here with --backend coreml-reference (slow: minutes per window at the full size)")
    if platform.system() != "Darwin" or "coreml" not in bundle.backends:
        return "onnx"
    from .coreml import check_available

    spec = bundle.manifest.get("backends", {}).get("coreml", {})
    try:
        check_available(spec.get("minimum_deployment_target") if isinstance(spec, dict) else None)
    except BackendError as e:
        log.warning("%s — using onnx", e)
        return "onnx"
    return "coreml"


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
    if name == "coreml-reference":
        from .coreml_reference import CoreMLReferenceSession, check_available

        check_available()
        return backend_class(bundle)(bundle, name, CoreMLReferenceSession, files=files_of(name))
    raise ConfigError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
