"""The exported graphs in ONNX Runtime vs transformers' CohereAsr (random tiny configs a and b)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from reference import LANGS, MAX_NEW, clip_lengths, hf_greedy, prompt_ids

from daemon.model.bundle import encoder_frames, load_bundle
from daemon.model.decode import DecodeOptions, cross_inputs, greedy_decode
from daemon.model.features import log_mel, pad_frames
from daemon.model.transcriber import load_transcriber
from devtools.speech import speech_clip

PRESETS = ("a", "b")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [speech_clip(s, 1000 + i) for i, s in enumerate(clip_lengths())]


@pytest.mark.parametrize("preset", PRESETS)
def test_encoder_matches_transformers(preset, tiny_bundles, hf_models, hf_features, clips) -> None:
    """Valid frames: |Δ| ≤ 1e-5 + 1e-4·max|ref|; and they do not change when the padding grows."""
    tr = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    model = hf_models[preset]
    worst = 0.0
    for x in clips[:8]:
        f = hf_features(x, sampling_rate=16000, return_tensors="pt")
        n = int(f["attention_mask"].sum())
        with torch.no_grad():
            h = model.model.encoder(input_features=f["input_features"], attention_mask=f["attention_mask"])
            ref = model.model.decoder.proj(h.last_hidden_state)[0].numpy()
        t = encoder_frames(n, 3)
        feats = f["input_features"][0, :n].numpy().T
        outs = {b: tr.backend.encode(pad_frames(feats, b), n).hidden[0, :t] for b in (1000, 3500) if n <= b}
        for out in outs.values():
            err = np.abs(out - ref[:t]).max()
            worst = max(worst, err / (1e-5 + 1e-4 * np.abs(ref).max()))
            assert err <= 1e-5 + 1e-4 * np.abs(ref).max()
        if len(outs) == 2:
            assert np.abs(outs[1000] - outs[3500]).max() <= 1e-5 + 1e-4 * np.abs(ref).max()
    print(f"encoder parity {preset}: worst |Δ| / tolerance = {worst:.3f}")


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_tokens_and_logprobs_match_generate(preset, tiny_bundles, tiny_checkpoints, hf_models,
                                                   hf_features, clips) -> None:
    """≥ 20 clips of 0.5–35 s, several languages, punctuation on and off: identical tokens, logprobs ≤ 1e-3."""
    tr = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoints[preset] / "tokenizer.model"))
    eos = sp.piece_to_id("<|endoftext|>")
    outputs, worst, stops = [], 0.0, set()
    for i, x in enumerate(clips):
        lang, pnc = LANGS[i % len(LANGS)], i % 2 == 0
        ref_tokens, ref_lp = hf_greedy(hf_models[preset], hf_features, x, prompt_ids(sp, lang, pnc), MAX_NEW, eos)
        prompt, res = tr.transcribe_window(x, DecodeOptions(language=lang, punctuation=pnc, max_new_tokens=MAX_NEW))
        assert prompt == prompt_ids(sp, lang, pnc)
        assert list(res.tokens) == ref_tokens, f"clip {i} ({len(x) / 16000:.1f} s, {lang})"
        # the prompt went in as one prefill call: 1 call, then one per token fed back (and the one that says EOS)
        assert res.n_steps == 1 + len(res.tokens) - (res.stop_reason == "max_new_tokens")
        worst = max(worst, float(np.abs(np.array(res.logprobs) - np.array(ref_lp)).max(initial=0.0)))
        outputs.append(res.tokens)
        stops.add(res.stop_reason)
    print(f"decode parity {preset}: max |Δ logprob| = {worst:.2e}, stops {sorted(stops)}, "
          f"{len(set(outputs))}/{len(outputs)} distinct outputs")
    assert worst <= 1e-3
    assert len(set(outputs)) >= 15, "the test model must be audio-sensitive"
    assert stops == {"eos", "max_new_tokens"}  # both ways of stopping are exercised


def _without_prefill(bundle: Path, dest: Path) -> Path:
    """A copy of a bundle whose manifest has no prefill graphs: what a bundle exported before them looks like."""
    shutil.copytree(bundle, dest)
    m = json.loads((dest / "manifest.json").read_text())
    for spec in m["backends"].values():
        del spec["prefill"]
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


@pytest.mark.parametrize("preset", PRESETS)
def test_prefill_gives_the_steps_tokens_and_old_bundles_still_decode(preset, tiny_bundles, clips, tmp_path) -> None:
    """The prompt in one prefill call vs fed step by step (a bundle without prefill graphs): identical tokens,
    log-probs within 1e-4, and nine decoder calls fewer per window."""
    new = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    old = load_transcriber(str(_without_prefill(tiny_bundles[preset], tmp_path / "old")), "onnx", dither=0.0)
    assert new.backend.prefill_accepts(10) and not old.backend.prefill_accepts(10)
    for i, x in enumerate(clips[::4]):
        options = DecodeOptions(language=LANGS[i % len(LANGS)], max_new_tokens=MAX_NEW)
        (prompt, a), (_, b) = new.transcribe_window(x, options), old.transcribe_window(x, options)
        assert a.tokens == b.tokens and a.stop_reason == b.stop_reason
        assert np.abs(np.array(a.logprobs) - np.array(b.logprobs)).max(initial=0.0) <= 1e-4
        assert b.n_steps - a.n_steps == len(prompt) - 1


@pytest.mark.parametrize("preset", PRESETS)
def test_prompt_changes_the_output(preset, tiny_bundles, clips) -> None:
    tr = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    x = clips[5]
    runs = {(lang, pnc): tr.transcribe_window(x, DecodeOptions(language=lang, punctuation=pnc,
                                                               max_new_tokens=MAX_NEW))[1].logprobs
            for lang in ("en", "es") for pnc in (True, False)}
    assert len(set(runs.values())) == 4


def decode_at(tr, x: np.ndarray, bucket: int, n_enc_delta: int = 0, unmasked: bool = False):
    feats = log_mel(x, tr.features)
    n = feats.shape[1]
    enc = tr.backend.encode(pad_frames(feats, bucket), n)
    prompt = [tr.tokenizer.piece_id(p) for p in ("\u2581", "<|startofcontext|>", "<|startoftranscript|>",
                                                  "<|emo:undefined|>", "<|en|>", "<|en|>", "<|pnc|>",
                                                  "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>")]
    bundle = tr.bundle
    if unmasked:  # what the earlier port did: an all-zero additive cross mask over padding
        tr.backend.bundle = replace(bundle, mask_value=0.0)
    try:
        return greedy_decode(tr.backend, enc, encoder_frames(n, 3) + n_enc_delta, prompt, MAX_NEW,
                             DecodeOptions(ignore_eos=True))
    finally:
        tr.backend.bundle = bundle


@pytest.mark.parametrize("preset", PRESETS)
def test_exact_length_and_padded_agree(preset, tiny_bundles, clips) -> None:
    """Bucket 1000 vs 3500 for the same clip: same log-probabilities; a missing cross mask or a +1 encoder
    frame changes them (so this test can fail)."""
    tr = load_transcriber(str(tiny_bundles[preset]), "onnx", dither=0.0)
    x = next(c for c in clips if 3 * 16000 < len(c) < 9.9 * 16000)
    small, full = decode_at(tr, x, 1000), decode_at(tr, x, 3500)
    assert small.tokens == full.tokens
    assert np.abs(np.array(small.logprobs) - np.array(full.logprobs)).max() <= 1e-4
    plus_one = decode_at(tr, x, 3500, n_enc_delta=1)
    unmasked = decode_at(tr, x, 3500, unmasked=True)
    assert np.abs(np.array(plus_one.logprobs) - np.array(full.logprobs)).max() > 1e-3
    assert np.abs(np.array(unmasked.logprobs) - np.array(full.logprobs)).max() > 1e-3


def test_cross_inputs_pad_and_mask(tiny_bundles) -> None:
    from daemon.model.backends import EncoderOutput

    b = load_bundle(tiny_bundles["a"])
    kv = np.ones((b.n_layers, 1, b.n_heads, 125, b.head_dim), np.float32)
    k, _v, mask = cross_inputs(b, EncoderOutput(np.zeros((1, 125, 8), np.float32), kv, kv), 100, np.dtype("float32"))
    assert k.shape[3] == b.cross_frames == 438 and k[:, :, :, 125:].sum() == 0
    assert (mask[..., :100] == 0).all() and (mask[..., 100:] == b.mask_value).all()


def test_loop_guard_stops_a_repeating_decode(tiny_bundles) -> None:
    """A decoder that says 5, 6, then 7 forever: the guard stops it, keeps one 7, and says so."""
    from daemon.model.backends import EncoderOutput

    bundle = load_bundle(tiny_bundles["a"])

    class Looping:  # the Backend surface greedy_decode uses
        cache_dtype = np.dtype("float32")

        def __init__(self) -> None:
            self.bundle = bundle

        def decoder_step(self, feeds):
            pos = int(feeds["position"][0])
            logits = np.zeros((1, bundle.vocab_size), np.float32)
            logits[0, 5 if pos <= 1 else 6 if pos == 2 else 7] = 10.0
            row = np.zeros((bundle.n_layers, 1, bundle.n_heads, 1, bundle.head_dim), np.float32)
            return {"logits": logits, "new_k": row, "new_v": row}

    kv = np.zeros((bundle.n_layers, 1, bundle.n_heads, 10, bundle.head_dim), np.float32)
    enc = EncoderOutput(np.zeros((1, 10, 8), np.float32), kv, kv)
    free = greedy_decode(Looping(), enc, 10, [1, 2], 40, DecodeOptions(ignore_eos=True))
    cut = greedy_decode(Looping(), enc, 10, [1, 2], 40, DecodeOptions(ignore_eos=True, loop_guard=True))
    assert free.tokens == (5, 6) + (7,) * 38 and free.stop_reason == "max_new_tokens"
    assert cut.tokens == (5, 6, 7) and len(cut.logprobs) == 3 and cut.stop_reason == "repetition"


def test_warm_up_loads_the_one_onnx_encoder_session(tiny_bundles) -> None:
    """ONNX: one encoder session (dynamic frame axis) serves every window; warm-up loads it, nothing else."""
    tr = load_transcriber(str(tiny_bundles["a"]), "onnx", dither=0.0)
    assert tr.bundle.buckets == (1000, 3500)  # Core ML's buckets; the ONNX files have one encoder
    tr.warm_up()
    assert set(tr.backend._encoders) == {3500}
