"""Tiny random Cohere-architecture checkpoints (transformers CohereAsr) for tests and the pre-demo quick start.

`python -m exporter.tiny --out DIR [--seed N] [--preset a|b]` writes a save_pretrained folder with a
tokenizer.model whose control and language pieces carry the real names. Weights are random but scaled so the
decoder depends on the audio (with the default std 0.02 a random model emits the same tokens for any input).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .spm import train_tokenizer

# A few sentences so the tiny tokenizer has ordinary pieces; CJK is left out on purpose (byte fallback).
_TEXTS = [
    "turn on the kitchen lights", "set a timer for ten minutes", "the meeting is on friday at three",
    "call mom tomorrow morning", "what is the weather like today", "play some music in the living room",
    "apaga la luz del salón", "pon una alarma a las siete y media", "la reunión es el viernes",
    "llama a mamá mañana por la tarde", "qué tiempo hace hoy", "sube el volumen de la música",
    "remind me to buy milk and eggs", "open the garage door please", "it is twenty past eight",
]


@dataclass(frozen=True)
class TinyPreset:
    """Layer counts and widths of a tiny test model."""

    enc_hidden: int
    enc_layers: int
    enc_heads: int
    enc_ff: int
    sub_channels: int
    dec_hidden: int
    dec_layers: int
    dec_heads: int
    dec_ff: int
    vocab_size: int
    eos_boost: float  # added to the EOS bias so that some clips end early and some run to the budget


PRESETS = {
    "a": TinyPreset(64, 2, 4, 128, 16, 64, 2, 4, 128, 384, 4.0),
    "b": TinyPreset(96, 3, 2, 192, 8, 48, 3, 2, 96, 420, 3.0),
    # wide enough that weight matrices, not biases and norms, hold the bytes (as in the 2B model)
    "wide": TinyPreset(256, 2, 4, 1024, 32, 128, 2, 4, 512, 384, 0.0),
}


def tiny_config(p: TinyPreset, max_positions: int = 512):  # -> CohereAsrConfig
    """A CohereAsrConfig with the real architecture's structure and tiny dimensions."""
    from transformers import CohereAsrConfig

    enc = dict(hidden_size=p.enc_hidden, num_hidden_layers=p.enc_layers, num_attention_heads=p.enc_heads,
               intermediate_size=p.enc_ff, subsampling_conv_channels=p.sub_channels, conv_kernel_size=9,
               num_mel_bins=128, subsampling_factor=8)
    return CohereAsrConfig(encoder_config=enc, vocab_size=p.vocab_size, hidden_size=p.dec_hidden,
                           num_hidden_layers=p.dec_layers, num_attention_heads=p.dec_heads,
                           intermediate_size=p.dec_ff, max_position_embeddings=max_positions)


def make_audio_sensitive(model: nn.Module, seed: int) -> None:
    """Re-draw weights with unit-variance-preserving scales so outputs depend on the input audio.

    Linear/conv weights get std gain/sqrt(fan_in) (gain 1.5 for attention and projections), embeddings std 1;
    LayerNorm and BatchNorm keep their identity initialisation, biases a small spread; cross-attention
    queries and keys get 3× more so that different audio gives different tokens.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if prm.ndim >= 2:
                fan_in = prm[0].numel() if "embed" not in name and "pos_emb" not in name else 1
                std = 1.5 / math.sqrt(fan_in)
                prm.copy_(torch.randn(prm.shape, generator=g) * std)
            elif "norm" in name or "layernorm" in name:
                continue
            else:
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
        # Sharp cross-attention: each step reads a few frames instead of the mean of all of them.
        for layer in model.model.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(3.0)
            layer.encoder_attn.k_proj.weight.mul_(3.0)


def spm_piece_id(path: Path, piece: str) -> int:
    """The id of a piece in a SentencePiece model file."""
    import sentencepiece as spm

    return int(spm.SentencePieceProcessor(model_file=str(path)).piece_to_id(piece))


def build_tiny(out: Path, seed: int = 13, preset: str = "a", max_positions: int = 512) -> Path:
    """Write a tiny random checkpoint (save_pretrained + tokenizer.model) to `out`; return `out`.

    max_positions: the decoder's position embeddings (the exporter's cache cannot be larger).
    """
    from transformers import CohereAsrForConditionalGeneration

    p = PRESETS[preset]
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(_TEXTS * 4, p.vocab_size, out / "tokenizer.model")
    torch.manual_seed(seed)
    model = CohereAsrForConditionalGeneration(tiny_config(p, max_positions)).eval()
    make_audio_sensitive(model, seed)
    with torch.no_grad():
        model.proj_out.bias[model.config.eos_token_id] += p.eos_boost
    # Like the real generation_config: the prompt starts with "▁", so generate() prepends nothing.
    model.generation_config.decoder_start_token_id = spm_piece_id(out / "tokenizer.model", "\u2581")
    model.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m exporter.tiny", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint to")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="a")
    ap.add_argument("--max-positions", type=int, default=512, help="decoder position embeddings")
    args = ap.parse_args()
    print(build_tiny(args.out, args.seed, args.preset, args.max_positions))


if __name__ == "__main__":
    main()
