"""The bundle's tensor contract: names, shapes and dtypes of the encoder and decoder-step graphs.

Both converters (to_onnx.py, to_coreml.py) and the manifest take their tensor lists from here, so what a file
holds and what the manifest declares cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from daemon.model.bundle import encoder_frames as enc_frames


@dataclass(frozen=True)
class Dims:
    """The model dimensions that fix every tensor shape."""

    n_mels: int
    d_model: int  # decoder width (encoder states after the projection)
    n_layers: int  # decoder layers
    n_heads: int
    head_dim: int
    vocab_size: int
    cache_capacity: int  # self-attention cache positions
    cross_frames: int  # encoder frames of the full window (the decoder's fixed cross length)
    subsampling_stages: int


def dims_of(model: torch.nn.Module, cache_capacity: int, window_frames: int) -> Dims:
    """Read the dimensions from a CohereAsrForConditionalGeneration's config."""
    import math

    cfg = model.config
    enc = cfg.encoder_config
    stages = int(math.log2(enc.subsampling_factor))
    return Dims(enc.num_mel_bins, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim,
                cfg.vocab_size, cache_capacity, enc_frames(window_frames, stages), stages)


def encoder_tensors(d: Dims, frames: int, int_dtype: str, state_dtype: str
                    ) -> tuple[list[tuple[str, tuple[int, ...], str]], list[tuple[str, tuple[int, ...], str]]]:
    """(inputs, outputs) of the encoder for one frame bucket, as (name, shape, dtype)."""
    t = enc_frames(frames, d.subsampling_stages)
    kv = (d.n_layers, 1, d.n_heads, t, d.head_dim)
    return ([("input_features", (1, d.n_mels, frames), "float32"), ("feature_length", (1,), int_dtype)],
            [("encoder_hidden", (1, t, d.d_model), state_dtype), ("cross_k", kv, state_dtype),
             ("cross_v", kv, state_dtype)])


def decoder_tensors(d: Dims, int_dtype: str, state_dtype: str, tokens: int = 1, per_layer: bool = False
                    ) -> tuple[list[tuple[str, tuple[int, ...], str]], list[tuple[str, tuple[int, ...], str]]]:
    """(inputs, outputs) of the decoder for `tokens` new tokens (1: the step; the prompt length: the prefill;
    -1 in the manifest: any number), as (name, shape, dtype).

    per_layer: the caches and cross K/V as one input per layer (self_k_0 ... cross_v_{L-1}, each (1, H, C, D)),
    after the two masks, instead of stacked (self_k (L, 1, H, C, D) ...): ONNX Runtime copies every slice a
    graph takes of an input, so a stacked input costs a copy of every cache in every step; the host passes
    per-layer views of its stacked arrays for free.
    """
    cache = (d.n_layers, 1, d.n_heads, d.cache_capacity, d.head_dim)
    cross = (d.n_layers, 1, d.n_heads, d.cross_frames, d.head_dim)
    rows = (d.n_layers, 1, d.n_heads, tokens, d.head_dim)
    outs = [("logits", (1, d.vocab_size), "float32"), ("new_k", rows, state_dtype), ("new_v", rows, state_dtype)]
    ids = [("input_id", (1, tokens), int_dtype), ("position", (tokens,), int_dtype)]
    masks = [("self_mask", (1, 1, 1, d.cache_capacity), state_dtype),
             ("cross_mask", (1, 1, 1, d.cross_frames), state_dtype)]
    if per_layer:
        layers = [(f"{name}_{i}", shape[1:], state_dtype) for name, shape in
                  (("self_k", cache), ("self_v", cache), ("cross_k", cross), ("cross_v", cross))
                  for i in range(d.n_layers)]
        return [*ids, *masks, *layers], outs
    return ([*ids, ("self_k", cache, state_dtype), ("self_v", cache, state_dtype), masks[0],
             ("cross_k", cross, state_dtype), ("cross_v", cross, state_dtype), masks[1]], outs)


def layer_names(name: str, n_layers: int) -> list[str]:
    """The per-layer inputs of a stacked one: self_k -> self_k_0 ... self_k_{n-1}."""
    return [f"{name}_{i}" for i in range(n_layers)]


_TORCH = {"float32": torch.float32, "float16": torch.float32, "int32": torch.int32, "int64": torch.int64}


def example_inputs(specs: list[tuple[str, tuple[int, ...], str]]) -> tuple[torch.Tensor, ...]:
    """Zero tensors for tracing (float16 states are traced in float32; the converter sets the precision)."""
    return tuple(torch.zeros(shape, dtype=_TORCH[dt]) for _, shape, dt in specs)


def as_manifest(specs: list[tuple[str, tuple[int, ...], str]]) -> list[dict[str, object]]:
    return [{"name": n, "shape": list(s), "dtype": dt} for n, s, dt in specs]
