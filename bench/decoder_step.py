"""P1: one decoder step in our contract vs a step that recomputes cross-attention K/V (FluidAudio v1 style).

    python -m bench.decoder_step [--steps 40] [--out bench/results/decoder_step.json]

Both graphs are exported from the same transformers CohereAsr decoder at the full shape of Cohere Transcribe
(8 layers, d 1024, 8 heads × 128, FFN 4096, vocab 16384, cross length 438, cache 266) with random weights, and
timed side by side in ONNX Runtime (CPU), alternating A/B so background load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exporter.contract import dims_of
from exporter.to_onnx import export_decoder
from exporter.wrappers import DecoderStepExport

ROOT = Path(__file__).resolve().parent.parent


class RecomputeCrossStep(DecoderStepExport):
    """The reference contract: encoder states in, cross K/V projected again inside every step."""

    def forward(self, input_id, position, self_k, self_v, self_mask, encoder_hidden, cross_mask):
        t = encoder_hidden.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(1, t, self.n_heads, self.head_dim).transpose(1, 2)

        layers = self.decoder.layers
        cross_k = torch.stack([heads(layer.encoder_attn.k_proj(encoder_hidden)) for layer in layers])
        cross_v = torch.stack([heads(layer.encoder_attn.v_proj(encoder_hidden)) for layer in layers])
        return super().forward(input_id, position, self_k, self_v, self_mask, cross_k, cross_v, cross_mask)


def full_decoder_model():  # -> CohereAsrForConditionalGeneration with the real decoder shape
    from transformers import CohereAsrConfig, CohereAsrForConditionalGeneration

    cfg = CohereAsrConfig(encoder_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "intermediate_size": 128, "subsampling_conv_channels": 8})
    torch.manual_seed(0)
    return CohereAsrForConditionalGeneration(cfg).eval()


def export_reference(model, d, path: Path) -> None:
    step = RecomputeCrossStep(model, d.cache_capacity).eval()
    cache = (d.n_layers, 1, d.n_heads, d.cache_capacity, d.head_dim)
    args = (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.zeros(cache),
            torch.zeros(cache), torch.zeros(1, 1, 1, d.cache_capacity), torch.zeros(1, d.cross_frames, d.d_model),
            torch.zeros(1, 1, 1, d.cross_frames))
    names = ["input_id", "position", "self_k", "self_v", "self_mask", "encoder_hidden", "cross_mask"]
    with torch.no_grad():
        torch.onnx.export(step, args, str(path), input_names=names, output_names=["logits", "new_k", "new_v"],
                          opset_version=17, dynamo=False)


def feeds(d, reference: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cache = (d.n_layers, 1, d.n_heads, d.cache_capacity, d.head_dim)
    f = {"input_id": np.array([[5]]), "position": np.array([20]),
         "self_k": rng.standard_normal(cache, np.float32), "self_v": rng.standard_normal(cache, np.float32),
         "self_mask": np.where(np.arange(d.cache_capacity) <= 20, 0, -1e4).astype(np.float32).reshape(1, 1, 1, -1),
         "cross_mask": np.zeros((1, 1, 1, d.cross_frames), np.float32)}
    if reference:
        f["encoder_hidden"] = rng.standard_normal((1, d.cross_frames, d.d_model), np.float32)
    else:
        kv = (d.n_layers, 1, d.n_heads, d.cross_frames, d.head_dim)
        f["cross_k"] = rng.standard_normal(kv, np.float32)
        f["cross_v"] = rng.standard_normal(kv, np.float32)
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoder_step.json")
    args = ap.parse_args()
    import onnxruntime as ort

    model = full_decoder_model()
    d = dims_of(model, 266, 3500)
    with tempfile.TemporaryDirectory() as tmp:
        ours_path, ref_path = Path(tmp) / "ours.onnx", Path(tmp) / "reference.onnx"
        export_decoder(model, d, ours_path)
        export_reference(model, d, ref_path)
        sessions = {name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                    for name, p in (("ours", ours_path), ("recompute_cross_kv", ref_path))}
        inputs = {"ours": feeds(d, False), "recompute_cross_kv": feeds(d, True)}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for name, s in sessions.items():  # warm-up
            s.run(None, inputs[name])
        for _ in range(args.steps):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, inputs[name])
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    macs_cross = 2 * d.n_layers * d.cross_frames * d.d_model * d.d_model
    result = {
        "command": f"python -m bench.decoder_step --steps {args.steps}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__} CPU",
        "shape": {"layers": d.n_layers, "d_model": d.d_model, "heads": d.n_heads, "head_dim": d.head_dim,
                  "vocab": d.vocab_size, "cross_frames": d.cross_frames, "cache": d.cache_capacity},
        "median_step_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "p90_step_ms": {k: round(1000 * sorted(v)[int(0.9 * (len(v) - 1))], 2) for k, v in times.items()},
        "ratio": round(med["recompute_cross_kv"] / med["ours"], 2),
        "cross_kv_macs_per_step_avoided": macs_cross,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
