"""Write a reproducible synthetic test set for the demo model: espeak-ng WAVs plus a JSONL manifest.

    python -m bench.make_synthetic_set --out DIR [--n 60] [--languages en,es] [--heldout-voice] [--seed 7]

The sentences are the demo model's held-out ones (`exporter.demo.grammar.demo_heldout`, never in its training
set), spoken by `exporter.demo.synth.synthesize_many` with its seeded voices and augmentation: clip i of a
language uses the rng seeded by (seed, i), so the same command writes the same set. `--heldout-voice` speaks
every clip with the voice variant the demo model never heard. DIR gets LANG-NNN.wav and manifest.jsonl
(keys id, audio, text, language), ready for `python -m bench.accuracy DIR/manifest.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import soundfile as sf

from exporter.demo import grammar, synth

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SEED = 7  # the seed exporter.demo.evaluate uses


def make_set(out: Path, n: int, languages: list[str], heldout_voice: bool = False, seed: int = DEFAULT_SEED,
             workers: int = 2) -> Path:
    """Synthesize n held-out sentences per language into out/; returns the manifest path.

    Raises:
        ValueError: for an unknown language or more sentences than the held-out split has.
    """
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        texts = grammar.demo_heldout(lang)
        if not 1 <= n <= len(texts):
            raise ValueError(f"--n must be 1..{len(texts)} (the demo model's held-out {lang} sentences), got {n}")
        clips = synth.synthesize_many([(t, lang) for t in texts[:n]], seed=seed, heldout=heldout_voice,
                                      workers=workers)
        for i, (text, clip) in enumerate(zip(texts[:n], clips, strict=True)):
            name = f"{lang}-{i:03d}"
            sf.write(out / f"{name}.wav", clip, synth.SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": name, "audio": f"{name}.wav", "text": text, "language": lang})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the WAVs and manifest.jsonl")
    ap.add_argument("--n", type=int, default=grammar.DEMO_HELDOUT_SENTENCES, help="sentences per language")
    ap.add_argument("--languages", default=",".join(grammar.LANGUAGES), help="comma-separated (default en,es)")
    ap.add_argument("--heldout-voice", action="store_true", help="the voice variant never used in training")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    args = ap.parse_args()
    try:
        manifest = make_set(args.out, args.n, args.languages.split(","), args.heldout_voice, args.seed,
                            args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
