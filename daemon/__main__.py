"""python -m daemon transcribe FILE... — argparse → options → run; errors are one line, no traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DaemonError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m daemon", description="Live captions with Cohere Transcribe.")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="transcribe audio files")
    t.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format soundfile reads)")
    t.add_argument("--model", default=str(DEFAULT_MODEL), help="bundle folder (default: the bundled demo model)")
    t.add_argument("--backend", choices=["onnx", "coreml"], default=None,
                   help="runtime (default: coreml on macOS when the bundle has it, else onnx)")
    t.add_argument("--language", default="en", help="language code, e.g. en, es, fr (default: en)")
    t.add_argument("--no-punctuation", action="store_true", help="lower-case text without punctuation")
    t.add_argument("--max-new-tokens", type=int, default=None, help="token budget per 35 s window")
    t.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-text (benchmarks)")
    t.add_argument("--eos-bias", type=float, default=None, help="added to the end-of-text logit (default 0)")
    t.add_argument("--dither", type=float, default=None,
                   help="dither std added before features (default: the bundle's, 1e-5; 0 turns it off)")
    t.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    return ap


def _transcribe(args: argparse.Namespace) -> int:
    from .audio import load_audio
    from .decode import DecodeOptions
    from .formats import render
    from .transcribe import load_transcriber

    tr = load_transcriber(args.model, args.backend, args.dither)
    options = DecodeOptions(language=args.language, punctuation=not args.no_punctuation,
                            max_new_tokens=args.max_new_tokens, ignore_eos=args.ignore_eos,
                            eos_logit_bias=args.eos_bias)
    for f in args.files:
        samples = load_audio(f, tr.sample_rate)
        sys.stdout.write(render(tr.transcribe(samples, options), args.format, source=f))
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "transcribe":
            return _transcribe(args)
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
