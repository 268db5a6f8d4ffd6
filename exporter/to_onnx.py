"""ONNX export (fp32, TorchScript exporter, opset 17) of the encoder buckets and the decoder step."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .contract import Dims, decoder_tensors, encoder_tensors, example_inputs
from .wrappers import DecoderStepExport, EncoderExport

OPSET = 17
INT = "int64"
STATE = "float32"


def _export(module: torch.nn.Module, specs_in: list, specs_out: list, path: Path) -> None:
    args = example_inputs(specs_in)
    if specs_in[0][0] == "input_features":  # a valid length that exercises the masking path
        args = (args[0], torch.tensor([specs_in[0][1][-1] // 2], dtype=torch.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=[s[0] for s in specs_in],
                          output_names=[s[0] for s in specs_out], opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)


def export_encoder(model: torch.nn.Module, d: Dims, frames: int, path: Path) -> tuple[list, list]:
    """Write the encoder for one frame bucket; return its (inputs, outputs) tensor specs."""
    ins, outs = encoder_tensors(d, frames, INT, STATE)
    _export(EncoderExport(model).eval(), ins, outs, path)
    return ins, outs


def export_decoder(model: torch.nn.Module, d: Dims, path: Path) -> tuple[list, list]:
    """Write the decoder step; return its (inputs, outputs) tensor specs."""
    ins, outs = decoder_tensors(d, INT, STATE)
    _export(DecoderStepExport(model, d.cache_capacity).eval(), ins, outs, path)
    return ins, outs
