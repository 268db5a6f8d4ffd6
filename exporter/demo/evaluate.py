"""Measure the demo model through the daemon: held-out sentences → espeak-ng → `python -m daemon transcribe`.

    python -m exporter.demo.evaluate [--model models/demo] [--backend onnx] [--onnx-precision fp32|int8] [--n 60]
        [--seed 7] [--multi-rounds 1] [--out FILE.json]

Per language (en, es): WER on sentences never seen in training spoken by training voices, and by a voice
variant never used in training; the same sentences three to a clip with pauses between them (one window of
several sentences, as `transcribe` without --vad and long utterances give); plus a check that the language
prompt matters (English audio decoded with the Spanish prompt gives other tokens). It runs the daemon's own
command line on the bundle's ONNX files (or `--backend coreml-reference`: its Core ML files through the
reference evaluator, several times slower: about 12 min for the whole set), not torch. `--onnx-precision int8`
first exports the bundle's checkpoint (--checkpoint, default models/demo-checkpoint) with
`python -m exporter --backends onnx --onnx-precision int8` and the bundle's buckets to a temporary folder, and
measures it side by side with the bundle's FP32 files on the same clips (`fp32_results` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

from . import grammar, synth

ROOT = Path(__file__).resolve().parents[2]
def heldout_sentences(lang: str, n: int) -> list[str]:
    """Sentences the demo model never heard in training."""
    return grammar.demo_heldout(lang)[:n]


def transcribe(model: str, wavs: list[Path], language: str, backend: str = "onnx") -> list[dict]:
    """`python -m daemon transcribe --format json` on every file, one process; one dict per file."""
    cmd = [sys.executable, "-m", "daemon", "transcribe", *map(str, wavs), "--model", model, "--language", language,
           "--format", "json", "--backend", backend, "--no-punctuation"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return [json.loads(line) for line in out.splitlines()]


def text_of(doc: dict) -> str:
    return " ".join(s["text"] for s in doc["segments"]).strip()


PER_CLIP = 3  # sentences per clip in the multi-sentence set
MULTI_SEED_OFFSET = 100  # its voices are drawn apart from the single-sentence clips' (seed --seed + 100)


def multi_groups(sentences: list[str], rounds: int, seed: int) -> list[list[str]]:
    """The multi-sentence clips' sentences: round 0 groups them in order, PER_CLIP to a clip (the set measured
    since the demo model was trained); each further round groups a seeded shuffle of them, so one sentence
    lands beside other neighbours. With 20 clips one clip flipping moves the set's WER about 1.5 points; more
    rounds resolve smaller differences between two exports of one model."""
    rounds_of = [list(sentences)]
    for r in range(1, rounds):
        order = np.random.default_rng([seed, r]).permutation(len(sentences))
        rounds_of.append([sentences[i] for i in order])
    return [s[i:i + PER_CLIP] for s in rounds_of for i in range(0, len(s), PER_CLIP)]


def evaluate(model: str, lang: str, n: int, seed: int, heldout_voice: bool, folder: Path, multi: bool = False,
             backend: str = "onnx", rounds: int = 1) -> dict:
    sentences = heldout_sentences(lang, n)
    per_clip = PER_CLIP if multi else 1
    groups = multi_groups(sentences, rounds, seed) if multi else [[s] for s in sentences]
    clips = synth.synthesize_many([(synth.SENTENCE_BREAK.join(g), lang) for g in groups],
                                  seed=seed + (MULTI_SEED_OFFSET if multi else 0), heldout=heldout_voice)
    texts = [" ".join(g) for g in groups]
    wavs = []
    for i, x in enumerate(clips):
        wavs.append(folder / f"{lang}-{'heldout' if heldout_voice else 'train'}-{per_clip}-{i:03d}.wav")
        sf.write(wavs[-1], x, synth.SAMPLE_RATE)
    docs = transcribe(model, wavs, lang, backend)
    hyps = [text_of(d) for d in docs]
    voice = "held-out variant " + synth.HELDOUT_VARIANT[lang] if heldout_voice else "training voices"
    return {"lang": lang, "voice": voice + (f", {per_clip} sentences per clip" if multi else ""),
            "n": len(sentences), "clips": len(clips), "rounds": rounds if multi else 1, "wer": round(jiwer.wer(texts, hyps), 4),
            "errors": [(r, h) for r, h in zip(texts, hyps, strict=True) if r != h][:5],
            "seconds": round(sum(len(x) for x in clips) / synth.SAMPLE_RATE, 1), "wavs": wavs, "docs": docs}


def prompt_matters(model: str, wavs: list[Path], backend: str = "onnx") -> dict:
    """English clips decoded with the Spanish prompt: how many give different tokens."""
    en = [d["segments"][0]["tokens"] for d in transcribe(model, wavs, "en", backend)]
    es = [d["segments"][0]["tokens"] for d in transcribe(model, wavs, "es", backend)]
    return {"clips": len(wavs), "different_tokens": sum(a != b for a, b in zip(en, es, strict=True))}


def export_int8(checkpoint: str, bundle: str, out: Path) -> str:
    """An INT8 ONNX export of `checkpoint` with the buckets of `bundle`, in `out`; returns its path."""
    buckets = json.loads((Path(bundle) / "manifest.json").read_text())["encoder"]["buckets"]
    subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", checkpoint, "--out", str(out), "--backends",
                    "onnx", "--onnx-precision", "int8", "--buckets", ",".join(map(str, buckets))],
                   check=True, capture_output=True, cwd=ROOT)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m exporter.demo.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "demo"))
    ap.add_argument("--backend", default="onnx", choices=["onnx", "coreml-reference"],
                    help="the bundle's files to run: onnx, or the Core ML files through the reference evaluator")
    ap.add_argument("--onnx-precision", default="fp32", choices=["fp32", "int8"],
                    help="int8: measure an INT8 ONNX export of --checkpoint instead of the bundle's own files")
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "demo-checkpoint"),
                    help="the checkpoint behind --model (for --onnx-precision int8)")
    ap.add_argument("--n", type=int, default=60, help="held-out sentences per language")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--multi-rounds", type=int, default=1,
                    help="groupings of the held-out sentences in the 3-sentence sets (1: 20 clips per language; "
                         "4: 80, to compare two exports of one model within half a point)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    results, reference = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"": args.model}
        if args.onnx_precision == "int8":  # the INT8 export and the FP32 bundle, side by side on the same clips
            models = {"INT8 ": export_int8(args.checkpoint, args.model, Path(tmp) / "int8"), "FP32 ": args.model}
        for lang in grammar.LANGUAGES:
            for heldout, multi in ((False, False), (True, False), (False, True)):
                for label, model in models.items():
                    r = evaluate(model, lang, args.n, args.seed, heldout, Path(tmp), multi, args.backend,
                                 args.multi_rounds if multi else 1)
                    print(f"{label}{lang} {r['voice']:<46} WER {100 * r['wer']:5.2f} %  ({r['clips']} clips of "
                          f"{r['n']} sentences, {r['seconds']} s)")
                    (reference if label == "FP32 " else results).append(r)
        first = next(r for r in results if r["lang"] == "en" and r["voice"] == "training voices")
        pm = prompt_matters(models["INT8 " if reference else ""], first["wavs"][:20], args.backend)
        print(f"English audio, Spanish prompt: {pm['different_tokens']}/{pm['clips']} clips give other tokens")

    def public(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wavs", "docs")} for r in rs]

    summary = {"command": " ".join(["python -m exporter.demo.evaluate", *sys.argv[1:]]), "backend": args.backend,
               "onnx_precision": args.onnx_precision, "results": public(results),
               **({"fp32_results": public(reference)} if reference else {}), "prompt_matters": pm}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
