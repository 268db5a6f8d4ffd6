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
from daemon.model.bundle import Bundle, GraphSpec, TensorSpec

Array = npt.NDArray[np.generic]
ANY = -1  # a dimension the manifest declares as -1 takes any size (the ONNX prefill's token axis)


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
        self._prefill_session: Session | None = None
        self.cache_dtype = np.dtype(_dtype_of(self.spec.decoder, self._per_layer(self.CACHE_INPUT)))

    def encoder_session(self, frames: int) -> Session:
        """The encoder for a bucket, loaded on first use."""
        if frames not in self._encoders:
            self._encoders[frames] = self._load(self.spec.encoders[frames])
        return self._encoders[frames]

    def input_frames(self, n_valid: int) -> int:
        """Frames to pad a window of n_valid feature frames to: n_valid itself for an encoder that takes any
        length (ONNX), else the smallest bucket that holds it.

        Raises:
            BackendError: a window longer than the model's.
        """
        full = self.bundle.window_frames
        if n_valid > full:
            raise BackendError(f"a window of {n_valid} frames is longer than the model's {full}")
        if self.spec.dynamic_encoder is not None:
            return n_valid
        return next(b for b in self.bundle.buckets if n_valid <= b)

    def cross_length(self, encoder_frames: int) -> int:
        """The cross length the decoder takes for a window of encoder_frames: the same when its cross axis is
        dynamic, else the full window's (the host pads and masks the rest)."""
        name = self._per_layer("cross_k")
        dynamic = _shape_of(self.spec.decoder, name)[3 if name == "cross_k" else 2] == ANY
        return encoder_frames if dynamic else self.bundle.cross_frames

    def encode(self, features: npt.NDArray[np.float32], n_valid: int) -> EncoderOutput:
        """Run the encoder on (1, n_mels, F) features whose first n_valid frames are audio; F is a bucket, or
        any count up to the full window for a dynamic encoder."""
        frames = int(features.shape[-1])
        graph = self.spec.dynamic_encoder
        if graph is not None:
            if frames > self.bundle.window_frames:
                raise BackendError(f"a window of {frames} frames is longer than the model's "
                                   f"{self.bundle.window_frames}")
            frames = self.bundle.window_frames  # the one session
        else:
            graph = self.spec.encoders[frames]
        out = _run(self.encoder_session(frames), graph,
                   {"input_features": features, "feature_length": np.array([n_valid])})
        return EncoderOutput(out["encoder_hidden"], out["cross_k"], out["cross_v"])

    def decoder_step(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """One decoder step (inputs and outputs as named in the manifest's decoder contract)."""
        return _run(self.decoder_session, self.spec.decoder, feeds)

    def _per_layer(self, name: str) -> str:
        """`name`, or its layer-0 input (name_0) where the decoder takes that tensor one input per layer."""
        declared = {t.name for t in self.spec.decoder.inputs}
        return name if name in declared or f"{name}_0" not in declared else f"{name}_0"

    def prefill_accepts(self, n_tokens: int) -> bool:
        """Whether `decoder_prefill` takes n_tokens tokens in one call (False for bundles without a prefill
        graph: the prompt is then fed one step at a time)."""
        graph = self.spec.prefill
        return graph is not None and _shape_of(graph, "input_id")[-1] in (ANY, n_tokens)

    def decoder_prefill(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """T tokens in one decoder call: the step's inputs with input_id (1, T) and position (T,); the last
        token's logits (1, vocab) and the T new K/V rows (n_layers, 1, n_heads, T, head_dim).

        Raises:
            BackendError: the bundle has no prefill graph.
        """
        graph = self.spec.prefill
        if graph is None:
            raise BackendError(f"the bundle {self.bundle.root} has no prefill graph for {self.name}")
        if self._prefill_session is None:  # ONNX: the step's own file and session (a dynamic token axis)
            same = (graph.path, graph.function) == (self.spec.decoder.path, self.spec.decoder.function)
            self._prefill_session = self.decoder_session if same else self._load(graph)
        return _run(self._prefill_session, graph, feeds)


def _input(graph: GraphSpec, name: str) -> TensorSpec:
    for t in graph.inputs:
        if t.name == name:
            return t
    raise BackendError(f"{graph.path.name} declares no input {name!r}")


def _dtype_of(graph: GraphSpec, name: str) -> str:
    return _input(graph, name).dtype


def _shape_of(graph: GraphSpec, name: str) -> tuple[int, ...]:
    return _input(graph, name).shape


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
        shape = tuple(out[t.name].shape)
        if len(shape) != len(t.shape) or any(d != s and s != ANY for d, s in zip(shape, t.shape, strict=True)):
            raise BackendError(f"{graph.path.name}: output {t.name} has shape {out[t.name].shape}, "
                               f"the manifest declares {t.shape}")
    return out
