"""Export wrappers for FluidAudio's contract (FluidInference's published Core ML files), around transformers' modules.

FluidEncoder: `input_features` (1, n_mels, F) + `feature_length` (1,) → `hidden_states` (1, T, d_model), after
the decoder's 1280→1024 projection (as mobius put it in the encoder). No cross K/V: the decoder recomputes them.
FluidDecoderStep: one token of the cache-external decoder with per-layer caches `k_cache_i`/`v_cache_i`
(1, H, capacity, D) that come back whole as `k_cache_i_out`/`v_cache_i_out`, cross-attention computed inside the
step from `encoder_hidden_states`, raw logits (no log-softmax). v1 reads the position from the length of
`attention_mask` (zeros of length pos + 1) and attends over the first pos + 1 slots; v2 takes a fixed
additive mask over every slot and the position from `position_id`.
See ../shared/reference/coreml-prior-art.md §2 (the daemon side: daemon/model/backends/fluidaudio.py).
"""

from __future__ import annotations

import torch
from torch import nn


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v for q (1, H, 1, D), k/v (1, H, S, D), additive mask (1, 1, 1, S)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class FluidEncoder(nn.Module):
    """transformers encoder + decoder.proj: features and valid length → projected hidden states."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.model.encoder
        self.proj = model.model.decoder.proj

    def forward(self, input_features: torch.Tensor, feature_length: torch.Tensor) -> torch.Tensor:
        n_frames = input_features.shape[-1]
        mask = torch.arange(n_frames)[None, :] < feature_length[:, None]  # (1, F) valid frames
        h = self.encoder(input_features=input_features.transpose(1, 2), attention_mask=mask).last_hidden_state
        return self.proj(h)  # (1, T, d_model)


class FluidDecoderStep(nn.Module):
    """One step over transformers' CohereAsrDecoder layers with FluidAudio's inputs and outputs.

    forward(input_id, position_id, encoder_hidden_states, cross_attention_mask, attention_mask,
    k_cache_0, …, k_cache_{L-1}, v_cache_0, …, v_cache_{L-1}) → (logits, k_cache_0_out, …, v_cache_{L-1}_out).
    """

    def __init__(self, model: nn.Module, capacity: int, version: int) -> None:
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"FluidAudio decoder contract v{version} does not exist (v1 or v2)")
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.n_heads = model.config.num_attention_heads
        self.head_dim = model.config.head_dim
        self.scale = self.head_dim**-0.5
        self.capacity = capacity
        self.version = version

    def forward(self, input_id: torch.Tensor, position_id: torch.Tensor, encoder_hidden_states: torch.Tensor,
                cross_attention_mask: torch.Tensor, attention_mask: torch.Tensor, *caches: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        dec = self.decoder
        n_layers = len(dec.layers)
        k_caches, v_caches = caches[:n_layers], caches[n_layers:]
        h_, d_ = self.n_heads, self.head_dim
        x = dec.embed_tokens(input_id) + dec.pos_emb(position_id)  # (1, 1, d_model)
        x = dec.embedding_layernorm(x)
        slots = torch.arange(self.capacity)[None, None, :, None]  # (1, 1, C, 1)
        if self.version == 1:  # the mask's length is the position + 1 (mobius: end_step)
            end = attention_mask.shape[-1]
            at_pos = (slots == end - 1).to(x.dtype)
        else:
            at_pos = (slots == position_id.reshape(1)).to(x.dtype)
        t = encoder_hidden_states.shape[1]

        def heads(v: torch.Tensor, n: int) -> torch.Tensor:
            return v.view(1, n, h_, d_).transpose(1, 2)  # (1, H, n, D)

        k_out, v_out = [], []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            h = layer.input_layernorm(x)
            q, k, v = heads(sa.q_proj(h), 1), heads(sa.k_proj(h), 1), heads(sa.v_proj(h), 1)
            keys = k_caches[i] * (1 - at_pos) + k * at_pos  # (1, H, C, D): the new row at the position
            values = v_caches[i] * (1 - at_pos) + v * at_pos
            if self.version == 1:
                a = _attend(q, keys[:, :, :end], values[:, :, :end], attention_mask, self.scale)
            else:
                a = _attend(q, keys, values, attention_mask, self.scale)
            x = x + sa.o_proj(a.transpose(1, 2).reshape(1, 1, h_ * d_))
            h = layer.post_attention_layernorm(x)
            ck, cv = heads(ca.k_proj(encoder_hidden_states), t), heads(ca.v_proj(encoder_hidden_states), t)
            a = _attend(heads(ca.q_proj(h), 1), ck, cv, cross_attention_mask, self.scale)
            x = x + ca.o_proj(a.transpose(1, 2).reshape(1, 1, h_ * d_))
            x = x + layer.mlp(layer.final_layernorm(x))
            k_out.append(keys)
            v_out.append(values)
        logits = self.proj_out(dec.norm(x))[:, 0]  # (1, vocab), raw
        return (logits, *k_out, *v_out)
