"""P1: one decoder step in our contract (FP32 and INT8) vs a step that recomputes cross K/V (FluidAudio v1 style),
against this machine's memory bandwidth; the host loop's share; the prompt prefill vs feeding it step by step.

    python -m bench.decoder_step [--steps 40] [--out bench/results/decoder_step.json]

Every graph is exported from the same transformers CohereAsr decoder at the full shape of Cohere Transcribe
(8 layers, d 1024, 8 heads × 128, FFN 4096, vocab 16384, cross length 438, cache 266) with random weights, and
timed side by side in ONNX Runtime (CPU), round robin so background load hits all alike. INT8 = the exporter's
own `--onnx-precision int8` (exporter/quantize.py) applied to the same FP32 graphs. "before" is our step as it
was before the prefill work: stacked cache inputs (which ONNX Runtime splits, copying every cache each step), and
the new K/V row blended into a copy of the whole cache in every layer; ours now takes one input per layer.

Bandwidth: bench/bandwidth.py (numpy copy and read of 1 GB). The floor of a step is the bytes it must read
(weights, not the embedding tables, of which a step reads one row) ÷ bandwidth; the ratio step ÷ floor says how
close the step is to it. Host loop: daemon.model.decode.greedy_decode over the same session, through
Backend's own input checks (base._run), vs the bare session.run per step.
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
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from bench.bandwidth import measure as measure_bandwidth
from daemon.model.decode import STACKED, layer_views
from exporter.contract import Dims, decoder_tensors, dims_of
from exporter.quantize import quantize_graph
from exporter.to_onnx import export_decoder
from exporter.wrappers import DecoderStepExport

ROOT = Path(__file__).resolve().parent.parent
PROMPT = 10  # tokens of the real prompt
POSITION = 20  # the cache position a timed step writes (prompt + 10 tokens)


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


class BlendStep(DecoderStepExport):
    """Our step before the prefill work (commit 32d46d4): one token; its K/V row blended into the whole cache
    (self_k·(1 − one-hot) + k·one-hot) in every layer, then attention over the blended copy."""

    def forward(self, input_id, position, self_k, self_v, self_mask, cross_k, cross_v, cross_mask):
        dec = self.decoder
        h_, d_ = self.n_heads, self.head_dim
        x = dec.embedding_layernorm(dec.embed_tokens(input_id) + dec.pos_emb(position)[:, None])
        at_pos = (torch.arange(self.capacity)[None, None, :, None] == position).to(self_k.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(1, 1, h_, d_).transpose(1, 2)

        def attend(q, k, v, mask):
            return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale + mask, -1), v)

        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            sa, ca = layer.self_attn, layer.encoder_attn
            h = layer.input_layernorm(x)
            q, k, v = heads(sa.q_proj(h)), heads(sa.k_proj(h)), heads(sa.v_proj(h))
            a = attend(q, self_k[i] * (1 - at_pos) + k * at_pos, self_v[i] * (1 - at_pos) + v * at_pos, self_mask)
            x = x + sa.o_proj(a.transpose(1, 2).reshape(1, 1, h_ * d_))
            a = attend(heads(ca.q_proj(layer.post_attention_layernorm(x))), cross_k[i], cross_v[i], cross_mask)
            x = x + ca.o_proj(a.transpose(1, 2).reshape(1, 1, h_ * d_))
            x = x + layer.mlp(layer.final_layernorm(x))
            new_k.append(k)
            new_v.append(v)
        return self.proj_out(dec.norm(x))[:, 0], torch.stack(new_k), torch.stack(new_v)


def full_decoder_model():  # -> CohereAsrForConditionalGeneration with the real decoder shape
    from transformers import CohereAsrConfig, CohereAsrForConditionalGeneration

    cfg = CohereAsrConfig(encoder_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "intermediate_size": 128, "subsampling_conv_channels": 8})
    torch.manual_seed(0)
    return CohereAsrForConditionalGeneration(cfg).eval()


def _torch_export(module: torch.nn.Module, args: tuple, names: list[str], path: Path) -> None:
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["logits", "new_k", "new_v"],
                          opset_version=17, dynamo=False)


def export_reference(model, d: Dims, path: Path) -> None:
    cache = (d.n_layers, 1, d.n_heads, d.cache_capacity, d.head_dim)
    args = (torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.zeros(cache),
            torch.zeros(cache), torch.zeros(1, 1, 1, d.cache_capacity), torch.zeros(1, d.cross_frames, d.d_model),
            torch.zeros(1, 1, 1, d.cross_frames))
    names = ["input_id", "position", "self_k", "self_v", "self_mask", "encoder_hidden", "cross_mask"]
    _torch_export(RecomputeCrossStep(model, d.cache_capacity).eval(), args, names, path)


def export_before(model, d: Dims, path: Path) -> None:
    ins, _ = decoder_tensors(d, "int64", "float32")  # stacked, as it was
    args = tuple(torch.zeros(s, dtype=torch.int64 if dt == "int64" else torch.float32) for _, s, dt in ins)
    _torch_export(BlendStep(model, d.cache_capacity).eval(), args, [n for n, _, _ in ins], path)


def feeds(d: Dims, reference: bool, tokens: int = 1, position: int = POSITION, per_layer: bool = True
          ) -> dict[str, np.ndarray]:
    """Inputs of one call; ours (not `reference`) with per-layer caches unless per_layer is False."""
    rng = np.random.default_rng(0)
    cache = (d.n_layers, 1, d.n_heads, d.cache_capacity, d.head_dim)
    f = {"input_id": np.full((1, tokens), 5), "position": np.arange(position, position + tokens),
         "self_k": rng.standard_normal(cache, np.float32), "self_v": rng.standard_normal(cache, np.float32),
         "self_mask": np.where(np.arange(d.cache_capacity) < position + tokens, 0, -1e4).astype(np.float32)
         .reshape(1, 1, 1, -1),
         "cross_mask": np.zeros((1, 1, 1, d.cross_frames), np.float32)}
    if reference:
        f["encoder_hidden"] = rng.standard_normal((1, d.cross_frames, d.d_model), np.float32)
    else:
        kv = (d.n_layers, 1, d.n_heads, d.cross_frames, d.head_dim)
        f["cross_k"] = rng.standard_normal(kv, np.float32)
        f["cross_v"] = rng.standard_normal(kv, np.float32)
    if per_layer and not reference:
        stacked = {k: f.pop(k) for k in STACKED}
        f |= layer_views(stacked, d.n_layers)
    return f


def bytes_read_per_step(path: Path) -> int:
    """Initializer bytes a step reads: all but the tables only Gather reads (embeddings: one row per step)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        if users.get(init.name, set()) <= {"Gather"}:
            continue
        total += int(np.prod(init.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(
            init.data_type).itemsize
    return total


def kv_bytes_per_step(d: Dims) -> int:
    """FP32 K/V a step reads: the self cache and the cross K/V, K and V."""
    return 4 * 2 * d.n_layers * d.n_heads * d.head_dim * (d.cache_capacity + d.cross_frames)


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_round_robin(runs: dict[str, Any], steps: int) -> dict[str, list[float]]:
    """Each callable once (warm-up), then `steps` rounds of all of them; seconds per call."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


class HostBackend:
    """The Backend surface greedy_decode uses, over one ONNX session, through base._run's checks and casts."""

    def __init__(self, sess, d: Dims) -> None:
        from daemon.model.bundle import GraphSpec, TensorSpec

        def spec(tokens: int):
            ins, outs = decoder_tensors(d, "int64", "float32", tokens, per_layer=True)
            return GraphSpec(Path("decoder_step.onnx"), tuple(TensorSpec(*t) for t in ins),
                             tuple(TensorSpec(*t) for t in outs))

        self.sess, self.step_spec, self.prefill_spec = _Sess(sess), spec(1), spec(-1)
        self.cache_dtype = np.dtype("float32")
        self.bundle = SimpleNamespace(cache_capacity=d.cache_capacity, n_layers=d.n_layers, n_heads=d.n_heads,
                                      head_dim=d.head_dim, cross_frames=d.cross_frames, mask_value=-1e4,
                                      eos_logit_bias=0.0, eos_id=3)
        self.prefill = True

    def decoder_step(self, feeds):
        from daemon.model.backends.base import _run

        return _run(self.sess, self.step_spec, feeds)

    def prefill_accepts(self, n: int) -> bool:
        return self.prefill

    def decoder_prefill(self, feeds):
        from daemon.model.backends.base import _run

        return _run(self.sess, self.prefill_spec, feeds)


class _Sess:
    def __init__(self, sess) -> None:
        self.sess, self.names = sess, [o.name for o in sess.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.names, self.sess.run(self.names, feeds), strict=True))


class _Instant:
    """A session that returns outputs of the right shapes at once: greedy_decode over it times the host alone."""

    def __init__(self, sess, d: Dims) -> None:
        self.outputs = {t: [o.copy() for o in sess.run(None, feeds(d, False, t))] for t in (1, PROMPT)}

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in ("logits", "new_k", "new_v")]

    def run(self, names, feeds):
        return self.outputs[len(feeds["position"])]


def host_loop(sess, d: Dims, new_tokens: int, repeats: int) -> dict[str, float]:
    """ms per decoder call in greedy_decode (prompt prefilled, then `new_tokens` tokens) and in bare session.run
    of the same feeds, alternating; and greedy_decode over a session that returns at once (the host's own time,
    independent of the machine's load)."""
    from daemon.model.backends import EncoderOutput
    from daemon.model.decode import DecodeOptions, greedy_decode

    f = feeds(d, False)
    stacked = feeds(d, False, per_layer=False)
    enc = EncoderOutput(np.zeros((1, d.cross_frames, d.d_model), np.float32), stacked["cross_k"], stacked["cross_v"])
    backend = HostBackend(sess, d)
    prompt = list(range(20, 20 + PROMPT))
    loop, bare, host = [], [], []
    instant = HostBackend(_Instant(sess, d), d)
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = greedy_decode(instant, enc, d.cross_frames, prompt, new_tokens,  # type: ignore[arg-type]
                            DecodeOptions(ignore_eos=True))
        host.append((time.perf_counter() - t0) / res.n_steps)
        t0 = time.perf_counter()
        res = greedy_decode(backend, enc, d.cross_frames, prompt, new_tokens,  # type: ignore[arg-type]
                            DecodeOptions(ignore_eos=True))
        loop.append((time.perf_counter() - t0) / res.n_steps)
        t0 = time.perf_counter()
        for _ in range(res.n_steps):
            sess.run(None, f)
        bare.append((time.perf_counter() - t0) / res.n_steps)
    ms_loop, ms_bare = 1000 * statistics.median(loop), 1000 * statistics.median(bare)
    ms_host = 1000 * statistics.median(host)
    return {"greedy_decode_ms_per_call": round(ms_loop, 2), "session_run_ms_per_call": round(ms_bare, 2),
            "host_ms_per_call": round(ms_host, 3), "host_share": round(ms_host / ms_loop, 4),
            "new_tokens": new_tokens}


def prefill_vs_steps(sess, d: Dims, repeats: int) -> dict[str, float]:
    """The 10-token prompt in one call vs ten single-token calls (same graph, same session)."""
    one = feeds(d, False, PROMPT, 0)
    singles = [feeds(d, False, 1, p) for p in range(PROMPT)]
    t = time_round_robin({"prefill": lambda: sess.run(None, one),
                          "steps": lambda: [sess.run(None, s) for s in singles]}, repeats)
    p, s = (1000 * statistics.median(t[k]) for k in ("prefill", "steps"))
    return {"prompt_tokens": PROMPT, "prefill_ms": round(p, 2), "steps_ms": round(s, 2), "ratio": round(s / p, 2)}


VARIANTS = {  # name -> what it is (docs/benchmarks.md rows)
    "ours_int8": "ours, INT8 (`--onnx-precision int8`): cross K/V once per window",
    "ours_fp32": "ours, FP32: cross K/V once per window",
    "before_fp32": "ours before (FP32, stacked caches split and the K/V row blended into a copy every layer)",
    "recompute_cross_kv": "FluidAudio v1 style, FP32: cross K/V projected again in every step",
    "recompute_cross_kv_int8": "FluidAudio v1 style, INT8 (same quantization)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoder_step.json")
    args = ap.parse_args()
    import onnxruntime as ort

    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    model = full_decoder_model()
    d = dims_of(model, 266, 3500)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: Path(tmp) / k / "g.onnx" for k in VARIANTS}
        for p in paths.values():
            p.parent.mkdir()
        export_decoder(model, d, paths["ours_fp32"])
        export_before(model, d, paths["before_fp32"])
        export_reference(model, d, paths["recompute_cross_kv"])
        del model
        quantize_graph(paths["ours_fp32"], paths["ours_int8"])
        quantize_graph(paths["recompute_cross_kv"], paths["recompute_cross_kv_int8"])
        weights = {k: bytes_read_per_step(p) for k, p in paths.items()}
        sessions = {k: session(p) for k, p in paths.items()}
        inputs = {k: feeds(d, k.startswith("recompute"), per_layer=k.startswith("ours")) for k in VARIANTS}
        times = time_round_robin({k: (lambda k=k: sessions[k].run(None, inputs[k])) for k in VARIANTS}, args.steps)
        host = {k: host_loop(sessions[k], d, 30, 5) for k in ("ours_fp32", "ours_int8")}
        prefill = {k: prefill_vs_steps(sessions[k], d, 5) for k in ("ours_fp32", "ours_int8")}
    bandwidth = measure_bandwidth()
    med = {k: statistics.median(v) for k, v in times.items()}
    kv = kv_bytes_per_step(d)

    def floor_ms(nbytes: int, gbps: float) -> float:
        return 1000 * nbytes / (gbps * 1e9)

    limits = {k: {"weight_mb": round(weights[k] / 1e6, 1),
                  "floor_ms_copy_bw": round(floor_ms(weights[k], bandwidth["best_copy_gbps"]), 2),
                  "ratio_to_floor_copy_bw": round(1000 * med[k] / floor_ms(weights[k], bandwidth["best_copy_gbps"]), 2),
                  "floor_ms_read_bw": round(floor_ms(weights[k], bandwidth["best_read_gbps"]), 2),
                  "ratio_to_floor_read_bw": round(1000 * med[k] / floor_ms(weights[k], bandwidth["best_read_gbps"]), 2),
                  "ratio_to_floor_read_bw_with_kv": round(
                      1000 * med[k] / floor_ms(weights[k] + kv, bandwidth["best_read_gbps"]), 2)}
              for k in ("ours_fp32", "ours_int8")}
    result = {
        "command": f"python -m bench.decoder_step --steps {args.steps}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__} CPU, load average "
                   f"at start {load_start}, at end {', '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine)",
        "shape": {"layers": d.n_layers, "d_model": d.d_model, "heads": d.n_heads, "head_dim": d.head_dim,
                  "vocab": d.vocab_size, "cross_frames": d.cross_frames, "cache": d.cache_capacity},
        "variants": VARIANTS,
        "median_step_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "p90_step_ms": {k: round(1000 * sorted(v)[int(0.9 * (len(v) - 1))], 2) for k, v in times.items()},
        "ratio": round(med["recompute_cross_kv"] / med["ours_int8"], 2),
        "ratios": {"recompute_fp32 / ours_int8": round(med["recompute_cross_kv"] / med["ours_int8"], 2),
                   "recompute_fp32 / ours_fp32": round(med["recompute_cross_kv"] / med["ours_fp32"], 2),
                   "recompute_int8 / ours_int8": round(med["recompute_cross_kv_int8"] / med["ours_int8"], 2),
                   "ours_fp32 / ours_int8": round(med["ours_fp32"] / med["ours_int8"], 2),
                   "before_fp32 / ours_fp32": round(med["before_fp32"] / med["ours_fp32"], 2)},
        "goal": {"ratio": 3.0, "met": med["recompute_cross_kv"] / med["ours_int8"] >= 3.0},
        "cross_kv_macs_per_step_avoided": 2 * d.n_layers * d.cross_frames * d.d_model * d.d_model,
        "bandwidth": bandwidth,
        "kv_mb_per_step": round(kv / 1e6, 1),
        "limits": limits,
        "host_loop": host,
        "prefill": prefill,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
