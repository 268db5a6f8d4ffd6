"""The bundled demo model (models/demo) and its committed checkpoint (models/demo-checkpoint).

Held-out sentences (never in training) are synthesized afresh with espeak-ng and transcribed through the
daemon's own transcribe path; the same clips go through transformers generate() on the checkpoint; the
checkpoint is exported again and must give the same bundle.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import sentencepiece as spm
import soundfile as sf
from coreml_checks import expected, io_of, weight_bytes
from reference import hf_greedy, prompt_ids

from daemon.model.decode import DecodeOptions
from daemon.model.transcriber import load_transcriber
from exporter.demo import grammar, synth
from exporter.to_coreml import INT8_BLOCK

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
CKPT = ROOT / "models" / "demo-checkpoint"
N_CLIPS = 20  # per language
SEED = 2026  # voices for these clips; evaluate.py uses 7 and 107, train.py 0..2 (training), 1000 and 2000 (validation)
MAX_WER = 0.10


@pytest.fixture(scope="module")
def clips() -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per language: N_CLIPS held-out sentences spoken by random training voices (seeded)."""
    out = {}
    for lang in grammar.LANGUAGES:
        texts = grammar.demo_heldout(lang)[:N_CLIPS]
        audio = synth.synthesize_many([(t, lang) for t in texts], seed=SEED, heldout=False)
        out[lang] = list(zip(texts, audio, strict=True))
    return out


def cli_transcribe(wavs: list[Path], lang: str, *extra: str) -> list[dict]:
    """`python -m daemon transcribe` with its default model (no --model: the demo model)."""
    cmd = [sys.executable, "-m", "daemon", "transcribe", *map(str, wavs), "--language", lang, "--format", "json",
           "--no-punctuation", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("lang", grammar.LANGUAGES)
def test_heldout_wer_through_daemon_transcribe(lang, clips, tmp_path) -> None:
    wavs = []
    for i, (_, x) in enumerate(clips[lang]):
        wavs.append(tmp_path / f"{i:02d}.wav")
        sf.write(wavs[-1], x, synth.SAMPLE_RATE)
    docs = cli_transcribe(wavs, lang)
    refs = [t for t, _ in clips[lang]]
    hyps = [" ".join(s["text"] for s in d["segments"]).strip() for d in docs]
    wer = jiwer.wer(refs, hyps)
    print(f"demo model {lang}: WER {wer:.3f} on {len(refs)} fresh held-out clips")
    for r, h in zip(refs, hyps, strict=True):
        if r != h:
            print(f"  ref: {r}\n  hyp: {h}")
    assert wer <= MAX_WER


def test_language_prompt_changes_the_tokens(clips, tmp_path) -> None:
    wavs = []
    for i, (_, x) in enumerate(clips["en"][:8]):
        wavs.append(tmp_path / f"{i:02d}.wav")
        sf.write(wavs[-1], x, synth.SAMPLE_RATE)
    en = [d["segments"][0]["tokens"] for d in cli_transcribe(wavs, "en")]
    es = [d["segments"][0]["tokens"] for d in cli_transcribe(wavs, "es")]
    assert sum(a != b for a, b in zip(en, es, strict=True)) >= 6


def test_daemon_tokens_equal_transformers_generate(clips) -> None:
    """≥ 20 held-out clips, both languages, punctuation prompt on and off: identical greedy tokens."""
    from transformers import CohereAsrFeatureExtractor, CohereAsrForConditionalGeneration

    model = CohereAsrForConditionalGeneration.from_pretrained(CKPT).eval()
    fe = CohereAsrFeatureExtractor(dither=0.0)
    sp = spm.SentencePieceProcessor(model_file=str(CKPT / "tokenizer.model"))
    eos = sp.piece_to_id("<|endoftext|>")
    tr = load_transcriber(str(DEMO), "onnx", dither=0.0)
    items = [(lang, x) for lang in grammar.LANGUAGES for _, x in clips[lang][:12]]
    for i, (lang, x) in enumerate(items):
        pnc = i % 2 == 0
        ref, _ = hf_greedy(model, fe, x, prompt_ids(sp, lang, pnc), 64, eos)
        _, res = tr.transcribe_window(x, DecodeOptions(language=lang, punctuation=pnc, max_new_tokens=64))
        assert list(res.tokens) == ref, f"clip {i} ({lang}): {sp.decode(list(res.tokens))!r} vs {sp.decode(ref)!r}"
    assert len(items) >= 20


def test_export_is_deterministic_and_coreml_passes_the_spec(clips, tmp_path) -> None:
    """Re-export the committed checkpoint: the same ONNX files giving the same tokens and log-probabilities
    (within 1e-4: torch's constant folding differs in the last bits from one CPU to another, so bytes are not
    compared); Core ML I/O and weights."""
    shipped = json.loads((DEMO / "manifest.json").read_text())
    buckets = ",".join(map(str, shipped["encoder"]["buckets"]))
    out = tmp_path / "again"
    subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(CKPT), "--out", str(out),
                    "--buckets", buckets], check=True, capture_output=True, cwd=ROOT, timeout=600)
    again = json.loads((out / "manifest.json").read_text())
    onnx_files = {f: h for f, h in shipped["files"].items() if f.startswith("onnx/")}
    assert onnx_files and sorted(f for f in again["files"] if f.startswith("onnx/")) == sorted(onnx_files)
    assert again["tokens"] == shipped["tokens"] and again["prompt"] == shipped["prompt"]
    a, b = load_transcriber(str(DEMO), "onnx", dither=0.0), load_transcriber(str(out), "onnx", dither=0.0)
    for _, x in clips["en"][:5] + clips["es"][:5]:
        opts = DecodeOptions(language="en")
        ra, rb = a.transcribe_window(x, opts)[1], b.transcribe_window(x, opts)[1]
        assert ra.tokens == rb.tokens
        assert np.max(np.abs(np.subtract(ra.logprobs, rb.logprobs)), initial=0.0) <= 1e-4
    # Core ML (the shipped files): names, shapes and dtypes from config.json; INT8 encoder, FP16 decoder
    enc_in, enc_out, dec_in, dec_out = expected(CKPT, "float16")
    assert io_of(DEMO / "coreml/encoder.mlpackage", "encoder_3500") == (enc_in, enc_out)
    decoder = DEMO / "coreml/decoder_step.mlpackage"  # functions decoder_step (one token) and prefill (the prompt)
    assert io_of(decoder, "decoder_step") == (dec_in, dec_out)
    pre_in, pre_out = io_of(decoder, "prefill")
    assert pre_in["input_id"] == ((1, 10), "int32") and pre_in["position"] == ((10,), "int32")
    assert pre_out["new_k"][0][3] == 10 and {k: v for k, v in pre_in.items() if k not in ("input_id", "position")} \
        == {k: v for k, v in dec_in.items() if k not in ("input_id", "position")}
    for bucket in shipped["encoder"]["buckets"]:
        enc = weight_bytes(DEMO / "coreml/encoder.mlpackage", f"encoder_{bucket}")
        quantized = enc.get("INT8", 0) * (1 + 2 / INT8_BLOCK)  # the INT8 weights with their FP16 scales
        assert quantized / sum(enc.values()) >= 0.95
    for function in ("decoder_step", "prefill"):
        assert set(weight_bytes(decoder, function)) - {"INT32"} == {"FLOAT16"}
    size = sum(p.stat().st_size for p in (decoder / "Data").rglob("*.bin"))
    assert size < 1.1 * sum(weight_bytes(decoder, "decoder_step").values())  # the weights stored once


def test_bundle_size() -> None:
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    print(f"models/demo: {size / 1e6:.1f} MB")
    assert size <= 25e6


def test_transcribe_vad_gives_one_segment_per_sentence_of_the_samples() -> None:
    """The quick start's `transcribe --vad`: the bundled samples hold three sentences each, one second apart."""
    said = {"en": ["dad will call back on march ninth", "i bought a new purple cup",
                   "could you set a timer for forty seven minutes"],
            "es": ["hace diecisiete grados en el lavadero", "por favor cierra las persianas del despacho por favor",
                   "el concierto empieza a las ocho de la noche"]}  # samples/README.md
    refs, hyps = [], []
    for lang, texts in said.items():
        doc = cli_transcribe([ROOT / "samples" / f"demo-{lang}.wav"], lang, "--vad")[0]
        segs = doc["segments"]
        assert len(segs) == 3, segs
        assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(segs))
        refs += texts
        hyps += [s["text"] for s in segs]
    wer = jiwer.wer(refs, hyps)
    print(f"samples/demo-{{en,es}}.wav --vad: WER {wer:.3f}")
    assert wer <= MAX_WER
