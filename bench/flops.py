"""FLOP counts for the speed benchmarks: the FastConformer encoder from its shapes, and any static-shape ONNX
graph from onnx shape inference (the check that the analytic count matches what was exported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def encoder_flops(cfg: Any, frames: int) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of the FastConformer encoder on `frames` input frames, from the shapes.

    Counted: every matrix multiply and convolution. Not counted: norms, activations, softmax, masking, the
    rel_shift copies and the positional sin/cos (elementwise, well under 1 %). With C subsampling channels,
    frames F → F1 → F2 → F3 = T and mels 128 → 64 → 32 → 16 over the three stride-2 stages:

        subsampling   conv0 (1→C, 3×3): 2·9·C·F1·64
                      stage s = 2, 3: depthwise 3×3 2·9·C·Fs·Ms + pointwise 2·C²·Fs·Ms
                      linear (16·C → d): 2·T·16C·d
        per layer     FF1 + FF2 (macaron, d → ff → d each): 2 · 2 · 2·T·d·ff
        (T frames,    q, k, v, o projections: 4 · 2·T·d²;  linear_pos over P = 2T−1 positions: 2·P·d²
        P = 2T−1)     scores (q+u)kᵀ: 2·T²·d;  (q+v)pᵀ: 2·T·P·d;  attention × v: 2·T²·d
                      conv module: pointwise d → 2d 2·T·d·2d, depthwise k 2·T·d·k, pointwise d → d 2·T·d²

    At the real shape and 3500 frames (T = 438): 9.9 GFLOP subsampling + 37.8 GFLOP per layer, 1.83 TFLOP.
    """
    d, ff, k, c = cfg.hidden_size, cfg.intermediate_size, cfg.conv_kernel_size, cfg.subsampling_conv_channels
    lengths, mels = [frames], [cfg.num_mel_bins]
    for _ in range(3):
        lengths.append(-(-lengths[-1] // 2))
        mels.append(mels[-1] // 2)
    t, p = lengths[3], 2 * lengths[3] - 1
    sub = 2 * 9 * c * lengths[1] * mels[1]
    sub += sum(2 * 9 * c * lengths[s] * mels[s] + 2 * c * c * lengths[s] * mels[s] for s in (2, 3))
    sub += 2 * t * c * mels[3] * d
    parts = {"feed_forward": 2 * 2 * 2 * t * d * ff, "attention_projections": 4 * 2 * t * d * d,
             "linear_pos": 2 * p * d * d, "attention_scores": 2 * t * t * d + 2 * t * p * d + 2 * t * t * d,
             "conv_module": 2 * t * d * 2 * d + 2 * t * d * k + 2 * t * d * d}
    per_layer = sum(parts.values())
    return {"frames_out": t, "subsampling": float(sub), "per_layer": float(per_layer),
            "per_layer_parts": {n: float(v) for n, v in parts.items()},
            "total": float(sub + cfg.num_hidden_layers * per_layer)}


def export_extra_flops(cfg: Any, t: int) -> float:
    """What our encoder graph computes on top of the encoder: decoder.proj and every layer's cross K/V."""
    d_enc, d_dec = cfg.encoder_config.hidden_size, cfg.hidden_size
    return float(2 * t * d_enc * d_dec + cfg.num_hidden_layers * 2 * 2 * t * d_dec * d_dec)


def graph_flops(path: Path, frames: int | None = None) -> dict[str, float]:
    """FLOPs of every MatMul, Gemm and Conv of a static-shape ONNX graph, from onnx shape inference; products
    of two initializers (ONNX Runtime folds them at load) are counted apart. Dims that shape inference leaves
    symbolic (after Reshape/Expand) are taken from the other operand or the output, else 1 (the batch).
    frames: for an encoder with a dynamic frame axis, the frame count to count it at (shapes propagated
    through the graph's shape arithmetic by onnxruntime's symbolic shape inference)."""
    import contextlib
    import math

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if frames is None:
        model = onnx.shape_inference.infer_shapes(model)
    else:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        dim = next(i for i in model.graph.input if i.name == "input_features").type.tensor_type.shape.dim[-1]
        dim.ClearField("dim_param")
        dim.dim_value = frames
        with contextlib.chdir(path.parent):  # external tensors it reads (a few biases) are found from there
            model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*g.input, *g.output, *g.value_info)}
    shapes.update({i.name: list(i.dims) for i in g.initializer})
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}

    def known(*dims: int) -> int:
        return next((d for d in dims if d > 0), 1)

    run, folded = 0.0, 0.0
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a, b, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        if n.op_type == "Conv":  # y (N, C_out, *spatial), w (C_out, C_in/groups, *kernel)
            f = 2.0 * known(y[1], b[0]) * math.prod(known(d) for d in y[2:]) * math.prod(b[1:])
        else:
            if n.op_type == "Gemm" and any(at.name == "transB" and at.i for at in n.attribute):
                b = b[::-1]
            lead = max(len(a), len(b), len(y)) - 2
            pad = [[0] * (lead + 2 - len(s)) + s for s in (a, b, y)]
            batch = math.prod(known(pad[2][i], pad[0][i], pad[1][i]) for i in range(lead))
            f = 2.0 * batch * known(a[-2], y[-2]) * known(a[-1], b[-2]) * known(b[-1], y[-1])
        if all(i in consts for i in n.input[:2]):
            folded += f
        else:
            run += f
    return {"executed": run, "constant_folded": folded}

