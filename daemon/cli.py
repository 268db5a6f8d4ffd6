"""cohere-transcribe (python -m daemon) serve | transcribe | devices | export-transcript — argparse → options → run.

Errors the user can fix are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from daemon.errors import DaemonError
from daemon.model.locate import DEFAULT_MODEL


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
    t.add_argument("--vad", action="store_true",
                   help="transcribe only speech, one segment per utterance, cut at pauses as `serve` does "
                        "(webrtcvad); without it: ≤ 35 s windows of everything")
    t.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    _serve_parser(sub)
    sub.add_parser("devices", help="list audio input devices")
    e = sub.add_parser("export-transcript", help="convert a JSONL transcript to srt, vtt or text")
    e.add_argument("file", metavar="FILE.jsonl")
    e.add_argument("--format", choices=["srt", "vtt", "text"], default="srt")
    return ap


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="listen to a source and stream live captions to websocket clients",
                       description="Every flag is also a key of the --config TOML file (flags win).")
    a = s.add_argument
    a("--config", help="TOML file with any of these options (e.g. end_silence_ms = 800)")
    a("--model", help="bundle folder (default: the bundled demo model)")
    a("--backend", choices=["onnx", "coreml"], help="runtime (default: coreml on macOS when available, else onnx)")
    a("--source", help="mic (default), an audio file, or - for raw s16le mono PCM on stdin")
    a("--device", help="microphone name (substring) or index; see `python -m daemon devices`")
    a("--fast", action="store_const", const=True, help="file source: as fast as possible, not real time")
    a("--rate", type=int, help="sample rate of stdin PCM (default 16000)")
    a("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    a("--port", type=int, help="port for websockets and GET /health (default 8765)")
    a("--language", help="language code (default en)")
    a("--no-punctuation", dest="punctuation", action="store_const", const=False,
      help="lower-case captions without punctuation")
    a("--max-new-tokens", type=int, help="token budget per segment")
    a("--dither", type=float, help="input dither (default: the bundle's 1e-5; 0 turns it off)")
    a("--vad-aggressiveness", type=int, choices=range(4), help="webrtcvad mode 0-3 (default 3)")
    a("--pre-roll-ms", type=int, help="audio kept before speech onset (default 300)")
    a("--end-silence-ms", type=int, help="silence that ends a segment (default 600)")
    a("--min-speech-ms", type=int, help="segments with less speech are dropped (default 250)")
    a("--min-level-dbfs", type=float, help="frames quieter than this are not speech (default -45)")
    a("--partial-interval-ms", type=int, help="re-decode the open segment this often (default 500)")
    a("--transcripts", help="folder for live JSONL transcripts (one line per final)")
    a("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")


def _serve(args: argparse.Namespace) -> int:
    from daemon.live.app import run_daemon
    from daemon.live.config import build_config

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return run_daemon(build_config(cli, args.config))


def _devices() -> int:
    from daemon.live.capture import list_devices

    lines = list_devices()
    print("\n".join(lines) if lines else "no audio input devices found")
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from daemon.audio.files import load_audio
    from daemon.audio.vad import VadOptions, speech_spans
    from daemon.model.decode import DecodeOptions
    from daemon.model.transcriber import load_transcriber
    from daemon.output.formats import render

    tr = load_transcriber(args.model, args.backend, args.dither)
    options = DecodeOptions(language=args.language, punctuation=not args.no_punctuation,
                            max_new_tokens=args.max_new_tokens, ignore_eos=args.ignore_eos,
                            eos_logit_bias=args.eos_bias)
    vad = VadOptions(sample_rate=tr.sample_rate) if args.vad else None
    for f in args.files:
        samples = load_audio(f, tr.sample_rate)
        spans = speech_spans(samples, vad) if vad is not None else None
        sys.stdout.write(render(tr.transcribe(samples, options, spans=spans), args.format, source=f))
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "transcribe":
            return _transcribe(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "devices":
            return _devices()
        if args.command == "export-transcript":
            from daemon.output.transcripts import export_transcript

            sys.stdout.write(export_transcript(args.file, args.format))
            return 0
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1

