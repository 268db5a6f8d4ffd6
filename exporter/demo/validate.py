"""Compare demo checkpoints on the validation sentences: `python -m exporter.demo.validate CHECKPOINT...`.

Choosing between training runs on the held-out test set (exporter.demo.evaluate) would make its figures
optimistic, so runs are compared here instead: the validation sentences (grammar.demo_validation, unseen in
training and not in the test set) rendered exactly as `exporter.demo.train` renders its validation clips, by
training voices and by the unseen variant, decoded greedily with transformers generate() on each checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import grammar, synth
from .train import LANGS, ClipSet, evaluate


def validation_sets(seed: int, threads: int) -> dict[str, ClipSet]:
    """The validation clips of a training run with --seed `seed` (same voices, seeds and order)."""
    items = [(t, lang) for lang in LANGS for t in grammar.demo_validation(lang)]
    texts, langs = [t for t, _ in items], [lang for _, lang in items]
    return {name: ClipSet(synth.synthesize_many(items, seed=seed + offset, heldout=heldout, workers=threads),
                          texts, langs)
            for name, offset, heldout in (("valid", 1000, False), ("valid_unseen_voice", 2000, True))}


def main(argv: list[str] | None = None) -> int:
    import sentencepiece
    from transformers import CohereAsrFeatureExtractor, CohereAsrForConditionalGeneration

    ap = argparse.ArgumentParser(prog="python -m exporter.demo.validate", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--seed", type=int, default=grammar.DEMO_SEED, help="the training runs' --seed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = validation_sets(args.seed, args.threads)
    fe = CohereAsrFeatureExtractor()
    results = {}
    for ckpt in args.checkpoints:
        model = CohereAsrForConditionalGeneration.from_pretrained(ckpt)
        sp = sentencepiece.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
        results[str(ckpt)] = {name: evaluate(model, fe, sp, clips, f"{ckpt} {name}", show=0)
                              for name, clips in sets.items()}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
