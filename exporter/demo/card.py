"""Write the demo bundle's model card (MODEL_CARD.md) from the checkpoint's training.json and an evaluation.

    python -m exporter.demo.card [--checkpoint models/demo-checkpoint] [--bundle models/demo]
        [--eval models/demo-checkpoint/evaluation.json] [--coreml-eval models/demo-checkpoint/evaluation-coreml.json]
        [--int8-eval models/demo-checkpoint/evaluation-int8.json]

The evaluation JSON is what `python -m exporter.demo.evaluate --out FILE` writes (the Core ML one: with
`--backend coreml-reference`, the INT8 one: with `--onnx-precision int8`); nothing here is typed in by hand, so the card always states what was measured
for the files beside it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import grammar

ROOT = Path(__file__).resolve().parents[2]


def _examples(lang: str, n: int = 4) -> list[str]:
    return grammar.sentences(lang, n, seed=99)


def parameter_count(checkpoint: Path) -> int:
    """Parameters stored in the checkpoint's safetensors files (read from their headers)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for name in st.keys():
                total += math.prod(st.get_slice(name).get_shape())
    return total


def phases(training: dict) -> list[dict]:
    """The training runs that made the checkpoint, first run first (a run started with --init records the run it
    continued under "init")."""
    chain = [training]
    while "init" in chain[0]:
        chain.insert(0, chain[0]["init"]["training"])
    return chain


def _phase(t: dict) -> str:
    perturb = t.get("speed_perturbation")
    data = (f"speed perturbation ×{perturb[0]}–{perturb[1]}" if perturb else "no speed perturbation") + \
        f", {100 * t.get('multi_sentence_share', 0):.0f} % multi-sentence clips"
    if t.get("audio_seed", t["seed"]) != t["seed"]:
        data += f", fresh renderings of the training sentences (audio seed {t['audio_seed']})"
    if t["wer"].get("averaged_steps"):
        data += f", weights averaged over steps {'/'.join(map(str, t['wer']['averaged_steps']))}"
    return (f"{t['steps']} steps of AdamW (batch {t['batch']}, peak LR {t['lr']}, cosine), {data}, "
            f"SpecAugment: {t['specaugment']}; {t['elapsed_s'] / 60:.0f} min on {t['threads']} CPU threads: "
            f"`{t.get('command_today', t['command'])}`")


def _selection_line(training: dict) -> str:
    """How the runs were evaluated while training: runs recorded with a validation set (training.json
    voices.validation_set) never looked at the test sentences; earlier ones printed WER on them."""
    chain = phases(training)
    first = next((i for i, t in enumerate(chain) if "validation_set" in t["voices"]), len(chain))
    valid = ("further unseen validation sentences (`python -m exporter.demo.validate` compares checkpoints on "
             "them), not on the test sentences measured below.")
    if first == 0:
        return "All runs were evaluated on " + valid
    if first == len(chain):
        return "The training runs printed WER on the test sentences measured below."
    return (f"Runs 1–{first} printed WER on the test sentences measured below while training; from run "
            f"{first + 1} on, runs were evaluated and compared on " + valid)


def _training_lines(training: dict) -> str:
    chain = phases(training)
    head = (f"- Training: transformers' own loss plus a training-only CTC head (weight {training['ctc_weight']}), "
            f"{sum(t['steps'] for t in chain)} steps in {len(chain)} run(s), each continuing the one before "
            f"(`--init`) on the same seed, sentences and tokenizer:")
    return "\n".join([head, *(f"  {i + 1}. {_phase(t)}" for i, t in enumerate(chain))])


def coreml_section(evaluation: dict, coreml: dict) -> str:
    """The Core ML files (through the reference evaluator) next to the ONNX files, set by set."""
    onnx = {(r["lang"], r["voice"]): r for r in evaluation["results"]}
    rows, diffs = [], []
    for r in coreml["results"]:
        o = onnx[(r["lang"], r["voice"])]
        diffs.append(100 * (r["wer"] - o["wer"]))
        rows.append(f"| {r['lang']} | {r['voice']} | {r['n']} | {100 * o['wer']:.2f} % | {100 * r['wer']:.2f} % "
                    f"| {diffs[-1]:+.2f} |")
    n = coreml["results"][0]["n"]
    a, b = _pooled(evaluation["results"], n), _pooled(coreml["results"], n)
    rows.append(f"| all | all sets, pooled by words | {sum(r['n'] for r in coreml['results'])} | {a:.2f} % | "
                f"{b:.2f} % | {b - a:+.2f} |")
    table = "\n".join(rows)
    return f"""## Core ML files vs ONNX files
The bundle's Core ML files (hybrid: INT8 encoder weights, FP16 compute) run on Linux through the reference
evaluator (`--backend coreml-reference`: coremltools' own op semantics, op by op, FP16 kept between ops), on the
same test clips as above:

| language | voices | sentences | WER, ONNX | WER, Core ML (hybrid) | difference (points) |
|---|---|---|---|---|---|
{table}

Largest difference in one set: {max(diffs, key=abs):+.2f} points; all sets pooled: {b - a:+.2f} points.
Reproduce: `{coreml['command']}` (and the ONNX command above).
"""


def _pooled(results: list[dict], n: int) -> float:
    """WER in percent over all sets, each weighted by its words (every set of a language speaks the same
    sentences)."""
    words = {lang: sum(len(t.split()) for t in grammar.demo_heldout(lang)[:n]) for lang in grammar.LANGUAGES}
    weight = [words[r["lang"]] * r.get("rounds", 1) for r in results]  # a set of K rounds holds K× the words
    return 100 * sum(r["wer"] * w for r, w in zip(results, weight, strict=True)) / sum(weight)


def int8_section(evaluation: dict, int8: dict) -> str:
    """An INT8 ONNX export of the same checkpoint (`--onnx-precision int8`) next to the FP32 ONNX files, measured
    side by side in one run (`fp32_results`; older files: the FP32 evaluation)."""
    reference = int8.get("fp32_results") or evaluation["results"]
    fp32 = {(r["lang"], r["voice"]): r for r in reference}
    rows, diffs = [], []
    for r in int8["results"]:
        o = fp32[(r["lang"], r["voice"])]
        diffs.append(100 * (r["wer"] - o["wer"]))
        rows.append(f"| {r['lang']} | {r['voice']} | {r.get('clips', r['n'])} | {100 * o['wer']:.2f} % | "
                    f"{100 * r['wer']:.2f} % | {diffs[-1]:+.2f} |")
    n = int8["results"][0]["n"]
    a, b = _pooled(reference, n), _pooled(int8["results"], n)
    rows.append(f"| all | all sets, pooled by words | {sum(r.get('clips', r['n']) for r in int8['results'])} | "
                f"{a:.2f} % | {b:.2f} % | {b - a:+.2f} |")
    table = "\n".join(rows)
    multi = max(r.get("clips", r["n"]) for r in int8["results"])
    return f"""## INT8 ONNX files vs FP32 ONNX files
The same checkpoint exported with `--onnx-precision int8` (exporter/quantize.py: the decoder's MatMul/Gemm
weights and the encoder's feed-forward layers INT8 with one scale per output channel, activations quantized on
every call; the CPU option, not what this bundle ships), measured side by side with the bundle's FP32 ONNX files
on the same clips through `python -m daemon transcribe`. The 3-sentence sets hold {multi} clips here
(`--multi-rounds`: the held-out sentences grouped several ways), not 20: with 20 clips one clip decoded
differently moves a set by about 1.5 points.

| language | voices | clips | WER, FP32 | WER, INT8 | difference (points) |
|---|---|---|---|---|---|
{table}

All sets pooled: {b - a:+.2f} points (goal: within 0.5); largest difference in one set: {max(diffs, key=abs):+.2f}
points. Reproduce: `{int8['command']}`.
"""


def render(training: dict, evaluation: dict, config: dict, bundle: Path, params: int,
           coreml: dict | None = None, int8: dict | None = None) -> str:
    enc, dec = config["encoder_config"], config
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and p.name != "MODEL_CARD.md")
    data = training["data"]
    rows = "\n".join(f"| {r['lang']} | {r['voice']} | {r['n']} | {100 * r['wer']:.2f} % |"
                     for r in evaluation["results"])
    pm = evaluation["prompt_matters"]
    examples = "\n".join(f"- {lang}: " + "; ".join(f"“{s}”" for s in _examples(lang)) for lang in grammar.LANGUAGES)
    words = ", ".join(f"{lang} {len(grammar.vocabulary(lang))}" for lang in grammar.LANGUAGES)
    voices = training["voices"]
    return f"""# Demo model: tiny Cohere Transcribe architecture, trained on synthetic speech

This is **not** Cohere Transcribe 03-2026. It is a {params / 1e6:.1f} M-parameter model with the same
architecture (transformers `CohereAsrForConditionalGeneration`: a Conformer encoder and a Transformer decoder
with the same prompt, special pieces and cache-external decoder contract), trained on this machine on speech
synthesized with espeak-ng, so that the daemon transcribes real audio out of the box, without a download.

## What it can say
Everyday dictation and voice-command sentences in English and Spanish from a fixed grammar (exporter/demo/grammar.py;
vocabulary: {words} words): numbers, times, dates, colours, rooms, devices, reminders, shopping, calls. Examples:

{examples}

Anything outside that grammar (other words, other languages, real human voices, noisy rooms) comes out as the
nearest sentence it knows. A window holding several sentences is harder for it than one sentence (see the
table below); `transcribe --vad` and the live daemon cut windows at pauses. Use the real model for real speech
(docs/macos.md, README “Export the real model”).

## How it was made
- Architecture: encoder {enc['num_hidden_layers']} Conformer layers × {enc['hidden_size']} (heads
  {enc['num_attention_heads']}, FF {enc['intermediate_size']}, 8× conv subsampling), decoder {dec['num_hidden_layers']}
  layers × {dec['hidden_size']}, vocabulary {dec['vocab_size']} (SentencePiece BPE with byte fallback and the real
  special-piece names), decoder cache capacity ≥ 266.
- Data: {data['train']['clips']} training clips ({data['train']['hours']:.1f} h, {data['train']['sentences']} distinct
  transcripts) spoken by espeak-ng voices {', '.join(f'{k}: ' + '/'.join(v) for k, v in voices['base'].items())} with
  {len(voices['train_variants'])} voice variants, random speed, pitch, level, leading/trailing silence and noise;
  16 kHz. Held-out sentences never occur in training. {_selection_line(training)}
{_training_lines(training)}
- Export: `python -m exporter --checkpoint models/demo-checkpoint --out models/demo --buckets {','.join(map(str, json.loads((bundle / 'manifest.json').read_text())['encoder']['buckets']))}`.
- Bundle: ONNX (fp32, weights shared by all graphs) and Core ML (INT8 encoder, FP16 decoder), {size / 1e6:.1f} MB.

## Measured accuracy
Through `python -m daemon transcribe` on the ONNX bundle (not torch), greedy, no punctuation:

| language | voices | sentences | WER |
|---|---|---|---|
{rows}

English audio decoded with the Spanish prompt gives different tokens on {pm['different_tokens']}/{pm['clips']} clips.
Reproduce: `{evaluation['command']}`.
""" + ("" if coreml is None else "\n" + coreml_section(evaluation, coreml)) + \
        ("" if int8 is None else "\n" + int8_section(evaluation, int8))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m exporter.demo.card", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "demo-checkpoint")
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "demo")
    ap.add_argument("--eval", type=Path, help="evaluate.py JSON (default: CHECKPOINT/evaluation.json)")
    ap.add_argument("--coreml-eval", type=Path,
                    help="evaluate.py --backend coreml-reference JSON (default: CHECKPOINT/evaluation-coreml.json)")
    ap.add_argument("--int8-eval", type=Path,
                    help="evaluate.py --onnx-precision int8 JSON (default: CHECKPOINT/evaluation-int8.json)")
    args = ap.parse_args()
    training = json.loads((args.checkpoint / "training.json").read_text())
    evaluation = json.loads((args.eval or args.checkpoint / "evaluation.json").read_text())
    config = json.loads((args.checkpoint / "config.json").read_text())
    coreml_path = args.coreml_eval or args.checkpoint / "evaluation-coreml.json"
    coreml = json.loads(coreml_path.read_text()) if coreml_path.is_file() else None
    int8_path = args.int8_eval or args.checkpoint / "evaluation-int8.json"
    int8 = json.loads(int8_path.read_text()) if int8_path.is_file() else None
    (args.bundle / "MODEL_CARD.md").write_text(render(training, evaluation, config, args.bundle,
                                                      parameter_count(args.checkpoint), coreml, int8))
    print(f"wrote {args.bundle / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
