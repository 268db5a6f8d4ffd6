"""INT8 ONNX graphs (exporter/quantize.py, `--onnx-precision int8`): what the quantizer writes, the >2 GB path,
and an INT8 bundle decoding next to its FP32 twin (tiny random config a)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from daemon.model.transcriber import load_transcriber
from exporter import quantize
from exporter.check import forced_logprobs, synthetic_clips
from exporter.options import ExportOptions

BUCKETS = "1000,3500"
# Teacher-forced |Δ log-prob| of the FP32 bundle's tokens, INT8 vs FP32 (tiny config a, 5 clips): measured
# 0.33 on this machine; dynamic INT8 of a random model moves log-probs more than a trained one's.
INT8_LOGPROB_BOUND = 0.5


def _export(ckpt: Path, out: Path, precision: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(out), "--buckets",
                        BUCKETS, "--backends", "onnx", "--onnx-precision", precision], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def bundles(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    return {p: _export(tiny_checkpoints["a"], root / p, p) for p in ("fp32", "int8")}


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_int8_bundle_holds_int8_matmul_weights(bundles) -> None:
    """Manifest precision int8; the decoder's MatMul/Gemm weights all became dynamically quantized integer
    matmuls, the encoder's MatMul weights 8-bit blocks (MatMulNBits); no FP32 MatMul with a weight is left; the
    weights file is well under half the FP32 one (norms, convolutions and embeddings stay FP32)."""
    import onnx

    m = json.loads((bundles["int8"] / "manifest.json").read_text())
    assert m["backends"]["onnx"]["precision"] == "int8"
    graphs = sorted((bundles["int8"] / "onnx").glob("*.onnx"))
    assert [g.name for g in graphs] == ["decoder_step.onnx", "encoder.onnx"]
    for graph in graphs:
        model = onnx.load(str(graph), load_external_data=False)
        weights = {i.name for i in model.graph.initializer}
        left = [n.name for n in model.graph.node if n.op_type in ("MatMul", *(("Gemm",) if "decoder" in graph.name
                                                                          else ()))
                and any(i in weights for i in n.input[1:2])]
        assert left == [], graph.name
        want = {"DynamicQuantizeMatMul", "MatMulInteger"} if "decoder" in graph.name else {"MatMulNBits"}
        assert _ops(graph) & want, graph.name
        assert quantize.weight_bytes(graph).get("INT8" if "decoder" in graph.name else "UINT8", 0) > 0
    fp32, int8 = ((bundles[p] / "onnx" / "weights.bin").stat().st_size for p in ("fp32", "int8"))
    assert int8 < 0.5 * fp32


def test_int8_decodes_close_to_fp32(bundles) -> None:
    """5 synthetic clips: the INT8 bundle's teacher-forced log-probs of the FP32 bundle's greedy tokens stay within
    INT8_LOGPROB_BOUND, and differ (INT8 is really in the path). Tokens are printed, not compared: a random
    model's near-ties flip under any rounding."""
    fp32, int8 = (load_transcriber(bundles[p], "onnx", dither=0.0) for p in ("fp32", "int8"))
    from daemon.model.decode import DecodeOptions

    options = DecodeOptions(language="en", max_new_tokens=24)
    worst, same = 0.0, 0
    clips = synthetic_clips((1.5, 4.0, 7.5, 12.0, 30.0))
    for x in clips:
        prompt, ref = fp32.transcribe_window(x, options)
        _, res = int8.transcribe_window(x, options)
        same += res.tokens == ref.tokens
        lp = forced_logprobs(int8, x, prompt, list(ref.tokens), False)
        worst = max(worst, float(np.abs(np.array(lp) - np.array(ref.logprobs)).max(initial=0.0)))
    print(f"int8 vs fp32: {same}/{len(clips)} clips identical, max |Δ logprob| {worst:.3f}")
    assert 0 < worst <= INT8_LOGPROB_BOUND


@pytest.mark.parametrize("recipe", ["dynamic", "blockwise"])
def test_graphs_over_the_proto_limit_keep_external_data(recipe, bundles, tmp_path, monkeypatch) -> None:
    """The >2 GB path (the real encoder), forced on the tiny decoder: the INT8 graph's tensors go to an external
    data file, and it computes what the in-proto INT8 graph computes."""
    import onnx

    fp32 = onnx.load(str(bundles["fp32"] / "onnx" / "decoder_step.onnx"))  # weights.bin read in
    src = tmp_path / "src" / "decoder_step.onnx"
    src.parent.mkdir()
    onnx.save_model(fp32, str(src))
    small = quantize.quantize_graph(src, tmp_path / "small" / "decoder_step.onnx", recipe)
    monkeypatch.setattr(quantize, "ONNX_PROTO_LIMIT", 0)
    large = quantize.quantize_graph(src, tmp_path / "large" / "decoder_step.onnx", recipe)
    assert [p.name for p in small.parent.iterdir()] == ["decoder_step.onnx"]
    assert len(list(large.parent.iterdir())) == 2  # the graph and its external data
    assert any(i.data_location == onnx.TensorProto.EXTERNAL
               for i in onnx.load(str(large), load_external_data=False).graph.initializer)
    feeds = {}
    for i in ort.InferenceSession(str(small)).get_inputs():
        shape = [1 if d == "tokens" else 4 if isinstance(d, str) else d for d in i.shape]
        feeds[i.name] = (np.zeros(shape, np.int64) if "int64" in i.type
                         else np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1)
    feeds["position"] = np.array([0])
    a, b = (ort.InferenceSession(str(p)).run(None, feeds) for p in (small, large))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_bad_inputs_are_one_line(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown ONNX precision 'int4' \(fp32 or int8\)"):
        ExportOptions(onnx_precision="int4")
    bad = tmp_path / "g.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="cannot quantize"):
        quantize.quantize_graph(bad, tmp_path / "out" / "g.onnx")
    with pytest.raises(ValueError, match="unknown INT8 recipe 'int4'"):
        quantize.quantize_graph(bad, tmp_path / "out" / "g.onnx", "int4")
    r = subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", "x", "--out", str(tmp_path / "b"),
                        "--onnx-precision", "int4"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'int4'" in r.stderr
