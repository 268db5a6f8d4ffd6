"""Core ML export: ML Program .mlpackage files (FP16 compute), INT8 weight-only encoder in `hybrid` precision.

Precisions: hybrid (default) = encoder weights INT8 per-block linear-symmetric (INT8_BLOCK weights per FP16 scale), decoder FP16; fp16 = both
FP16; fp32 = both FP32. Every encoder bucket is converted on its own, then all are merged into one
multifunction package (`merge_functions`, a function per bucket, weights stored once; macOS 15 target).
Conversion works on Linux; prediction needs macOS.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .contract import Dims, decoder_tensors, encoder_tensors, example_inputs
from .options import PROMPT_LENGTH
from .wrappers import DecoderStepExport, EncoderExport, finite_encoder_mask

PRECISIONS = ("hybrid", "fp16", "fp32")
TARGET = "macOS15"  # INT8 weight compression (constexpr_blockwise_shift_scale) and native SDPA need macOS 15
INT = "int32"
INT8_WEIGHT_THRESHOLD = 2048  # tensors with fewer elements stay FP16 (the published encoder recipe)
# One FP16 scale per 32 input weights of each output channel (macOS 15 opset), not one per channel: on the demo
# model's hardest set (Spanish, three sentences a window) per-channel INT8 moved the WER +3.18 points from ONNX,
# per-block 32 -0.56, for 6 % more bytes (python -m exporter.demo.evaluate --backend coreml-reference). 32 divides
# every quantized axis of the demo model and the real one; 64 left the demo's 32-wide tensors in FP16.
INT8_BLOCK = 32


def _ct():
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct


def _state_dtype(precision: str) -> str:
    return "float32" if precision == "fp32" else "float16"


def _convert(module: torch.nn.Module, specs_in: list, specs_out: list, precision: str, path: Path) -> None:
    ct = _ct()
    args = example_inputs(specs_in)
    if specs_in[0][0] == "input_features":
        args = (args[0], torch.tensor([specs_in[0][1][-1] // 2], dtype=torch.int32))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=n, shape=s, dtype=np.dtype(dt).type) for n, s, dt in specs_in],
            outputs=[ct.TensorType(name=n, dtype=np.dtype(dt).type) for n, _, dt in specs_out],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, TARGET),
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else _fp16_tensors_only(ct),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))


def _fp16_tensors_only(ct: Any) -> Any:
    """FP16 for tensors, FP32 for scalars and vectors: lengths and positions are computed in rank ≤ 1 ops, and
    FP16 holds integers exactly only up to 2048 (a 3000-frame window's length came out 376 encoder frames, not
    375, so a padded frame leaked into attention for every clip over 20.48 s)."""
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: op.outputs[0].rank > 1)


def quantize_int8(path: Path) -> None:
    """Rewrite an .mlpackage with INT8 per-block linear-symmetric weights (weight-only, activations FP16)."""
    ct = _ct()
    import coremltools.optimize.coreml as cto
    from tqdm import tqdm

    tqdm.write(f"[export]   quantizing {path.name}: INT8 weights, one scale per {INT8_BLOCK}")
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_block", block_size=INT8_BLOCK,
        weight_threshold=INT8_WEIGHT_THRESHOLD))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.models.MLModel(str(path), skip_model_load=True)
        cto.linear_quantize_weights(model, config).save(str(path))


def export_encoder(model: torch.nn.Module, d: Dims, frames: int, precision: str, path: Path) -> tuple[list, list]:
    """Write the encoder for one bucket (INT8 weights in hybrid); return its (inputs, outputs) specs."""
    ins, outs = encoder_tensors(d, frames, INT, _state_dtype(precision))
    with finite_encoder_mask():
        _convert(EncoderExport(model).eval(), ins, outs, precision, path)
    if precision == "hybrid":
        quantize_int8(path)
    return ins, outs


DECODER_FUNCTIONS = ("decoder_step", "prefill")  # the decoder package's functions; the first is the default


def export_decoder(model: torch.nn.Module, d: Dims, precision: str, path: Path,
                   prefill_tokens: int = PROMPT_LENGTH) -> tuple[list, list]:
    """Write the decoder package (FP16 in hybrid and fp16) with two functions of the same weights: decoder_step
    (one token) and prefill (`prefill_tokens` tokens, the prompt, in one call; Core ML shapes are static).
    Returns the step's (inputs, outputs) specs."""
    staged = {}
    for function, tokens in zip(DECODER_FUNCTIONS, (1, prefill_tokens), strict=True):
        ins, outs = decoder_tensors(d, INT, _state_dtype(precision), tokens)
        staged[function] = path.parent / ".staging-decoder" / function / path.name
        _convert(DecoderStepExport(model, d.cache_capacity).eval(), ins, outs, precision, staged[function])
    merge_functions(staged, path, default=DECODER_FUNCTIONS[0])
    shutil.rmtree(path.parent / ".staging-decoder", ignore_errors=True)
    return decoder_tensors(d, INT, _state_dtype(precision))


def merge_functions(packages: dict[str, Path], dest: Path, default: str | None = None) -> None:
    """One multifunction .mlpackage from single-function ones (function name -> package); coremltools stores
    identical weights once. The default function is `default`, else the last one given (the full window)."""
    _ct()
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    desc = MultiFunctionDescriptor()
    for function, path in packages.items():
        desc.add_function(str(path), "main", function)
    desc.default_function_name = default or list(packages)[-1]
    if dest.exists():
        shutil.rmtree(dest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_multifunction(desc, str(dest))
