"""python -m exporter --checkpoint HUB_ID_OR_DIR --out BUNDLE [--backends onnx,coreml] [--precision ...]

python -m exporter --contract fluidaudio-v1|fluidaudio-v2 --checkpoint ... --out DIR: FluidInference's contract
(exporter/fluidaudio.py).

python -m exporter check BUNDLE: every backend of a bundle against ONNX on synthetic clips (exporter/check.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from daemon import __version__

from .options import ExportOptions

if TYPE_CHECKING:
    from .load import Checkpoint


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["check"]:
        from .check import main as check

        return check(args_in[1:])
    called = Path(sys.argv[0]).name  # cohere-transcribe-export, or __main__.py under python -m
    ap = argparse.ArgumentParser(prog="python -m exporter" if called.endswith(".py") else called,
                                 description="Export a Cohere Transcribe checkpoint to a daemon bundle.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("--checkpoint", required=True,
                    help="hub id (e.g. CohereLabs/cohere-transcribe-03-2026, needs your login) or a local "
                         "save_pretrained folder that also holds tokenizer.model")
    ap.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    ap.add_argument("--contract", default="cohere", choices=["cohere", "fluidaudio-v1", "fluidaudio-v2"],
                    help="cohere (default): a daemon bundle; fluidaudio-v1|v2: Core ML files in FluidInference's "
                         "published contract and names (what FluidAudio and `--model DIR` load; exporter/fluidaudio.py)")
    ap.add_argument("--backends", help="comma-separated: onnx, coreml (default: both)")
    ap.add_argument("--precision", choices=["hybrid", "fp16", "fp32"],
                    help="Core ML precision: hybrid = INT8 encoder weights + FP16 decoder (default; fluidaudio: "
                         "fp16, as the published files)")
    ap.add_argument("--onnx-precision", default="fp32", choices=["fp32", "int8"],
                    help="ONNX precision: fp32 (default), or int8 = the decoder's and the encoder feed-forward "
                         "layers' weights INT8 with dynamically quantized activations (on CPUs: a decoder step "
                         "3x and a 35 s window 2x faster, half the bytes)")
    ap.add_argument("--buckets",
                    help="encoder input frame counts, comma-separated; the largest must be the full window "
                         "(3500 frames for 35 s at hop 160; default: that one bucket)")
    ap.add_argument("--cache-capacity", type=int,
                    help="decoder self-attention cache positions (default: 266, or the decoder's positions if "
                         "fewer)")
    ap.add_argument("--max-new-tokens", type=int,
                    help="default token budget per window (default: what the cache leaves after the prompt)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.contract != "cohere":
        _refuse_fixed_options(args, ap)
    try:
        path = _bundle(args) if args.contract == "cohere" else _fluidaudio(args)
    except ModuleNotFoundError as e:  # the runtime's install lacks the export toolchain
        print(f"error: the exporter needs {e.name}: pip install 'cohere-transcribe-daemon[export]'", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _bundle(args: argparse.Namespace) -> Path:
    """The default contract: a bundle (manifest.json + the chosen backends' files) in --out."""
    backends = args.backends or "onnx,coreml"
    opts = ExportOptions(backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
                         precision=args.precision or "hybrid", onnx_precision=args.onnx_precision,
                         buckets=_buckets(args.buckets),
                         cache_capacity=args.cache_capacity, max_new_tokens=args.max_new_tokens)
    from .export import export_bundle

    return export_bundle(_load(args.checkpoint), args.out, opts)


def _load(checkpoint: str) -> Checkpoint:
    from .load import load_checkpoint

    print(f"[export] loading {checkpoint} with transformers ...", file=sys.stderr)
    return load_checkpoint(checkpoint)


def _refuse_fixed_options(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """--contract fluidaudio-v1|v2 fixes files, shapes and the 108-slot cache: the bundle options are errors."""
    fixed = {"--backends": args.backends, "--buckets": args.buckets, "--cache-capacity": args.cache_capacity,
             "--max-new-tokens": args.max_new_tokens,
             "--onnx-precision": None if args.onnx_precision == "fp32" else args.onnx_precision}
    given = [flag for flag, value in fixed.items() if value is not None]
    if given:
        ap.error(f"{', '.join(given)}: not with --contract {args.contract} (its files, shapes and 108-slot cache "
                 "are fixed)")


def _fluidaudio(args: argparse.Namespace) -> Path:
    """--contract fluidaudio-v1|v2: the encoder, that decoder, vocab.json and tokenizer.model in --out."""
    from .fluidaudio import DEFAULT_PRECISION, export_fluidaudio

    return export_fluidaudio(_load(args.checkpoint), args.out, args.contract,
                             args.precision or DEFAULT_PRECISION)


def _buckets(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--buckets takes comma-separated frame counts (got {text!r})") from None


if __name__ == "__main__":
    sys.exit(main())
