"""Core ML files vs transformers, per precision: token agreement and the largest log-probability drift.

    python -m bench.coreml_drift [--clips 20] [--out bench/results/coreml_drift.json]

The random tiny configs a and b (exporter.tiny) are exported to Core ML in fp32, fp16 and hybrid (INT8
encoder weights, FP16 decoder) and run through the reference evaluator (coreml-reference) on speech clips of
0.5–35 s, next to transformers generate() (greedy). Per precision: clips whose greedy tokens are identical,
the share of generate()'s tokens decoded before the first difference, and the largest |Δ log-prob| of
generate()'s tokens teacher-forced (exporter.check.compare); split at 20.48 s (2048 feature frames), beyond
which FP16 cannot hold every frame count (the exporter keeps lengths and positions in FP32; this split shows it).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from daemon.audio import SAMPLE_RATE as SR
from daemon.model.decode import DecodeOptions
from daemon.model.transcriber import load_transcriber
from devtools.speech import speech_clip
from exporter.check import Comparison, compare

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("a", "b")
PRECISIONS = ("fp32", "fp16", "hybrid")
LANGS = ("en", "es", "fr", "de", "ja")
MAX_NEW = 24
FP16_EXACT_S = 2048 * 160 / SR  # 20.48 s


def clip_lengths(n: int) -> list[float]:
    """The lengths tests/test_parity.py uses: 0.5 s, 35 s and n − 2 uniform in between."""
    rng = np.random.default_rng(3)
    return sorted([0.5, 35.0, *list(rng.uniform(0.5, 35.0, n - 2))])


def export(ckpt: Path, out: Path, precision: str) -> Path:
    subprocess.run([sys.executable, "-m", "exporter", "--checkpoint", str(ckpt), "--out", str(out), "--buckets",
                    "1000,3500", "--backends", "coreml", "--precision", precision], check=True, capture_output=True)
    return out


def reference(model, fe, sp, x: np.ndarray, prompt: list[int]) -> tuple[list[int], list[float]]:
    """transformers generate(), greedy: the tokens before EOS and their log-probabilities."""
    import torch

    f = fe(x, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(input_features=f["input_features"], attention_mask=f["attention_mask"],
                             decoder_input_ids=torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                             num_beams=1, return_dict_in_generate=True, output_logits=True)
    logp = torch.log_softmax(torch.stack(out.logits)[:, 0].double(), dim=-1)
    eos = sp.piece_to_id("<|endoftext|>")
    tokens: list[int] = []
    for t in out.sequences[0, len(prompt):].tolist():
        if t == eos:
            break
        tokens.append(t)
    return tokens, [float(logp[i, t]) for i, t in enumerate(tokens)]


def prompt_of(sp, lang: str, pnc: bool) -> list[int]:
    pieces = ["\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", f"<|{lang}|>",
              f"<|{lang}|>", "<|pnc|>" if pnc else "<|nopnc|>", "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>"]
    return [sp.piece_to_id(p) for p in pieces]


def summary(rows: list[tuple[float, Comparison]]) -> dict:
    def part(sel: list[Comparison]) -> dict:
        if not sel:
            return {"clips": 0}
        return {"clips": len(sel), "identical": sum(r.same_tokens for r in sel),
                "tokens_before_first_difference": round(sum(r.agreeing for r in sel) / sum(r.n_ref for r in sel), 4),
                "max_logprob_drift": float(f"{max(r.drift for r in sel):.3g}")}

    return {"all": part([r for _, r in rows]),
            "up_to_20.48s": part([r for s, r in rows if s <= FP16_EXACT_S]),
            "over_20.48s": part([r for s, r in rows if s > FP16_EXACT_S]),
            "seconds_per_audio_second": round(sum(r.seconds for _, r in rows) / sum(s for s, _ in rows), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.coreml_drift", description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "coreml_drift.json")
    args = ap.parse_args()
    import sentencepiece as spm
    from transformers import CohereAsrFeatureExtractor, CohereAsrForConditionalGeneration

    from exporter.tiny import build_tiny

    lengths = clip_lengths(args.clips)
    clips = [speech_clip(s, 1000 + i) for i, s in enumerate(lengths)]
    fe = CohereAsrFeatureExtractor(dither=0.0)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            ckpt = build_tiny(Path(tmp) / preset, seed=13, preset=preset)
            model = CohereAsrForConditionalGeneration.from_pretrained(ckpt).eval()
            sp = spm.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
            refs = []
            for i, x in enumerate(clips):
                lang, pnc = LANGS[i % len(LANGS)], i % 2 == 0
                prompt = prompt_of(sp, lang, pnc)
                refs.append((lang, pnc, prompt, *reference(model, fe, sp, x, prompt)))
            for precision in PRECISIONS:
                bundle = export(ckpt, Path(tmp) / f"{preset}-{precision}", precision)
                tr = load_transcriber(bundle, "coreml-reference", dither=0.0)
                rows = []
                for s, x, (lang, pnc, prompt, tokens, lps) in zip(lengths, clips, refs, strict=True):
                    options = DecodeOptions(language=lang, punctuation=pnc, max_new_tokens=MAX_NEW)
                    rows.append((s, compare(tr, x, options, prompt, tokens, lps, ref_eos=False)))
                results[f"{preset}/{precision}"] = summary(rows)
                print(f"{preset} {precision:<6} {json.dumps(results[f'{preset}/{precision}'])}", flush=True)
    doc = {"command": " ".join(["python -m bench.coreml_drift", *sys.argv[1:]]),
           "machine": f"{platform.machine()}, {platform.system()}", "clip_seconds": [round(s, 2) for s in lengths],
           "max_new_tokens": MAX_NEW, "wall_s": round(time.perf_counter() - t0, 1), "results": results}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
