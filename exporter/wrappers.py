"""Thin export wrappers around transformers' CohereAsr submodules, with fixed, explicit inputs and outputs.

EncoderExport: features (1, n_mels, F) + valid length → projected encoder states and every decoder layer's
cross-attention K/V, once per window (transformers' encoder does the masking inside).
DecoderStepExport: one token at one position with an external self-attention cache of fixed capacity and
fixed-length additive masks → logits and the new K/V row. It calls the decoder's own layers, norms and
projections; only the attention arithmetic over the external caches is written out here.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

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


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v for q (1, H, 1, D), k/v (1, H, S, D), additive mask (1, 1, 1, S)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class DecoderStepExport(nn.Module):
    """One cache-external decoder step over transformers' CohereAsrDecoder layers and proj_out."""

    def __init__(self, model: nn.Module, cache_capacity: int) -> None:
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.n_heads = model.config.num_attention_heads
        self.head_dim = model.config.head_dim
        self.scale = self.head_dim**-0.5
        self.capacity = cache_capacity

    def forward(self, input_id: torch.Tensor, position: torch.Tensor, self_k: torch.Tensor, self_v: torch.Tensor,
                self_mask: torch.Tensor, cross_k: torch.Tensor, cross_v: torch.Tensor, cross_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dec = self.decoder
        h_, d_ = self.n_heads, self.head_dim
        x = dec.embed_tokens(input_id) + dec.pos_emb(position)[:, None]  # (1, 1, d_model)
        x = dec.embedding_layernorm(x)
        # One-hot of the current position: the new K/V row joins the cache without dynamic indexing.
        at_pos = (torch.arange(self.capacity)[None, None, :, None] == position).to(self_k.dtype)  # (1,1,C,1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(1, 1, h_, d_).transpose(1, 2)  # (1, H, 1, D)

        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            h = layer.input_layernorm(x)
            q, k, v = heads(sa.q_proj(h)), heads(sa.k_proj(h)), heads(sa.v_proj(h))
            keys = self_k[i] * (1 - at_pos) + k * at_pos  # (1, H, C, D)
            values = self_v[i] * (1 - at_pos) + v * at_pos
            a = _attend(q, keys, values, self_mask, self.scale)
            x = x + sa.o_proj(a.transpose(1, 2).reshape(1, 1, h_ * d_))
            h = layer.post_attention_layernorm(x)
            a = _attend(heads(ca.q_proj(h)), cross_k[i], cross_v[i], cross_mask, self.scale)
            x = x + ca.o_proj(a.transpose(1, 2).reshape(1, 1, h_ * d_))
            x = x + layer.mlp(layer.final_layernorm(x))
            new_k.append(k)
            new_v.append(v)
        logits = self.proj_out(dec.norm(x))[:, 0]  # (1, vocab)
        return logits, torch.stack(new_k), torch.stack(new_v)  # new rows: (L, 1, H, 1, D)


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
