"""Accuracy and speed of a bundle on a manifest: WER/CER per language, RTFx and time per stage.

    python -m bench.accuracy MANIFEST_OR_FOLDER [--model models/demo] [--backend onnx|coreml] [--language xx]
        [--limit N] [--no-punctuation] [--out bench/results/accuracy-NAME.json]

MANIFEST_OR_FOLDER is a JSONL manifest, a FLEURS split .tsv or a LibriSpeech folder (bench/manifest.py).
The model is loaded once and warmed up; then every item is read (daemon.audio: any format, resampled with
soxr) and transcribed the way `python -m daemon transcribe` does it (Transcriber.transcribe: windows ≤ 35 s,
greedy decoding). Scores use the normalizer of bench/normalize.py. Timing counts transcription only, not
loading the model or reading the audio:

    RTFx = audio seconds / compute seconds      (compute = wall time of Transcriber.transcribe per item)
    stages: features (log-mel), encoder, decoder (all decoder steps, prompt included), detokenize, other

The JSON written to --out holds everything the tables in docs/benchmarks.md are made from; the table printed
at the end is a summary of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.manifest import Item, layout_of, read_manifest
from bench.normalize import score
from daemon.audio.files import load_audio
from daemon.errors import DaemonError
from daemon.model.decode import DecodeOptions, build_prompt
from daemon.model.locate import DEFAULT_MODEL
from daemon.model.transcriber import Transcriber, load_transcriber

ROOT = Path(__file__).resolve().parent.parent

STAGES = ("features", "encoder", "decoder", "detokenize")  # timed inside Transcriber.transcribe


@dataclass(frozen=True)
class ItemResult:
    """One transcribed item with its timing."""

    item: Item
    hyp: str
    audio_seconds: float
    seconds: float  # wall time of the transcription (all windows, detokenization included)
    stages: dict[str, float]  # seconds per stage of STAGES
    decoder_steps: int  # decoder_step calls: prompt feeding + one per generated token (+ the EOS step)


def transcribe_item(tr: Transcriber, item: Item, punctuation: bool) -> ItemResult:
    """Read and transcribe one item; only the transcription is timed."""
    samples = load_audio(item.audio, tr.sample_rate)
    options = DecodeOptions(language=item.language, punctuation=punctuation)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    segments = list(tr.transcribe(samples, options, timings=stages))
    seconds = time.perf_counter() - t0
    n_prompt = len(build_prompt(tr.bundle, tr.tokenizer, item.language, punctuation))
    # greedy_decode feeds the prompt in len(prompt) − 1 steps, then one step per token picked (EOS included).
    steps = sum(n_prompt - 1 + len(s.tokens) + (s.stop_reason == "eos") for s in segments)
    hyp = " ".join(s.text.strip() for s in segments).strip()
    return ItemResult(item, hyp, samples.shape[0] / tr.sample_rate, seconds, stages, steps)


def run(tr: Transcriber, items: list[Item], punctuation: bool) -> list[ItemResult]:
    """Transcribe every item in order, with a progress bar on a terminal."""
    from tqdm import tqdm

    return [transcribe_item(tr, it, punctuation) for it in tqdm(items, unit="clip", disable=None, leave=False)]


def per_language(results: list[ItemResult]) -> dict[str, dict[str, Any]]:
    """Scores, audio and compute seconds and RTFx per language, in order of first appearance."""
    out: dict[str, dict[str, Any]] = {}
    for lang in dict.fromkeys(r.item.language for r in results):
        rs = [r for r in results if r.item.language == lang]
        audio, compute = sum(r.audio_seconds for r in rs), sum(r.seconds for r in rs)
        out[lang] = {"n": len(rs), **score([r.item.text for r in rs], [r.hyp for r in rs], lang),
                     "audio_seconds": audio, "compute_seconds": compute, "rtfx": audio / compute}
    return out


def stage_totals(results: list[ItemResult]) -> dict[str, dict[str, Any]]:
    """Seconds and share of compute per stage; "other" is the rest (prompt, window split), so shares sum to 1."""
    compute = sum(r.seconds for r in results)
    secs = {s: sum(r.stages.get(s, 0.0) for r in results) for s in STAGES}
    secs["other"] = max(0.0, compute - sum(secs.values()))
    out = {s: {"seconds": v, "share": v / compute} for s, v in secs.items()}
    steps = sum(r.decoder_steps for r in results)
    out["decoder"] |= {"steps": steps, "ms_per_step": 1000 * secs["decoder"] / steps if steps else None}
    return out


def cpu_model() -> str:
    """The processor's marketing name (Linux /proc/cpuinfo, macOS sysctl), else platform.processor()."""
    try:
        if platform.system() == "Darwin":
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, check=True).stdout.strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version()}


def runtime_version(backend: str) -> str:
    """The runtime package and its version, e.g. "onnxruntime 1.20.1"."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"onnx": "onnxruntime", "coreml": "coremltools"}[backend]
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:  # a differently named build, e.g. onnxruntime-silicon
        return package


def _rounded(x: Any, digits: int = 6) -> Any:
    """Floats rounded for a readable JSON file, recursively."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v, digits) for v in x]
    return x


def report(args: argparse.Namespace, tr: Transcriber, results: list[ItemResult],
           setup: dict[str, float]) -> dict[str, Any]:
    """The benchmark's JSON document."""
    audio, compute = sum(r.audio_seconds for r in results), sum(r.seconds for r in results)
    bundle = tr.bundle
    return _rounded({
        "command": shlex.join(["python", "-m", "bench.accuracy", *sys.argv[1:]]),
        "machine": machine(),
        "model": {"bundle": str(bundle.root), "source": bundle.manifest.get("source")},
        "backend": {"name": tr.backend.name, "precision": bundle.backends[tr.backend.name].precision,
                    "runtime": runtime_version(tr.backend.name)},
        "manifest": {"path": str(args.manifest), "layout": layout_of(args.manifest)},
        "options": {"punctuation": args.punctuation, "limit": args.limit, "language": args.language},
        "n_items": len(results), "audio_seconds": audio, "compute_seconds": compute, "rtfx": audio / compute,
        **setup,
        "languages": per_language(results),
        "stages": stage_totals(results),
        "items": [{"id": r.item.id, "language": r.item.language, "audio_seconds": r.audio_seconds,
                   "seconds": r.seconds, "ref": r.item.text, "hyp": r.hyp} for r in results],
    })


def print_summary(doc: dict[str, Any]) -> None:
    """A short table of the document: scores per language, then time per stage."""
    print(f"{'language':<9} {'items':>6} {'audio s':>9} {'WER %':>7} {'CER %':>7} {'RTFx':>8}")
    for lang, s in doc["languages"].items():
        wer = "-" if s["wer"] is None else f"{100 * s['wer']:.2f}"
        print(f"{lang:<9} {s['n']:>6} {s['audio_seconds']:>9.1f} {wer:>7} {100 * s['cer']:>7.2f} {s['rtfx']:>8.1f}")
    print(f"{'all':<9} {doc['n_items']:>6} {doc['audio_seconds']:>9.1f} {'':>7} {'':>7} {doc['rtfx']:>8.1f}")
    print(f"\n{'stage':<11} {'seconds':>9} {'share':>7}")
    for name, s in doc["stages"].items():
        print(f"{name:<11} {s['seconds']:>9.3f} {100 * s['share']:>6.1f}%")
    d = doc["stages"]["decoder"]
    if d["steps"]:
        print(f"decoder: {d['steps']} steps, {d['ms_per_step']:.2f} ms per step")


def default_out(manifest: Path) -> Path:
    """bench/results/accuracy-NAME.json, NAME from the manifest (test-clean, en_us-test, my-set)."""
    p = manifest.resolve()
    name = p.name if p.is_dir() else p.parent.name if p.stem == "manifest" else f"{p.parent.name}-{p.stem}"
    return ROOT / "bench" / "results" / f"accuracy-{name}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, metavar="MANIFEST_OR_FOLDER",
                    help="JSONL manifest, FLEURS split .tsv, or LibriSpeech folder")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="bundle folder (default: models/demo)")
    ap.add_argument("--backend", choices=["onnx", "coreml"], default=None,
                    help="runtime (default: coreml on macOS when the bundle has it, else onnx)")
    ap.add_argument("--language", default=None, help="language of every item (FLEURS; overrides the manifest)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N items")
    ap.add_argument("--punctuation", action=argparse.BooleanOptionalAction, default=True,
                    help="prompt with punctuation on (default, as the daemon) or off")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/accuracy-NAME.json)")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        items = read_manifest(args.manifest, args.language)[: args.limit]
        t0 = time.perf_counter()
        tr = load_transcriber(args.model, args.backend)
        t1 = time.perf_counter()
        for lang in dict.fromkeys(it.language for it in items):  # an unknown language fails now, not midway
            build_prompt(tr.bundle, tr.tokenizer, lang, args.punctuation)
        tr.warm_up()
        setup = {"load_seconds": t1 - t0, "warmup_seconds": time.perf_counter() - t1}
        doc = report(args, tr, run(tr, items, args.punctuation), setup)
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_summary(doc)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
