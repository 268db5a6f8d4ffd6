"""ONNX export (fp32, TorchScript exporter, opset 17) of the encoder and the decoder step, weights streamed.

ONNX Runtime needs no fixed shapes, so the ONNX encoder is one graph with a dynamic frame axis (any window up
to the full one, no padding, one session) and the decoder's cross axis follows the window (a 5 s window's
decoder attends over its 63 encoder frames, not the full window's 438). The manifest marks such axes -1.

Memory: torch's exporter would build the whole model proto in memory (a copy of every weight, and another
while it is serialised: 22.6 GB at the real model's 8 GB of weights). Here it writes the graph without its
weights (`export_params=False`), the parameters it would have written are taken from its own pipeline
(`_model_to_graph`, after constant folding), and each is written to the graph's external data file one at a
time (exporter/onnx_weights.write_graph). Folded weights (transposes) are views of the model's tensors, so
nothing holds a second copy.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .contract import Dims, decoder_tensors, encoder_tensors, example_inputs, layer_names
from .onnx_weights import write_graph
from .wrappers import DecoderStepExport, EncoderExport

OPSET = 17
INT = "int64"
STATE = "float32"
ANY = -1  # a dynamic axis, as the manifest writes it
FRAME_AXES = {"input_features": {2: "frames"}, "encoder_hidden": {1: "encoder_frames"},
              "cross_k": {3: "encoder_frames"}, "cross_v": {3: "encoder_frames"}}
CROSS_AXES = {"cross_k": {3: "cross_frames"}, "cross_v": {3: "cross_frames"}, "cross_mask": {3: "cross_frames"}}
TRACE_FRAMES = 1000  # the encoder's example input (any length gives the same dynamic graph; parity tests prove it)
TOKEN_AXES = {"input_id": {1: "tokens"}, "position": {0: "tokens"}, "new_k": {3: "tokens"}, "new_v": {3: "tokens"}}

Specs = list[tuple[str, tuple[int, ...], str]]


def dynamic(specs: Specs, axes: dict[str, dict[int, str]]) -> Specs:
    """The tensor specs with the axes named in `axes` marked ANY (-1)."""
    return [(n, tuple(ANY if i in axes.get(n, {}) else s for i, s in enumerate(shape)), dt)
            for n, shape, dt in specs]


def _export(module: torch.nn.Module, specs_in: Specs, specs_out: Specs, path: Path,
            dynamic_axes: dict[str, dict[int, str]]) -> None:
    from torch.onnx._internal.torchscript_exporter import utils as ts

    args = example_inputs(specs_in)
    if specs_in[0][0] == "input_features":  # a valid length that exercises the masking path
        args = (args[0], torch.tensor([specs_in[0][1][-1] // 2], dtype=torch.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    params: dict[str, torch.Tensor] = {}
    model_to_graph = ts._model_to_graph

    def capture(*a: Any, **kw: Any) -> Any:
        graph, p, out = model_to_graph(*a, **kw)
        params.update(p)  # name -> tensor of every initializer, after constant folding
        return graph, p, out

    buf = io.BytesIO()
    ts._model_to_graph = capture
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, input_names=[s[0] for s in specs_in],
                              output_names=[s[0] for s in specs_out], opset_version=OPSET, dynamo=False,
                              do_constant_folding=True, export_params=False, dynamic_axes=dynamic_axes)
    finally:
        ts._model_to_graph = model_to_graph
    if not params:
        raise RuntimeError("torch's ONNX exporter reported no parameters (its internals changed: "
                           "exporter/to_onnx.py needs updating for this torch version)")
    import onnx

    model = onnx.load_from_string(buf.getvalue())
    del buf
    names = [i.name for i in model.graph.input if i.name in params]

    def tensors() -> Iterator[tuple[str, Any]]:
        for name in names:  # one contiguous copy at a time (a folded transpose is a view until here)
            yield name, params.pop(name).detach().contiguous().numpy()

    write_graph(model, tensors(), path)


def export_encoder(model: torch.nn.Module, d: Dims, frames: int, path: Path) -> tuple[Specs, Specs]:
    """Write the encoder with a dynamic frame axis for windows of up to `frames` (the full window); return its
    (inputs, outputs) tensor specs, dynamic axes -1. It is traced at TRACE_FRAMES: the tracer keeps every
    layer's activations until it ends (2.8 GB at the real shape and 3500 frames), and the graph is the same."""
    _export(EncoderExport(model).eval(), *encoder_tensors(d, min(frames, TRACE_FRAMES), INT, STATE), path,
            FRAME_AXES)
    ins, outs = encoder_tensors(d, frames, INT, STATE)
    return dynamic(ins, FRAME_AXES), dynamic(outs, FRAME_AXES)


def export_decoder(model: torch.nn.Module, d: Dims, path: Path) -> tuple[Specs, Specs]:
    """Write the decoder step with dynamic token and cross axes (T = 1: a step; T = the prompt: the prefill;
    the cross length: the window's encoder frames); return the step's (inputs, outputs) tensor specs (T = 1,
    the cross axis -1)."""
    ins, outs = decoder_tensors(d, INT, STATE, per_layer=True)
    axes = layer_cross_axes(d.n_layers)
    _export(DecoderStepExport(model, d.cache_capacity, per_layer=True).eval(), ins, outs, path,
            {**TOKEN_AXES, **axes})
    return dynamic(ins, axes), dynamic(outs, axes)


def prefill_tensors(d: Dims) -> tuple[Specs, Specs]:
    """The manifest's specs of the same decoder file called as the prompt prefill (token and cross axes -1)."""
    ins, outs = decoder_tensors(d, INT, STATE, ANY, per_layer=True)
    axes = layer_cross_axes(d.n_layers)
    return dynamic(ins, axes), dynamic(outs, axes)


def layer_cross_axes(n_layers: int) -> dict[str, dict[int, str]]:
    """CROSS_AXES for a decoder with per-layer inputs (cross_k_i: (1, H, X, D), the cross axis 2)."""
    return {"cross_mask": CROSS_AXES["cross_mask"],
            **{n: {2: "cross_frames"} for s in ("cross_k", "cross_v") for n in layer_names(s, n_layers)}}

