"""Train the demo model: `python -m exporter.demo.train --out DIR [--seed 0] [--steps N] [--threads N]`."""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import spm as spm_train
from ..tiny import TinyPreset, tiny_config
from . import grammar, synth

LANGS = ("en", "es")
PROMPT = ("\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "<|{lang}|>", "<|{lang}|>",
          "<|nopnc|>", "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>")
CTC_WEIGHT = 0.5
# Validation clip sets: (name, seed offset from --seed, spoken by the unseen voice variant); validate.py renders
# the same clips.
VALIDATION_SETS = (("valid", 1000, False), ("valid_unseen_voice", 2000, True))
FIRST_TEXT_ID = 1 + len(spm_train.CONTROL_PIECES) + len(LANGS)  # after <unk>, controls, languages


@dataclass
class ClipSet:
    """Audio clips with their transcripts and languages."""

    audio: list[np.ndarray]
    texts: list[str]
    langs: list[str]

    def hours(self) -> float:
        return sum(len(a) for a in self.audio) / synth.SAMPLE_RATE / 3600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m exporter.demo.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (cache/, checkpoint/)")
    ap.add_argument("--seed", type=int, default=grammar.DEMO_SEED)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads and espeak-ng workers")
    ap.add_argument("--n-train", type=int, default=grammar.DEMO_TRAIN_SENTENCES,
                    help="training sentences drawn per language (duplicates allowed)")
    ap.add_argument("--clips", type=int, default=grammar.DEMO_TRAIN_SENTENCES,
                    help="training clips per language (sentences cycled); all audio is held in RAM: 2 × 8000 clips "
                         "at --multi-share 0.5 (23.6 h) fit in 23 GB, 2 × 12000 did not")
    ap.add_argument("--multi-share", type=float, default=0.1,
                    help="share of training clips that join 2-3 sentences with pauses (windows hold several)")
    ap.add_argument("--no-perturb", action="store_true", help="train without speed perturbation")
    ap.add_argument("--n-test", type=int, default=grammar.DEMO_HELDOUT_SENTENCES,
                    help="held-out test sentences per language (kept out of training and of validation)")
    ap.add_argument("--n-valid", type=int, default=grammar.DEMO_VALIDATION_SENTENCES,
                    help="validation sentences per language (unseen, after the test sentences), evaluated during training")
    ap.add_argument("--audio-seed", type=int,
                    help="render the training clips with this seed instead of --seed (same sentences, other voices, "
                         "speeds, pitches and noises: a continued run hears fresh audio)")
    ap.add_argument("--average", type=int, default=1,
                    help="save the mean of the weights at the last N evaluations (every --eval-every steps)")
    ap.add_argument("--keep-better", action="store_true",
                    help="with --average: keep the mean only when its validation WER (mean over languages) is not "
                         "worse than the last weights', else save the last weights")
    ap.add_argument("--vocab", type=int, default=512, help="SentencePiece pieces (275 are controls + bytes)")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--no-specaugment", action="store_true", help="train without frequency/time masking")
    ap.add_argument("--pnc-share", type=float, default=0.5,
                    help="share of examples prompted with <|pnc|> (the daemon's default prompt) instead of <|nopnc|>")
    ap.add_argument("--init", type=Path, help="continue from this checkpoint (same data, seed and --vocab)")
    ap.add_argument("--overfit", type=int, default=0,
                    help="sanity check: train on this many clips (half per language) and evaluate on them")
    args = ap.parse_args(argv)
    if args.average < 1:
        ap.error("--average must be at least 1")
    if args.overfit:
        args.n_train = args.clips = max(1, args.overfit // 2)
    return args


def pack(clips: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Flatten clips into one array plus offsets (npz without pickles)."""
    offsets = np.cumsum([0] + [len(c) for c in clips]).astype(np.int64)
    return {"audio": np.concatenate(clips).astype(np.float32), "offsets": offsets}


def unpack(audio: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [audio[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def build_texts(args: argparse.Namespace) -> dict[str, list[tuple[str, str]]]:
    """(text, lang) items for training clips, validation sentences and the training sentences themselves.
    The first --n-test unseen sentences are the test set (exporter.demo.evaluate); validation comes after them."""
    train, valid, sents = [], [], []
    rng = random.Random(args.seed + 3)
    for lang in LANGS:
        tr, unseen = grammar.split(lang, args.n_train, args.n_test + args.n_valid, args.seed)
        for i in range(args.clips):
            extra = rng.choice((1, 1, 2)) if rng.random() < args.multi_share else 0
            train.append((synth.SENTENCE_BREAK.join([tr[i % len(tr)], *rng.sample(tr, extra)]), lang))
        valid += [(t, lang) for t in unseen[args.n_test:]]
        sents += [(t, lang) for t in tr]
    return {"train": train, "valid": valid, "valid_unseen_voice": valid, "sentences": sents}


def synthesize_sets(args: argparse.Namespace, items: dict[str, list[tuple[str, str]]]) -> dict[str, ClipSet]:
    """Synthesize train / validation (training voices) / validation (unseen voice) clips, cached in DIR/cache."""
    perturb = not args.no_perturb
    audio_seed = args.seed if args.audio_seed is None else args.audio_seed
    cache = args.out / "cache" / (f"clips-s{args.seed}-a{audio_seed}-n{args.n_train}-c{args.clips}-t{args.n_test}"
                                  f"-v{args.n_valid}-m{args.multi_share}-p{int(perturb)}.npz")
    plan = {"train": (audio_seed, False), **{k: (args.seed + off, h) for k, off, h in VALIDATION_SETS}}
    z = np.load(cache) if cache.is_file() else {}
    if all(f"{k}_audio" in z for k in plan):  # a cache written by another version may lack a set
        print(f"[data] using cached audio {cache}", file=sys.stderr)
        audio = {k: unpack(z[f"{k}_audio"], z[f"{k}_offsets"]) for k in plan}
    else:
        synth.check_voices()
        audio = {k: synth.synthesize_many(items[k], seed=s, heldout=h, workers=args.threads,
                                          perturbed=perturb and k == "train") for k, (s, h) in plan.items()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{k}_{n}": v for k in plan for n, v in pack(audio[k]).items()}
        np.savez(cache, **arrays)
    return {k: ClipSet(audio[k], [t.replace(synth.SENTENCE_BREAK, " ") for t, _ in items[k]],
                       [lang for _, lang in items[k]]) for k in plan}


def build_model(vocab_size: int, start_id: int):  # -> CohereAsrForConditionalGeneration
    """The demo architecture: 128-wide 3-layer encoder, 128-wide 2-layer decoder, 512 positions."""
    from transformers import CohereAsrForConditionalGeneration

    preset = TinyPreset(enc_hidden=128, enc_layers=3, enc_heads=4, enc_ff=512, sub_channels=64, dec_hidden=128,
                        dec_layers=2, dec_heads=4, dec_ff=512, vocab_size=vocab_size, eos_boost=0.0)
    config = tiny_config(preset, max_positions=512)
    config.decoder_start_token_id = start_id
    model = CohereAsrForConditionalGeneration(config)
    reinit_subsampling(model)
    model.generation_config.decoder_start_token_id = start_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def reinit_subsampling(model: nn.Module) -> None:
    """Variance-preserving (Kaiming) init for the encoder's conv subsampling.

    With transformers' default std 0.02 the 3-conv + linear front end shrinks the features ~1e6-fold, so the
    conformer sees almost no audio and the CTC loss sits on its unigram plateau for thousands of steps.
    """
    sub = model.model.encoder.subsampling
    with torch.no_grad():
        for mod in sub.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                relu = isinstance(mod, nn.Conv2d) and mod.groups == 1
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu" if relu else "linear")
                nn.init.zeros_(mod.bias)


def prompt_ids(sp, lang: str, punctuation: bool = False) -> list[int]:
    """The decoder prompt for `lang` as token ids (every piece must exist)."""
    pieces = [p.replace("<|nopnc|>", "<|pnc|>") if punctuation else p for p in PROMPT]
    ids = [sp.piece_to_id(p.format(lang=lang)) for p in pieces]
    assert 0 not in ids, f"prompt piece missing from tokenizer: {ids}"
    return ids


def decoder_batch(sp, texts: list[str], langs: list[str], pad_id: int, eos_id: int, pnc: list[bool] | None = None):
    """Decoder inputs (prompt + text), next-token labels (-100 inside the prompt) and CTC targets."""
    seqs, starts, ctc = [], [], []
    for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
        prompt, body = prompt_ids(sp, lang, bool(pnc and pnc[i])), sp.encode(text)
        seqs.append(prompt + body + [eos_id])
        starts.append(len(prompt) - 1)
        ctc.append(body)
    width = max(len(s) for s in seqs) - 1
    dec = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        dec[i, :len(s) - 1] = torch.tensor(s[:-1])
        labels[i, start:len(s) - 1] = torch.tensor(s[start + 1:])
    return dec, labels, ctc


def features(fe, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    out = fe(clips, sampling_rate=synth.SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    return out["input_features"], out["attention_mask"]


def spec_augment(feats: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment-style masking (two frequency bands of ≤ 12 mel bins, two time spans of ≤ 8 frames) to zero,
    which is the per-utterance mean after CMVN; written here because it is five lines on a tensor."""
    out = feats.clone()
    n_mels = feats.shape[-1]
    for b, valid in enumerate(mask.sum(-1).tolist()):
        for _ in range(2):
            w = int(torch.randint(0, 13, (), generator=gen))
            f0 = int(torch.randint(0, n_mels - w + 1, (), generator=gen))
            out[b, :, f0:f0 + w] = 0.0
            w = min(int(torch.randint(0, 9, (), generator=gen)), max(0, valid // 20))
            t0 = int(torch.randint(0, max(1, valid - w + 1), (), generator=gen))
            out[b, t0:t0 + w, :] = 0.0
    return out


def batches(lengths: list[int], batch: int, rng: random.Random):
    """Endless length-bucketed batches: shuffle, sort within windows of 50 batches, shuffle the batches."""
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        chunks = []
        for w in range(0, len(order), batch * 50):
            window = sorted(order[w:w + batch * 50], key=lengths.__getitem__)
            chunks += [window[i:i + batch] for i in range(0, len(window), batch)]
        rng.shuffle(chunks)
        yield from chunks


def ctc_loss(head: nn.Linear, enc, targets: list[list[int]], blank: int) -> torch.Tensor:
    """CTC on the encoder output through the training-only head (blank = the extra last class)."""
    logp = head(enc.last_hidden_state).log_softmax(-1).transpose(0, 1)
    in_lens = enc.attention_mask.sum(-1).long()
    tgt = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    tgt_lens = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    return nn.functional.ctc_loss(logp, tgt, in_lens, tgt_lens, blank=blank, zero_infinity=True)


def lr_lambda(warmup: int, steps: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
    return f


@torch.no_grad()
def transcribe(model, fe, sp, clips: list[np.ndarray], lang: str, batch: int = 32) -> list[str]:
    """Greedy decode with model.generate and the language prompt."""
    model.eval()
    prompt = prompt_ids(sp, lang)
    eos, hyps = model.config.eos_token_id, []
    for i in range(0, len(clips), batch):
        feats, mask = features(fe, clips[i:i + batch])
        dec = torch.tensor([prompt] * feats.shape[0])
        out = model.generate(input_features=feats, attention_mask=mask, decoder_input_ids=dec,
                             max_new_tokens=128, do_sample=False, num_beams=1)
        for row in out[:, len(prompt):].tolist():
            row = row[:row.index(eos)] if eos in row else row
            hyps.append(sp.decode([t for t in row if t >= FIRST_TEXT_ID]))
    model.train()
    return hyps


def evaluate(model, fe, sp, clips: ClipSet, tag: str, show: int = 2) -> dict[str, float]:
    """WER per language on `clips`, printed with a couple of examples."""
    import jiwer
    from tqdm import tqdm

    result = {}
    for lang in LANGS:
        idx = [i for i, lg in enumerate(clips.langs) if lg == lang]
        refs = [clips.texts[i] for i in idx]
        hyps = transcribe(model, fe, sp, [clips.audio[i] for i in idx], lang)
        result[lang] = round(float(jiwer.wer(refs, [h if h.strip() else "<empty>" for h in hyps])), 4)
        tqdm.write(f"[eval {tag}] {lang} WER {result[lang]:.3f} ({len(refs)} clips)")
        for r, h in list(zip(refs, hyps, strict=True))[:show]:
            tqdm.write(f"    ref: {r}\n    hyp: {h}")
    return result


def train(args: argparse.Namespace) -> None:
    import sentencepiece
    from tqdm import tqdm
    from transformers import CohereAsrFeatureExtractor

    t0 = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = args.out / "checkpoint"

    items = build_texts(args)
    sets = synthesize_sets(args, items)
    train_set = sets["train"]
    evals = {"train": train_set} if args.overfit else {"valid": sets["valid"]}
    tok_path = spm_train.train_tokenizer(sorted({t for t, _ in items["sentences"]}), args.vocab,
                                         ckpt_dir / "tokenizer.model", languages=LANGS)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tok_path))
    start_id = sp.piece_to_id("\u2581")
    if args.init:  # continue training: the tokenizer must be the one the checkpoint was trained with
        from transformers import CohereAsrForConditionalGeneration

        assert (args.init / "tokenizer.model").read_bytes() == tok_path.read_bytes(), "tokenizer differs from --init"
        model = CohereAsrForConditionalGeneration.from_pretrained(args.init)
    else:
        model = build_model(sp.get_piece_size(), start_id)
    cfg = model.config
    for name, tid in (("<pad>", cfg.pad_token_id), ("<|endoftext|>", cfg.eos_token_id),
                      ("<|startoftranscript|>", cfg.bos_token_id)):
        assert sp.piece_to_id(name) == tid, f"{name} is {sp.piece_to_id(name)} in the tokenizer, {tid} in config"
    assert start_id != sp.unk_id(), "tokenizer has no '\u2581' piece"
    fe = CohereAsrFeatureExtractor()
    head = nn.Linear(cfg.encoder_config.hidden_size, cfg.vocab_size + 1)
    params = list(model.parameters()) + list(head.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params / 1e6:.2f} M parameters, vocab {cfg.vocab_size}; train {len(train_set.audio)} clips "
          f"({train_set.hours():.2f} h)", file=sys.stderr)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args.warmup, args.steps))
    order = batches([len(a) for a in train_set.audio], args.batch, random.Random(args.seed))

    model.train()
    share_rng = random.Random(args.seed + 1)
    mask_gen = torch.Generator().manual_seed(args.seed + 2)
    ema, history, snapshots = None, {}, []
    bar = tqdm(range(1, args.steps + 1), desc="train", unit="step", mininterval=5)
    for step in bar:
        idx = next(order)
        feats, mask = features(fe, [train_set.audio[i] for i in idx])
        if not args.no_specaugment:
            feats = spec_augment(feats, mask, mask_gen)
        pnc = [share_rng.random() < args.pnc_share for _ in idx]  # texts have no punctuation either way
        dec, labels, ctc_tgt = decoder_batch(sp, [train_set.texts[i] for i in idx],
                                             [train_set.langs[i] for i in idx], cfg.pad_token_id, cfg.eos_token_id,
                                             pnc)
        enc = model.model.encoder(feats, attention_mask=mask)
        out = model(encoder_outputs=enc, decoder_input_ids=dec, labels=labels)
        ctc = ctc_loss(head, enc, ctc_tgt, blank=cfg.vocab_size)
        loss = out.loss + CTC_WEIGHT * ctc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # without it early spikes stall the encoder (CTC ~4.8)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", attn=f"{out.loss.item():.3f}", ctc=f"{ctc.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            history[step] = {k: evaluate(model, fe, sp, v, f"{k} @ {step}") for k, v in evals.items()}
            history[step]["loss"] = round(ema, 4)
            if args.average > 1:
                snapshots = ([*snapshots, {k: v.detach().clone() for k, v in model.state_dict().items()}])[-args.average:]
    final, tag = history[args.steps], f"step {args.steps}"
    if len(snapshots) > 1:
        average_into(model, snapshots)
        mean = {k: evaluate(model, fe, sp, v, f"{k} @ mean of last {len(snapshots)}") for k, v in evals.items()}
        mean["averaged_steps"] = sorted(history)[-len(snapshots):]
        if args.keep_better and mean_wer(mean) > mean_wer(final):
            model.load_state_dict(snapshots[-1])
            final = {**final, "average_rejected": mean}
        else:
            final, tag = {**mean, "last_weights": final}, f"mean of last {len(snapshots)}"
    if not args.overfit:
        final["valid_unseen_voice"] = evaluate(model, fe, sp, sets["valid_unseen_voice"], f"unseen voice @ {tag}")
    save(args, model, fe, ckpt_dir, ema, final, history, sets, time.time() - t0)


def mean_wer(result: dict) -> float:
    """Mean over the evaluation sets and languages of one `history` entry."""
    wers = [w for v in result.values() if isinstance(v, dict) for w in v.values()]
    return sum(wers) / len(wers)


def average_into(model: nn.Module, snapshots: list[dict[str, torch.Tensor]]) -> None:
    """Load the element-wise mean of weight snapshots (checkpoint averaging; integer buffers from the last)."""
    mean = {k: torch.stack([s[k] for s in snapshots]).mean(0) if v.is_floating_point() else v
            for k, v in snapshots[-1].items()}
    model.load_state_dict(mean)


def code_revision() -> str | None:
    """The git commit the recipe ran from ("+dirty" with uncommitted changes), so a checkpoint names its code."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "exporter"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def save(args: argparse.Namespace, model, fe, ckpt_dir: Path, loss: float, final: dict, history: dict,
         sets: dict[str, ClipSet], elapsed: float) -> None:
    """save_pretrained + preprocessor config + training.json next to the tokenizer."""
    model.eval()
    model.save_pretrained(ckpt_dir)
    fe.save_pretrained(ckpt_dir)
    report = {
        "command": "python -m exporter.demo.train " + " ".join(sys.argv[1:]),
        "seed": args.seed, "steps": args.steps, "threads": args.threads, "batch": args.batch, "lr": args.lr,
        "warmup": args.warmup, "vocab": args.vocab, "ctc_weight": CTC_WEIGHT,
        "specaugment": not args.no_specaugment, "speed_perturbation": None if args.no_perturb else synth.PERTURB_RANGE,
        "multi_sentence_share": args.multi_share, "final_loss": round(loss, 4),
        "audio_seed": args.seed if args.audio_seed is None else args.audio_seed, "averaged": args.average,
        "keep_better": args.keep_better,
        "wer": final, "history": history,
        "data": {k: {"clips": len(v.audio), "hours": round(v.hours(), 3),
                     "sentences": len(set(v.texts))} for k, v in sets.items()},
        "voices": {"base": synth.BASE_VOICES, "train_variants": list(synth.TRAIN_VARIANTS),
                   "unseen_variant": synth.HELDOUT_VARIANT,
                   "validation_set": "unseen sentences after the test set, training voices and the unseen variant"},
        "elapsed_s": round(elapsed, 1),
        "code": code_revision(),
    }
    if args.init:  # keep the provenance chain: the run this one continued
        report["init"] = {"path": str(args.init), "training": json.loads((args.init / "training.json").read_text())}
    (ckpt_dir / "training.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"[done] {ckpt_dir} in {elapsed / 60:.1f} min; WER {json.dumps(final)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
