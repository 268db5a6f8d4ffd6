"""`python -m exporter check BUNDLE`: every backend of a bundle on a few synthetic clips, against ONNX.

What a user who exports on Linux runs before copying a bundle to a Mac: the Core ML files run through the
reference evaluator (daemon.model.backends.coreml_reference; slow), the ONNX files through ONNX Runtime, and
for each clip it compares the greedy tokens and the log-probabilities each backend gives the reference's
tokens (teacher-forced, so one early difference does not hide the rest). On a Mac the real Core ML runtime is
checked too. The comparison functions are shared with tests/test_coreml_reference.py and
bench/coreml_drift.py.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.audio import SAMPLE_RATE
from daemon.errors import DaemonError
from daemon.model.backends import files_of
from daemon.model.bundle import Bundle, encoder_frames, load_bundle
from daemon.model.decode import DecodeOptions, greedy_decode
from daemon.model.features import log_mel, pad_frames
from daemon.model.transcriber import Transcriber, load_transcriber

Audio = npt.NDArray[np.float32]
# one clip past 2048 feature frames (20.48 s), where FP16 stops holding every integer frame count
CLIP_SECONDS = (1.5, 4.0, 7.5, 12.0, 30.0)


@dataclass(frozen=True)
class Comparison:
    """One clip decoded by a backend next to the reference."""

    same_tokens: bool  # identical greedy token sequences
    agreeing: int  # tokens of the reference's sequence before the first difference
    n_ref: int  # tokens in the reference's sequence
    drift: float  # largest |Δ log-prob| of the reference's tokens (and its EOS), teacher-forced
    seconds: float  # wall time of the backend's greedy decode of this clip


class _Recorder:
    """A Backend that records the logits of every decoder step (the surface greedy_decode uses)."""

    def __init__(self, backend: Any) -> None:
        self.inner = backend
        self.bundle = backend.bundle
        self.cache_dtype = backend.cache_dtype
        self.logits: list[npt.NDArray[np.float64]] = []

    def decoder_step(self, feeds: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.inner.decoder_step(feeds)
        self.logits.append(np.asarray(out["logits"], np.float64).reshape(-1))
        return out


def forced_logprobs(tr: Transcriber, samples: Audio, prompt: list[int], tokens: list[int],
                    with_eos: bool) -> list[float]:
    """The log-probabilities tr's model gives `tokens` (then EOS when with_eos) after the prompt, each
    conditioned on the given tokens before it (teacher forcing); log-softmax in float64 of the raw logits."""
    feats = log_mel(samples, tr.features)
    n_valid = feats.shape[1]
    enc = tr.backend.encode(pad_frames(feats, tr.pick_bucket(n_valid)), n_valid)
    rec = _Recorder(tr.backend)
    greedy_decode(rec, enc, encoder_frames(n_valid, tr.bundle.subsampling_stages),  # type: ignore[arg-type]
                  prompt + tokens, 1, DecodeOptions(ignore_eos=True))
    targets = tokens + ([tr.bundle.eos_id] if with_eos else [])
    out = []
    for j, t in enumerate(targets):
        z = rec.logits[len(prompt) - 1 + j]
        m = z.max()
        out.append(float(z[t] - m - np.log(np.exp(z - m).sum())))
    return out


def compare(tr: Transcriber, samples: Audio, options: DecodeOptions, prompt: list[int], ref_tokens: list[int],
            ref_logprobs: list[float], ref_eos: bool) -> Comparison:
    """tr's greedy decode of one clip next to the reference's tokens and their log-probabilities (ref_logprobs
    holds one more, for EOS, when ref_eos)."""
    t0 = time.perf_counter()
    _, res = tr.transcribe_window(samples, options)
    seconds = time.perf_counter() - t0
    agreeing = next((k for k, (a, b) in enumerate(zip(res.tokens, ref_tokens, strict=False)) if a != b),
                    min(len(res.tokens), len(ref_tokens)))
    forced = forced_logprobs(tr, samples, prompt, ref_tokens, ref_eos)
    drift = float(np.abs(np.array(forced) - np.array(ref_logprobs)).max(initial=0.0))
    return Comparison(list(res.tokens) == ref_tokens, agreeing, len(ref_tokens), drift, seconds)


def synthetic_clips(seconds: tuple[float, ...] = CLIP_SECONDS, seed: int = 0) -> list[Audio]:
    """Speech-like test audio without a speech synthesizer: voiced syllables (a gliding pitch with harmonics
    through two formant resonances) between short pauses, and light noise; 16 kHz float32."""
    rng = np.random.default_rng(seed)
    clips = []
    for s in seconds:
        n = round(s * SAMPLE_RATE)
        x = np.zeros(n, np.float64)
        pos = int(rng.integers(1600, 4800))
        while pos < n - 1600:
            length = int(rng.integers(1600, 4800))  # 0.1–0.3 s syllables
            t = np.arange(length) / SAMPLE_RATE
            f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
            phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
            formants = rng.uniform(300, 900), rng.uniform(900, 2600)
            voiced = sum(np.sin(h * phase) * sum(np.exp(-((h * f0 - f) / 120) ** 2) for f in formants)
                         for h in range(1, 30))
            seg = voiced * np.hanning(length)
            end = min(n, pos + length)
            x[pos:end] += seg[: end - pos]
            pos = end + int(rng.integers(400, 4000))
        x = 0.5 * x / max(float(np.abs(x).max()), 1e-9) + rng.normal(0, 0.003, n)
        clips.append(x.astype(np.float32))
    return clips


def runtimes(bundle: Bundle) -> list[str]:
    """The runtimes that can check this bundle's files here: onnx; coreml-reference for the Core ML files (and
    coreml itself on a Mac)."""
    names = [n for n in ("onnx", "coreml-reference") if files_of(n) in bundle.backends]
    if platform.system() == "Darwin" and "coreml" in bundle.backends:
        names.append("coreml")
    return names


def check_bundle(path: Path, clips: list[Audio], language: str) -> dict[str, list[Comparison]]:
    """Each runtime of the bundle against the first (ONNX when the bundle has it) on every clip."""
    bundle = load_bundle(path)
    names = runtimes(bundle)
    if not names:
        raise DaemonError(f"{path}: no backend this machine can run ({', '.join(sorted(bundle.backends))})")
    language = language if language in bundle.languages else next(iter(bundle.languages))
    options = DecodeOptions(language=language)
    ref = load_transcriber(bundle, names[0], dither=0.0)
    results: dict[str, list[Comparison]] = {}
    for name in names:
        tr = ref if name == names[0] else load_transcriber(bundle, name, dither=0.0)
        rows = []
        for x in clips:
            prompt, res = ref.transcribe_window(x, options)
            eos = res.stop_reason == "eos"
            ref_lp = forced_logprobs(ref, x, prompt, list(res.tokens), eos)
            rows.append(compare(tr, x, options, prompt, list(res.tokens), ref_lp, eos))
        results[name] = rows
    return results


def report(results: dict[str, list[Comparison]], audio_seconds: float) -> list[str]:
    """One line per runtime: token agreement, largest log-prob drift, speed."""
    ref = next(iter(results))
    lines = [f"reference: {ref}; {len(results[ref])} clips, {audio_seconds:.1f} s of audio"]
    for name, rows in results.items():
        same = sum(r.same_tokens for r in rows)
        agree = sum(r.agreeing for r in rows) / max(1, sum(r.n_ref for r in rows))
        per_s = sum(r.seconds for r in rows) / audio_seconds
        lines.append(f"{name:<17} {same}/{len(rows)} clips with identical tokens, {agree:.1%} of tokens before "
                     f"the first difference, max |Δ log-prob| {max(r.drift for r in rows):.2e}, "
                     f"{per_s:.2f} s per s of audio")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m exporter check", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bundle folder (with manifest.json)")
    ap.add_argument("--seconds", default=",".join(f"{s:g}" for s in CLIP_SECONDS),
                    help="lengths of the synthetic clips, comma-separated (≤ 35)")
    ap.add_argument("--language", default="en", help="decoder prompt language (default en, or the bundle's first)")
    ap.add_argument("--max-drift", type=float,
                    help="exit 1 when a backend's largest |Δ log-prob| against the reference exceeds this")
    args = ap.parse_args(argv)
    try:
        seconds = tuple(float(s) for s in args.seconds.split(",") if s.strip())
        if not seconds or not all(0.2 <= s <= 35 for s in seconds):
            raise ValueError
    except ValueError:
        print(f"error: --seconds takes clip lengths of 0.2–35 s, comma-separated (got {args.seconds!r})",
              file=sys.stderr)
        return 2
    clips = synthetic_clips(seconds)
    try:
        results = check_bundle(args.bundle, clips, args.language)
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report(results, sum(seconds)):
        print(line)
    worst = max(r.drift for rows in results.values() for r in rows)
    return 1 if args.max_drift is not None and worst > args.max_drift else 0


if __name__ == "__main__":
    sys.exit(main())
