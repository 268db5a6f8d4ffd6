"""Thin export wrappers around transformers' CohereAsr submodules, with fixed, explicit inputs and outputs.

EncoderExport: features (1, n_mels, F) + valid length → projected encoder states and every decoder layer's
cross-attention K/V, once per window (transformers' encoder does the masking inside).
DecoderStepExport: T tokens at T positions (T = 1: one step; T = the prompt: the prefill) with an external
self-attention cache of fixed capacity and fixed-length additive masks → the last token's logits and the T new
K/V rows. It calls the decoder's own layers, norms and projections; only the attention arithmetic over the
external caches is written out here.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class EncoderExport(nn.Module):
    """transformers encoder + decoder.proj (1280→1024) + per-layer cross K/V projections."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        dec = model.model.decoder
        self.encoder = model.model.encoder
        self.proj = dec.proj
        self.k_proj = nn.ModuleList(layer.encoder_attn.k_proj for layer in dec.layers)
        self.v_proj = nn.ModuleList(layer.encoder_attn.v_proj for layer in dec.layers)
        self.n_heads = model.config.num_attention_heads
        self.head_dim = model.config.head_dim

    def forward(self, input_features: torch.Tensor, feature_length: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_frames = input_features.shape[-1]
        mask = torch.arange(n_frames)[None, :] < feature_length[:, None]  # (1, F) valid frames
        h = self.encoder(input_features=input_features.transpose(1, 2), attention_mask=mask).last_hidden_state
        h = self.proj(h)  # (1, T, d_model)
        t = h.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(1, t, self.n_heads, self.head_dim).transpose(1, 2)  # (1, H, T, D)

        cross_k = torch.stack([heads(k(h)) for k in self.k_proj])  # (L, 1, H, T, D)
        cross_v = torch.stack([heads(v(h)) for v in self.v_proj])
        return h, cross_k, cross_v


def _scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q·keysᵀ (1, H, T, S) for q (1, H, T, D) and keys (1, H, S, D), computed as (keys·qᵀ)ᵀ: the large operand
    is read in its own row-major layout (ONNX Runtime's q·keysᵀ transposed a copy of the keys first)."""
    return torch.matmul(keys, q.transpose(-1, -2)).transpose(-1, -2)


MASK_VALUE = -1e4  # the manifest's additive mask value: finite, so FP16 never sees -inf


class DecoderStepExport(nn.Module):
    """T cache-external decoder steps in one call over transformers' CohereAsrDecoder layers and proj_out.

    T = 1 is the step of the greedy loop; T = the prompt length is the prompt prefill. The T new tokens sit at
    `position` (T,); each attends to the cache positions `self_mask` opens, except those being written now,
    and causally to the new tokens themselves, so the cache is read once and never rewritten inside the graph.
    """

    def __init__(self, model: nn.Module, cache_capacity: int, per_layer: bool = False) -> None:
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.n_heads = model.config.num_attention_heads
        self.head_dim = model.config.head_dim
        self.scale = self.head_dim**-0.5
        self.capacity = cache_capacity
        self.per_layer = per_layer  # inputs as contract.decoder_tensors(per_layer=True) orders them

    def forward(self, input_id: torch.Tensor, position: torch.Tensor, *state: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """state: self_k, self_v, self_mask, cross_k, cross_v, cross_mask (stacked over layers), or with
        per_layer: self_mask, cross_mask, then L self_k, L self_v, L cross_k and L cross_v tensors."""
        if not self.per_layer:
            self_k, self_v, self_mask, cross_k, cross_v, cross_mask = state
            return self.tokens(input_id, position, self_k, self_v, self_mask, cross_k, cross_v, cross_mask)
        n = len(self.decoder.layers)
        self_mask, cross_mask, *caches = state
        sk, sv, ck, cv = (caches[i * n:(i + 1) * n] for i in range(4))
        return self.tokens(input_id, position, sk, sv, self_mask, ck, cv, cross_mask)

    def tokens(self, input_id: torch.Tensor, position: torch.Tensor, self_k: Any, self_v: Any,
               self_mask: torch.Tensor, cross_k: Any, cross_v: Any, cross_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The T tokens through every layer; self_k ... cross_v: stacked tensors or per-layer sequences."""
        dec = self.decoder
        h_, d_, c_ = self.n_heads, self.head_dim, self.capacity
        x = dec.embed_tokens(input_id) + dec.pos_emb(position)[None]  # (1, T, d_model)
        x = dec.embedding_layernorm(x)
        # Cache rows being written now are read from the new K/V instead (their cache content is stale).
        writing = (torch.arange(c_)[None, :] == position[:, None]).to(self_mask.dtype).sum(0)  # (C,)
        cache_mask = self_mask + writing * MASK_VALUE  # (1, 1, 1, C)
        causal = (position[None, :] <= position[:, None]).to(self_mask.dtype)  # (T, T): key ≤ query
        new_mask = (1 - causal) * MASK_VALUE

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(1, -1, h_, d_).transpose(1, 2)  # (1, H, T, D)

        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            h = layer.input_layernorm(x)
            q, k, v = heads(sa.q_proj(h)), heads(sa.k_proj(h)), heads(sa.v_proj(h))
            scores = torch.cat([_scores(q, self_k[i]) * self.scale + cache_mask,
                                torch.matmul(q, k.transpose(-1, -2)) * self.scale + new_mask], dim=-1)
            p = torch.softmax(scores, dim=-1)  # (1, H, T, C + T)
            a = torch.matmul(p[..., :c_], self_v[i]) + torch.matmul(p[..., c_:], v)
            x = x + sa.o_proj(a.transpose(1, 2).reshape(1, -1, h_ * d_))
            h = layer.post_attention_layernorm(x)
            q = heads(ca.q_proj(h))
            p = torch.softmax(_scores(q, cross_k[i]) * self.scale + cross_mask, dim=-1)
            x = x + ca.o_proj(torch.matmul(p, cross_v[i]).transpose(1, 2).reshape(1, -1, h_ * d_))
            x = x + layer.mlp(layer.final_layernorm(x))
            new_k.append(k)
            new_v.append(v)
        logits = self.proj_out(dec.norm(x[:, -1]))  # (1, vocab): the last token's prediction
        return logits, torch.stack(new_k), torch.stack(new_v)  # new rows: (L, 1, H, T, D)


@contextlib.contextmanager
def finite_encoder_mask(value: float = -1e4) -> Iterator[None]:
    """While tracing for FP16, make the encoder's attention mask finite.

    transformers' Parakeet attention fills masked scores with torch.finfo(float32).min, which becomes -inf in
    FP16; fully masked (padded) rows then give NaN, and NaN in padded keys reaches the valid frames through
    0·NaN. A large finite value keeps every frame finite and changes nothing for the valid ones.
    """
    from transformers.models.parakeet import modeling_parakeet as mp

    real_torch = mp.torch
    proxy = types.ModuleType("torch_finite_min")
    proxy.__getattr__ = lambda name: getattr(real_torch, name)  # type: ignore[method-assign]
    proxy.finfo = lambda dtype=None: types.SimpleNamespace(min=value)  # type: ignore[attr-defined]
    mp.torch = proxy
    try:
        yield
    finally:
        mp.torch = real_torch
