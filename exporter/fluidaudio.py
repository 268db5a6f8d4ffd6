"""`python -m exporter --contract fluidaudio-v1|fluidaudio-v2`: a checkpoint in FluidInference's published Core ML contract.

Writes, side by side in --out, what FluidAudio (Swift) and this daemon (`--model DIR`) load:
  cohere_encoder.mlpackage                     input_features (1, n_mels, 3500) f32, feature_length (1,) i32
                                               → hidden_states (1, 438, d_model)
  cohere_decoder_cache_external.mlpackage      v1: attention_mask (1, 1, 1, 1…108), zeros of length pos + 1
  cohere_decoder_cache_external_v2.mlpackage   v2: attention_mask (1, 1, 1, 108), additive, −1e4 after pos
    (both: input_id, position_id (1, 1) i32, encoder_hidden_states, cross_attention_mask (1, 1, 1, 438),
     k_cache_i / v_cache_i (1, H, 108, D) → logits (1, vocab), k_cache_i_out / v_cache_i_out)
  vocab.json (id → piece), tokenizer.model
Every tensor is declared float32 (int32 for ids, positions and lengths), as the reference document states the
published files; the precision is the compute precision inside. Compiling to .mlmodelc needs a Mac:
`xcrun coremlcompiler compile X.mlpackage OUTDIR`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fluidaudio_wrappers import FluidDecoderStep, FluidEncoder
from .load import Checkpoint

CONTRACTS = ("fluidaudio-v1", "fluidaudio-v2")
ENCODER = "cohere_encoder.mlpackage"
DECODERS = {"fluidaudio-v1": "cohere_decoder_cache_external.mlpackage",
            "fluidaudio-v2": "cohere_decoder_cache_external_v2.mlpackage"}
CAPACITY = 108  # self-attention slots, the 10-token prompt included (the published files')
WINDOW_FRAMES = 3500  # 35 s of 10 ms frames
MASK_VALUE = -1e4
PRECISIONS = ("fp16", "fp32", "hybrid")
DEFAULT_PRECISION = "fp16"  # as the published cache-external files (FP16 compute, float32 I/O)
# macOS 14 (iOS 17) as the published decoder; hybrid's per-block INT8 weights need macOS 15
TARGETS = {"fp16": "macOS14", "fp32": "macOS14", "hybrid": "macOS15"}


def encoder_frames(frames: int) -> int:
    """Encoder output frames: three stride-2 convolutions, ceil(L/2) each."""
    for _ in range(3):
        frames = -(-frames // 2)
    return frames


def tensor_specs(model: torch.nn.Module, version: int) -> dict[str, list[tuple[str, tuple[Any, ...], str]]]:
    """The contract's tensors for a model's dims: {"encoder_in", "encoder_out", "decoder_in", "decoder_out"}
    as (name, shape, dtype); v1's attention_mask length is None (1…CAPACITY)."""
    cfg = model.config
    n_mels, d = cfg.encoder_config.num_mel_bins, cfg.hidden_size
    layers, heads, hd, cross = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim, encoder_frames(3500)
    cache = (1, heads, CAPACITY, hd)
    mask = (1, 1, 1, None if version == 1 else CAPACITY)
    caches = [(f"{kv}_cache_{i}", cache, "float32") for kv in "kv" for i in range(layers)]
    return {
        "encoder_in": [("input_features", (1, n_mels, WINDOW_FRAMES), "float32"), ("feature_length", (1,), "int32")],
        "encoder_out": [("hidden_states", (1, cross, d), "float32")],
        "decoder_in": [("input_id", (1, 1), "int32"), ("position_id", (1, 1), "int32"),
                       ("encoder_hidden_states", (1, cross, d), "float32"),
                       ("cross_attention_mask", (1, 1, 1, cross), "float32"), ("attention_mask", mask, "float32"),
                       *caches],
        "decoder_out": [("logits", (1, cfg.vocab_size), "float32"),
                        *[(f"{n}_out", s, dt) for n, s, dt in caches]],
    }


def check_model(model: torch.nn.Module, fe: Any) -> None:
    """The contract fixes 35 s windows at 10 ms hops, ×8 subsampling and 108 decoder positions.

    Raises:
        ValueError: naming what this checkpoint has instead.
    """
    cfg = model.config
    frames = round(fe.max_audio_clip_s * fe.sampling_rate) // fe.hop_length
    if frames != WINDOW_FRAMES:
        raise ValueError(f"the FluidAudio contract takes {WINDOW_FRAMES}-frame windows; this checkpoint's window "
                         f"is {frames} frames")
    if cfg.encoder_config.subsampling_factor != 8:
        raise ValueError(f"the FluidAudio contract has 438 cross frames (×8 subsampling); this checkpoint "
                         f"subsamples ×{cfg.encoder_config.subsampling_factor}")
    if cfg.max_position_embeddings < CAPACITY:
        raise ValueError(f"the FluidAudio contract needs {CAPACITY} decoder positions; this checkpoint has "
                         f"{cfg.max_position_embeddings}")


def write_vocab(tokenizer_path: Path, out: Path) -> Path:
    """vocab.json: {"id": piece} for every piece of the SentencePiece model, as the published file."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    vocab = {str(i): sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    out.write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    return out


def export_fluidaudio(ckpt: Checkpoint, out: Path, contract: str, precision: str = DEFAULT_PRECISION) -> Path:
    """Write the encoder, the decoder of `contract`, vocab.json and tokenizer.model to `out`; return `out`."""
    from tqdm import tqdm

    if contract not in CONTRACTS:
        raise ValueError(f"unknown contract {contract!r} (choose from {', '.join(CONTRACTS)})")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    model, version = ckpt.model, int(contract[-1])
    check_model(model, ckpt.feature_extractor)
    specs = tensor_specs(model, version)
    out.mkdir(parents=True, exist_ok=True)
    tqdm.write(f"[export] {contract} ({precision}): tracing and converting {ENCODER} ...")
    from .wrappers import finite_encoder_mask

    with finite_encoder_mask():
        _convert(FluidEncoder(model).eval(), specs["encoder_in"], specs["encoder_out"], precision, out / ENCODER)
    if precision == "hybrid":
        from .to_coreml import quantize_int8

        quantize_int8(out / ENCODER)
    decoder = DECODERS[contract]
    tqdm.write(f"[export] {contract} ({precision}): tracing and converting {decoder} ...")
    _convert(FluidDecoderStep(model, CAPACITY, version).eval(), specs["decoder_in"], specs["decoder_out"],
             "fp32" if precision == "fp32" else "fp16", out / decoder)
    shutil.copyfile(ckpt.tokenizer_path, out / "tokenizer.model")
    write_vocab(ckpt.tokenizer_path, out / "vocab.json")
    tqdm.write(f"[export] done: {out} (compile on a Mac: xcrun coremlcompiler compile {out / ENCODER} {out})")
    return out


def _example(name: str, shape: tuple[Any, ...], dtype: str) -> torch.Tensor:
    if name == "feature_length":
        return torch.tensor([WINDOW_FRAMES // 2], dtype=torch.int32)
    if name == "attention_mask" and shape[-1] is None:
        return torch.zeros(1, 1, 1, 5)  # traced at position 4: the length is read from the shape
    if name == "position_id":
        return torch.tensor([[4]], dtype=torch.int32)
    return torch.zeros(shape, dtype=torch.int32 if dtype == "int32" else torch.float32)


def _convert(module: torch.nn.Module, specs_in: list, specs_out: list, precision: str, path: Path) -> None:
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    def shape_of(shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(ct.RangeDim(1, CAPACITY, default=1) if s is None else s for s in shape)

    args = tuple(_example(*s) for s in specs_in)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=n, shape=shape_of(s), dtype=np.dtype(dt).type) for n, s, dt in specs_in],
            outputs=[ct.TensorType(name=n, dtype=np.dtype(dt).type) for n, _, dt in specs_out],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, TARGETS[precision]),
            # FP16 for tensors only: the v1 position (the mask's length) and lengths stay exact in FP32
            compute_precision=(ct.precision.FLOAT32 if precision == "fp32"
                               else ct.transform.FP16ComputePrecision(op_selector=lambda op: op.outputs[0].rank > 1)),
        )
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
