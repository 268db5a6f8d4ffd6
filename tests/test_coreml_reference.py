"""The Core ML reference evaluator: its own ops against torch, op coverage of every program the exporter writes,
and the exported Core ML files against transformers (fp32: identical greedy tokens on 20 clips)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from reference import LANGS, MAX_NEW, clip_lengths, hf_greedy, prompt_ids

from daemon.errors import BackendError
from daemon.model.backends import coreml_reference as cr
from daemon.model.backends import mil_ops
from daemon.model.bundle import GraphSpec, encoder_frames, load_bundle
from daemon.model.decode import DecodeOptions
from daemon.model.features import pad_frames
from daemon.model.transcriber import load_transcriber
from devtools.speech import speech_clip
from exporter.check import Comparison, compare

logging.getLogger("coremltools").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
PRESETS = ("a", "b")
# fp16/hybrid vs transformers (tiny random config a, clips short and past 20.48 s, where an FP16 frame count would
# be off by one): the largest |Δ log-prob| of generate()'s tokens, teacher-forced. Measured by bench/coreml_drift.py (20 clips,
# presets a and b); INT8 weights of a random model move the log-probs more than FP16 compute does.
FP16_LOGPROB_BOUND = {"fp16": 0.15, "hybrid": 0.6}
FP16_LONG_S = 20.48  # 2048 feature frames: FP16 holds integers exactly only up to here


# --- the ops written here, against torch ------------------------------------------------------------------

class _Const:
    def __init__(self, val: object) -> None:
        self.val = val


class _ConvOp:
    """The attributes of a MIL conv op that mil_ops.conv reads."""

    def __init__(self, strides, dilations, pad_type, pad, groups) -> None:
        self.strides, self.dilations = _Const(np.array(strides)), _Const(np.array(dilations))
        self.pad_type, self.groups = _Const(pad_type), _Const(groups)
        self.pad = None if pad is None else _Const(np.array(pad))


@pytest.mark.parametrize("case", [
    # (x shape, weight shape, strides, dilations, pad_type, pad, groups)
    ((1, 4, 37), (6, 4, 3), (1,), (1,), "valid", None, 1),
    ((2, 8, 40), (8, 1, 9), (1,), (1,), "custom", (4, 4), 8),  # depthwise, as the Conformer conv module
    ((1, 6, 41), (4, 3, 5), (2,), (2,), "custom", (3, 1), 2),
    ((1, 1, 35, 32), (5, 1, 3, 3), (2, 2), (1, 1), "custom", (1, 1, 1, 1), 1),  # the subsampling front end
    ((1, 4, 17, 19), (4, 1, 3, 3), (2, 2), (1, 1), "custom", (1, 1, 1, 1), 4),
    ((1, 3, 16, 15), (2, 3, 4, 3), (2, 1), (1, 2), "same", None, 1),
    ((1, 3, 16, 15), (2, 3, 4, 3), (3, 2), (1, 1), "same_lower", None, 1),
])
def test_conv_matches_torch(case) -> None:
    xs, ws, strides, dilations, pad_type, pad, groups = case
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (xs, ws, (ws[0],)))
    out = mil_ops.conv(_ConvOp(strides, dilations, pad_type, pad, groups), {"x": x, "weight": w, "bias": b})
    kernel, nsp = ws[2:], len(xs) - 2
    padding = mil_ops.conv_padding(pad_type, None if pad is None else list(pad), kernel, strides, dilations, xs[2:])
    xt = torch.nn.functional.pad(torch.from_numpy(x), [p for pair in reversed(padding) for p in pair])
    fn = torch.nn.functional.conv1d if nsp == 1 else torch.nn.functional.conv2d
    ref = fn(xt, torch.from_numpy(w), torch.from_numpy(b), stride=strides, dilation=dilations, groups=groups).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    if pad_type == "same":  # MIL "same": output ceil(d_in / stride)
        assert out.shape[2:] == tuple(-(-d // s) for d, s in zip(xs[2:], strides, strict=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_silu_matches_torch_and_keeps_dtype(dtype) -> None:
    x = np.linspace(-30, 30, 1001).astype(dtype)
    with np.errstate(over="ignore"):  # exp(30) overflows FP16 to inf, as on the device; the result is finite
        out = mil_ops.silu(None, {"x": x})
    assert out.dtype == dtype and np.isfinite(out).all()
    ref = torch.nn.functional.silu(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=2e-3 if dtype == np.float16 else 1e-6,
                               atol=1e-3 if dtype == np.float16 else 1e-6)


class _ReduceOp:
    def __init__(self, op_type: str, axes, keep) -> None:
        self.op_type, self.axes, self.keep_dims = op_type, _Const(np.array(axes, np.int32)), _Const(np.bool_(keep))


@pytest.mark.parametrize("keep", [True, False])
def test_reductions_take_a_numpy_bool_keep_dims(keep) -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = mil_ops.reduce(_ReduceOp("reduce_sum", [-1], keep), {"x": x})
    np.testing.assert_array_equal(out, x.sum(-1, keepdims=keep))
    assert mil_ops.reduce(_ReduceOp("reduce_min", [0, 2], keep), {"x": x}).shape == ((1, 3, 1) if keep else (3,))


# --- op coverage: every program the exporter writes ----------------------------------------------------------

def _export(ckpt: Path, out: Path, precision: str, buckets: str) -> Path:
    subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(out), "--buckets",
                    buckets, "--backends", "coreml", "--precision", precision], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def fp32_bundles(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml-fp32")
    return {p: _export(tiny_checkpoints[p], root / p, "fp32", "1000,3500") for p in PRESETS}


@pytest.fixture(scope="module")
def fp16_bundles(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coreml-fp16")
    return {p: _export(tiny_checkpoints[p], root / p, "fp16", "1000,3500") for p in PRESETS}


def _packages(bundle: Path) -> list[Path]:
    return sorted((bundle / "coreml").glob("*.mlpackage"))


def test_every_exported_op_has_an_evaluation(tiny_bundles, fp32_bundles, fp16_bundles) -> None:
    """Tiny configs a and b in fp32, fp16 and hybrid, and the demo bundle: every function of every package."""
    bundles = [DEMO, *tiny_bundles.values(), *fp32_bundles.values(), *fp16_bundles.values()]
    seen: set[str] = set()
    functions = 0
    for bundle in bundles:
        assert load_bundle(bundle).backends["coreml"].precision in ("fp32", "fp16", "hybrid")
        for pkg in _packages(bundle):
            for name, fn in cr.load_program(pkg).functions.items():
                assert cr.missing_evaluations(fn) == set(), f"{pkg} ({name})"
                seen |= {op.op_type for op in fn.operations}
                functions += 1
    print(f"{functions} functions in {len(bundles)} bundles, {len(seen)} op types: {', '.join(sorted(seen))}")
    assert {"conv", "silu", "constexpr_blockwise_shift_scale", "reduce_sum"} <= seen


def test_coverage_check_can_fail(monkeypatch) -> None:
    """Without our conv, the demo encoder has an op the evaluator cannot run, and loading it says which."""
    bundle = load_bundle(DEMO)
    graph = bundle.backends["coreml"].encoders[500]
    monkeypatch.delitem(mil_ops.EVALUATIONS, "conv")
    monkeypatch.setattr(cr, "EVALUATIONS", mil_ops.EVALUATIONS)
    fn = cr.load_program(graph.path).functions[graph.function or cr.MAIN]
    assert cr.missing_evaluations(fn) == {"conv"}
    with pytest.raises(BackendError, match="no reference evaluation for MIL ops conv"):
        cr.CoreMLReferenceSession(graph)


def test_demo_bundle_runs_every_program() -> None:
    """Each encoder function and the decoder step of the demo bundle, next to its ONNX files: same shapes,
    finite, and close (INT8 weights and FP16 compute: within 10 % of the largest value; 3/4 of each bucket, so the
    3500-frame function sees 2625 frames, past what FP16 counts exactly)."""
    bundle = load_bundle(DEMO)
    ref = load_transcriber(DEMO, "onnx", dither=0.0)
    core = load_transcriber(DEMO, "coreml-reference", dither=0.0)
    rng = np.random.default_rng(5)
    for frames in bundle.buckets:
        n = frames * 3 // 4
        feats = pad_frames(rng.standard_normal((bundle.features.n_mels, n)).astype(np.float32), frames)
        a, b = core.backend.encode(feats, n), ref.backend.encode(feats, n)
        t = encoder_frames(n, bundle.subsampling_stages)
        assert a.hidden.dtype == np.float16 and a.hidden.shape == b.hidden.shape
        assert np.isfinite(a.hidden).all() and np.isfinite(a.cross_k).all()
        scale = np.abs(b.hidden[:, :t]).max()
        assert np.abs(a.hidden[:, :t].astype(np.float32) - b.hidden[:, :t]).max() <= 0.1 * scale, frames
    x = speech_clip(4.0, 11)
    _, r1 = core.transcribe_window(x, DecodeOptions(language="en", max_new_tokens=12))
    _, r2 = ref.transcribe_window(x, DecodeOptions(language="en", max_new_tokens=12))
    assert len(r1.tokens) >= 3 and r1.tokens[:3] == r2.tokens[:3]


def test_multifunction_package_functions_and_a_missing_one() -> None:
    """The demo encoder is one package with a function per bucket; each loads by name, an unknown name is one
    line naming the ones there are."""
    bundle = load_bundle(DEMO)
    graphs = bundle.backends["coreml"].encoders
    assert len({g.path for g in graphs.values()}) == 1 and len({g.function for g in graphs.values()}) == 4
    sessions = {f: cr.CoreMLReferenceSession(g) for f, g in graphs.items()}
    for f, s in sessions.items():
        assert s._fn.inputs["input_features"].shape == (1, bundle.features.n_mels, f)
    bad = GraphSpec(graphs[500].path, graphs[500].inputs, graphs[500].outputs, "encoder_7")
    with pytest.raises(BackendError, match=r"has no function 'encoder_7' \(it has: encoder_1000, "):
        cr.CoreMLReferenceSession(bad)


# --- proof: fp32 Core ML files = transformers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [speech_clip(s, 1000 + i) for i, s in enumerate(clip_lengths())]


@pytest.mark.parametrize("preset", PRESETS)
def test_fp32_encoder_matches_transformers(preset, fp32_bundles, hf_models, hf_features, clips) -> None:
    """Valid frames of the Core ML fp32 encoder (both buckets): |Δ| ≤ 1e-5 + 1e-4·max|ref|."""
    tr = load_transcriber(str(fp32_bundles[preset]), "coreml-reference", dither=0.0)
    model = hf_models[preset]
    for x in clips[:6]:
        f = hf_features(x, sampling_rate=16000, return_tensors="pt")
        n = int(f["attention_mask"].sum())
        with torch.no_grad():
            h = model.model.encoder(input_features=f["input_features"], attention_mask=f["attention_mask"])
            ref = model.model.decoder.proj(h.last_hidden_state)[0].numpy()
        t = encoder_frames(n, 3)
        feats = f["input_features"][0, :n].numpy().T
        for b in (1000, 3500):
            if n <= b:
                out = tr.backend.encode(pad_frames(feats, b), n).hidden[0, :t]
                assert out.dtype == np.float32
                assert np.abs(out - ref[:t]).max() <= 1e-5 + 1e-4 * np.abs(ref).max(), (b, n)


def _against_transformers(bundle: Path, ckpt: Path, model, hf_features, clips) -> list[Comparison]:
    """The Core ML files' greedy decode of each clip next to transformers generate(): tokens, and the
    log-probs of generate()'s tokens teacher-forced (exporter.check.compare)."""
    tr = load_transcriber(str(bundle), "coreml-reference", dither=0.0)
    sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    eos = sp.piece_to_id("<|endoftext|>")
    rows = []
    for i, x in enumerate(clips):
        lang, pnc = LANGS[i % len(LANGS)], i % 2 == 0
        prompt = prompt_ids(sp, lang, pnc)
        ref_tokens, ref_lp = hf_greedy(model, hf_features, x, prompt, MAX_NEW, eos)
        options = DecodeOptions(language=lang, punctuation=pnc, max_new_tokens=MAX_NEW)
        rows.append(compare(tr, x, options, prompt, ref_tokens, ref_lp, ref_eos=False))
    return rows


@pytest.mark.parametrize("preset", PRESETS)
def test_fp32_greedy_tokens_match_generate(preset, fp32_bundles, tiny_checkpoints, hf_models, hf_features,
                                           clips) -> None:
    """20 clips of 0.5–35 s, five languages, punctuation on and off: identical tokens, log-probs ≤ 1e-3."""
    rows = _against_transformers(fp32_bundles[preset], tiny_checkpoints[preset], hf_models[preset], hf_features,
                                 clips)
    assert len(rows) >= 20
    assert [i for i, r in enumerate(rows) if not r.same_tokens] == []
    worst = max(r.drift for r in rows)
    print(f"coreml fp32 {preset}: {len(rows)}/{len(rows)} clips identical, max |Δ logprob| {worst:.2e}")
    assert worst <= 1e-3


def test_coreml_prefill_function_gives_the_steps_tokens(fp32_bundles, clips) -> None:
    """The decoder package's prefill function (the 10-token prompt, static shape) vs the prompt fed through
    decoder_step (fp32, preset b, 4 clips): identical tokens, log-probs within 1e-4."""
    tr = load_transcriber(str(fp32_bundles["b"]), "coreml-reference", dither=0.0)
    graphs = tr.backend.spec
    assert (graphs.prefill.function, graphs.decoder.function) == ("prefill", "decoder_step")
    assert graphs.prefill.path == graphs.decoder.path and tr.backend.prefill_accepts(10)
    options = DecodeOptions(language="de", max_new_tokens=MAX_NEW)
    steps = load_transcriber(str(fp32_bundles["b"]), "coreml-reference", dither=0.0)
    steps.backend.prefill_accepts = lambda n: False  # type: ignore[method-assign]
    for x in clips[1:12:3]:
        (prompt, a), (_, b) = tr.transcribe_window(x, options), steps.transcribe_window(x, options)
        assert a.tokens == b.tokens and len(a.tokens) > 0
        assert np.abs(np.array(a.logprobs) - np.array(b.logprobs)).max() <= 1e-4
        assert b.n_steps - a.n_steps == len(prompt) - 1


@pytest.mark.parametrize("precision", ["fp16", "hybrid"])
def test_fp16_drift_is_bounded(precision, fp16_bundles, tiny_bundles, tiny_checkpoints, hf_models, hf_features,
                               clips) -> None:
    """FP16 compute (hybrid: and INT8 encoder weights), preset a, 4 clips under 20.48 s and 2 past it: the
    log-probs of generate()'s tokens, teacher-forced, stay within FP16_LOGPROB_BOUND[precision] of transformers."""
    bundles = fp16_bundles if precision == "fp16" else tiny_bundles
    short = [x for x in clips if len(x) / 16000 < FP16_LONG_S][:4]
    long = [x for x in clips if len(x) / 16000 > FP16_LONG_S + 1][:2]
    assert len(short) == 4 and len(long) == 2
    rows = _against_transformers(bundles["a"], tiny_checkpoints["a"], hf_models["a"], hf_features, short + long)
    worst = max(r.drift for r in rows)
    print(f"coreml {precision} a: {sum(r.same_tokens for r in rows)}/{len(rows)} clips identical, "
          f"max |Δ logprob| {worst:.3f}")
    assert 0 < worst <= FP16_LOGPROB_BOUND[precision]  # > 0: FP16 really is in the path


# --- python -m exporter check --------------------------------------------------------------------------------

def test_exporter_check_compares_every_backend(capsys) -> None:
    """The demo bundle: ONNX is the reference, the Core ML files agree with it, a drift limit below what FP16
    gives exits 1, bad lengths exit 2 with one line."""
    from exporter.__main__ import main

    assert main(["check", str(DEMO), "--seconds", "2,3.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "reference: onnx; 2 clips, 5.5 s of audio"
    assert out[1].startswith("onnx              2/2 clips with identical tokens") and "log-prob| 0.00e+00" in out[1]
    assert out[2].startswith("coreml-reference  2/2 clips with identical tokens")
    assert main(["check", str(DEMO), "--seconds", "2", "--max-drift", "1e-6"]) == 1
    assert main(["check", str(DEMO), "--seconds", "50"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --seconds takes clip lengths of 0.2–35 s")
    assert main(["check", str(DEMO / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: model bundle {DEMO / 'nowhere'} is not a folder"
