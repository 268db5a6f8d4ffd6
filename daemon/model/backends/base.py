"""The backend interface: run the bundle's encoder (per frame bucket) and one decoder step.

A runtime module (onnx.py, coreml.py) only knows how to load one graph file and run it on named numpy
arrays (`Session`); `Backend` does the rest the same way for every runtime: picks the bucket, casts inputs to
the dtypes the manifest declares, and checks output shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.errors import BackendError
from daemon.model.bundle import Bundle, GraphSpec

Array = npt.NDArray[np.generic]


class Session(Protocol):
    """One loaded model file."""

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]: ...


@dataclass(frozen=True)
class EncoderOutput:
    """The encoder's outputs for one window, trimmed to its bucket."""

    hidden: Array  # (1, T_bucket, d_model) after the 1280→1024 projection
    # (n_layers, 1, n_heads, T_bucket, head_dim), per decoder layer, once per window; None where the decoder
    # computes them itself in every step from `hidden` (FluidAudio's contract)
    cross_k: Array | None
    cross_v: Array | None


class Backend:
    """Encoder and decoder step of one bundle on one runtime."""

    CACHE_INPUT = "self_k"  # the decoder input whose declared dtype is the host cache's

    def __init__(self, bundle: Bundle, name: str, load: Callable[[GraphSpec], Session],
                 files: str | None = None) -> None:
        files = files or name  # the bundle's files key: coreml-reference runs the "coreml" files
        if files not in bundle.backends:
            reads = "" if files == name else f" (which the {name} backend runs)"
            raise BackendError(f"the bundle {bundle.root} has no {files!r} model files{reads} (it has: "
                               f"{', '.join(sorted(bundle.backends))})")
        self.bundle = bundle
        self.name = name
        self.spec = bundle.backends[files]
        self._load = load
        self._encoders: dict[int, Session] = {}
        self.decoder_session = load(self.spec.decoder)
        self.cache_dtype = np.dtype(_dtype_of(self.spec.decoder, self.CACHE_INPUT))

    def encoder_session(self, frames: int) -> Session:
        """The encoder for a bucket, loaded on first use."""
        if frames not in self._encoders:
            self._encoders[frames] = self._load(self.spec.encoders[frames])
        return self._encoders[frames]

    def encode(self, features: npt.NDArray[np.float32], n_valid: int) -> EncoderOutput:
        """Run the encoder on (1, n_mels, F) features whose first n_valid frames are audio; F is a bucket."""
        frames = int(features.shape[-1])
        graph = self.spec.encoders[frames]
        out = _run(self.encoder_session(frames), graph,
                   {"input_features": features, "feature_length": np.array([n_valid])})
        return EncoderOutput(out["encoder_hidden"], out["cross_k"], out["cross_v"])

    def decoder_step(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """One decoder step (inputs and outputs as named in the manifest's decoder contract)."""
        return _run(self.decoder_session, self.spec.decoder, feeds)


def _dtype_of(graph: GraphSpec, name: str) -> str:
    for t in graph.inputs:
        if t.name == name:
            return t.dtype
    raise BackendError(f"{graph.path.name} declares no input {name!r}")


def _run(session: Session, graph: GraphSpec, feeds: dict[str, Array]) -> dict[str, Array]:
    cast = {}
    for t in graph.inputs:
        if t.name not in feeds:
            raise BackendError(f"{graph.path.name}: no value for input {t.name!r}")
        cast[t.name] = np.ascontiguousarray(feeds[t.name], dtype=t.dtype).reshape(t.shape)
    out = session.run(cast)
    for t in graph.outputs:
        if t.name not in out:
            raise BackendError(f"{graph.path.name} produced no output {t.name!r}")
        if tuple(out[t.name].shape) != t.shape:
            raise BackendError(f"{graph.path.name}: output {t.name} has shape {out[t.name].shape}, "
                               f"the manifest declares {t.shape}")
    return out
