"""Compare demo checkpoints on the validation sentences: `python -m exporter.demo.validate CHECKPOINT...`.

Choosing between training runs on the held-out test set (exporter.demo.evaluate) would make its figures
optimistic, so runs are compared here instead: the validation sentences (grammar.demo_validation, unseen in
training and not in the test set) rendered exactly as `exporter.demo.train` renders its validation clips, by
training voices and by the unseen variant, and as clips of three sentences with pauses, decoded greedily with
transformers generate() on each checkpoint. It assumes the recipe's --seed, --n-train, --n-test and --n-valid.
A run with --keep-better chose between its mean and last weights on the "valid" clips, so its "valid" figure is
slightly optimistic; the unseen-voice and multi-sentence sets were not used for any choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import grammar, synth
from .train import LANGS, VALIDATION_SETS, ClipSet, evaluate

MULTI = 3  # sentences per clip in the multi-sentence set
SEED = grammar.DEMO_SEED  # the recipe's --seed


def validation_sets(threads: int) -> dict[str, ClipSet]:
    """The validation clips exporter.demo.train renders with the recipe's defaults (same sentences, voices, seeds
    and order), plus clips of three validation sentences with pauses between them (a daemon window without VAD
    often holds several sentences)."""
    synth.check_voices()
    items = [(t, lang) for lang in LANGS for t in grammar.demo_validation(lang)]
    sets = {name: ClipSet(synth.synthesize_many(items, seed=SEED + offset, heldout=heldout, workers=threads),
                          [t for t, _ in items], [lang for _, lang in items])
            for name, offset, heldout in VALIDATION_SETS}
    multi = [(synth.SENTENCE_BREAK.join(sents[i:i + MULTI]), lang) for lang in LANGS
             for sents in [grammar.demo_validation(lang)] for i in range(0, len(sents) - MULTI + 1, MULTI)]
    sets["valid_multi_sentence"] = ClipSet(
        synth.synthesize_many(multi, seed=SEED + 3000, heldout=False, workers=threads),
        [t.replace(synth.SENTENCE_BREAK, " ") for t, _ in multi], [lang for _, lang in multi])
    return sets


def main(argv: list[str] | None = None) -> int:
    import sentencepiece
    from transformers import CohereAsrFeatureExtractor, CohereAsrForConditionalGeneration

    ap = argparse.ArgumentParser(prog="python -m exporter.demo.validate", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = validation_sets(args.threads)
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
