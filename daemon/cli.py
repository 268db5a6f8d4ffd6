"""cohere-transcribe (python -m daemon) serve | transcribe | agent | fetch | devices | export-transcript — argparse → run.

Errors the user can fix are one line on stderr and exit code 2, never a traceback. The flags `transcribe` and
`serve` share are defined once (`_model_flags`), and every default shown in the help is read from DaemonConfig,
whose VAD defaults are VadOptions'.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from daemon.errors import DaemonError
from daemon.live.config import field_default
from daemon.model.backends import BACKENDS
from daemon.model.backends.coreml import COMPUTE_UNITS
from daemon.model.locate import ENV_VAR

MODEL_HELP = (f"bundle folder (default: ${ENV_VAR}, else the demo model: the checkout's models/demo, the one "
              f"installed with the package, or ~/.local/share/cohere-transcribe/models/demo)")


def _prog() -> str:
    name = Path(sys.argv[0]).name
    return "python -m daemon" if name.endswith(".py") or not name else name


def _parser() -> argparse.ArgumentParser:
    from daemon import __version__
    from daemon.output.formats import FORMATS

    ap = argparse.ArgumentParser(prog=_prog(), description="Live captions with Cohere Transcribe.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="transcribe audio files")
    t.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format soundfile reads)")
    _model_flags(t, serve=False)
    t.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-text (benchmarks)")
    t.add_argument("--eos-bias", type=float, default=None, help="added to the end-of-text logit (default 0)")
    t.add_argument("--vad", action="store_true",
                   help="transcribe only speech, one segment per utterance, cut at pauses as `serve` does "
                        "(webrtcvad); without it: ≤ 35 s windows of everything (shorter where the model's "
                        "token budget is small)")
    t.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    _serve_parser(sub)
    _agent_parser(sub)
    _fetch_parser(sub)
    sub.add_parser("devices", help="list audio input devices")
    e = sub.add_parser("export-transcript", help="convert a JSONL transcript to srt, vtt or text")
    e.add_argument("file", metavar="FILE.jsonl")
    e.add_argument("--format", choices=[f for f in FORMATS if f != "json"], default="srt",
                   help="output format (default: srt)")
    return ap


def _with_default(text: str, name: str) -> str:
    """A help string ending in the field's default, read from DaemonConfig (None: the text says it; an on/off
    flag's default is that it is off)."""
    default = field_default(name)
    return text if default is None or isinstance(default, bool) else f"{text} (default: {default})"


def _model_flags(p: argparse.ArgumentParser, serve: bool) -> None:
    """The flags of `transcribe` and `serve`: model, runtime, decoding. `serve` leaves them None so its TOML
    file can set them; `transcribe` takes DaemonConfig's defaults."""

    def a(*flags: str, dest: str, help: str, **kw: Any) -> None:
        p.add_argument(*flags, dest=dest, default=None if serve else field_default(dest),
                       help=_with_default(help, dest), **kw)

    a("--model", dest="model", help=MODEL_HELP)
    a("--backend", dest="backend", choices=BACKENDS,
      help="runtime (default: coreml on macOS when the bundle has it, else onnx)")
    a("--compute-units", dest="compute_units", choices=list(COMPUTE_UNITS),
      help="coreml: the processors Core ML may use; all includes the Neural Engine (docs/macos.md)")
    a("--language", dest="language", help="language code, e.g. en, es, fr")
    a("--no-punctuation", dest="punctuation", action="store_const", const=False,
      help="lower-case text without punctuation")
    a("--max-new-tokens", dest="max_new_tokens", type=int,
      help="token budget per window or segment (default: the bundle's)")
    a("--dither", dest="dither", type=float,
      help="dither std added before features (default: the bundle's, 1e-5; 0 turns it off)")
    a("--verify", dest="verify", action="store_const", const=True,
      help="verify every file's checksum now, even files verified before")


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="listen to a source and stream live captions to websocket clients",
                       description="Every flag is also a key of the --config TOML file (flags win).")
    s.add_argument("--config", help="TOML file with any of these options (e.g. end_silence_ms = 800)")
    _serve_flags(s)


def _serve_flags(s: argparse.ArgumentParser) -> None:
    """The options of `serve` (also those of `agent install`, which writes them into its config file)."""

    def a(flag: str, help: str, **kw: Any) -> None:
        dest = flag.removeprefix("--").replace("-", "_")
        s.add_argument(flag, help=_with_default(help, dest), **kw)

    _model_flags(s, serve=True)
    a("--source", "mic, an audio file, or - for raw s16le mono PCM on stdin")
    a("--device", "microphone name (substring) or index; see the `devices` command")
    a("--fast", "file source: as fast as possible, not real time", action="store_const", const=True)
    a("--rate", "sample rate of stdin PCM", type=int)
    a("--host", "address to listen on; 127.0.0.1 is this machine only")
    a("--port", "port for websockets and GET /health", type=int)
    a("--token", "secret every client must send (needed off loopback); prefer the COHERE_TRANSCRIBE_TOKEN "
      "environment variable or the config file, which other users cannot see in the process list")
    a("--allowed-origins", "web pages allowed to connect besides the daemon's own, comma-separated "
      "(e.g. https://captions.example)")
    a("--vad-aggressiveness", "webrtcvad mode 0-3", type=int, choices=range(4))
    a("--pre-roll-ms", "audio kept before speech onset", type=int)
    a("--end-silence-ms", "silence that ends a segment", type=int)
    a("--min-speech-ms", "segments with less speech are dropped", type=int)
    a("--min-level-dbfs", "frames quieter than this are not speech", type=float)
    a("--partial-interval-ms", "re-decode the open segment this often", type=int)
    a("--transcripts", "folder for live JSONL transcripts (one line per final)")
    a("--log-level", "DEBUG, INFO, WARNING or ERROR")


def _agent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("agent", help="run `serve` in the background: a launchd LaunchAgent (macOS) or a systemd "
                                     "user unit (Linux)",
                       description="Install, remove or inspect the background service that runs `serve --config "
                                   "FILE` at login and restarts it when it exits (docs/macos.md).")
    actions = g.add_subparsers(dest="action", required=True)
    i = actions.add_parser("install", help="write the service and start it (again, if it changed)",
                           description="Without --config, the serve options given here are written to the default "
                                       "config file (macOS: ~/Library/Application Support/cohere-transcribe/"
                                       "daemon.toml; Linux: ~/.config/cohere-transcribe/daemon.toml), which is "
                                       "kept as it is when none are given.")
    i.add_argument("--config", help="an existing TOML config file for the service (instead of serve options)")
    _serve_flags(i)
    actions.add_parser("restart", help="restart the service, e.g. after an edit of its config file")
    actions.add_parser("uninstall", help="stop the service and remove it (the config file stays)")
    actions.add_parser("status", help="whether the service runs, and the daemon's /health (exit 3: not running)")


def _agent(args: argparse.Namespace) -> int:
    from daemon.service import agent
    from daemon.service.host import Host

    host = Host.current()
    manager = agent.manager_for(host)
    if args.action == "install":
        flags = {k: v for k, v in vars(args).items() if k not in ("command", "action", "config")}
        lines = agent.install(host, manager, args.config, flags, _prog())
    elif args.action == "uninstall":
        lines = agent.uninstall(manager)
    elif args.action == "restart":
        lines = agent.restart(manager)
    else:
        code, lines = agent.status(host, manager)
        print("\n".join(lines))
        return code
    print("\n".join(lines))
    return 0


def _fetch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from daemon.model.fetch import MODELS, default_dir

    f = sub.add_parser("fetch", help="download a published Core ML model (licence shown first), verify it, and "
                                     "print the --model to use",
                       description="Downloads with huggingface_hub (HF_ENDPOINT, HF_TOKEN apply); a rerun resumes. "
                                   "Models: " + "; ".join(f"{k}: {v.repo_id}" for k, v in MODELS.items()))
    f.add_argument("name", choices=list(MODELS), help="which model")
    f.add_argument("--dir", type=Path, help=f"folder for the files (default: {default_dir('NAME')})")
    f.add_argument("--accept-license", action="store_true",
                   help="accept the licence shown without the prompt (needed without a terminal)")
    f.add_argument("--revision", help="branch, tag or commit of the repository (default: main)")


def _fetch(args: argparse.Namespace) -> int:
    from daemon.model.fetch import fetch, usage_lines

    try:
        folder = fetch(args.name, args.dir, args.accept_license, args.revision)
    except KeyboardInterrupt:  # at once: files still downloading in huggingface_hub's threads are dropped
        print("\ninterrupted: files finished so far are kept; run the same command again to resume", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    print("\n".join(usage_lines(folder, _prog())))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from daemon.live.app import run_daemon
    from daemon.live.config import build_config

    cli = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return run_daemon(build_config(cli, args.config))


def _devices(args: argparse.Namespace) -> int:
    from daemon.live.capture import list_devices

    lines = list_devices()
    print("\n".join(lines) if lines else "no audio input devices found")
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from daemon.audio.files import load_audio
    from daemon.audio.vad import VadOptions, speech_spans
    from daemon.live.config import window_limits
    from daemon.model.decode import DecodeOptions
    from daemon.model.locate import default_model
    from daemon.model.transcriber import load_transcriber
    from daemon.output.formats import render

    tr = load_transcriber(args.model or default_model(), args.backend, args.dither, verify=args.verify,
                          compute_units=args.compute_units)
    options = DecodeOptions(language=args.language, punctuation=args.punctuation,
                            max_new_tokens=args.max_new_tokens, ignore_eos=args.ignore_eos,
                            eos_logit_bias=args.eos_bias)
    vad = VadOptions(**window_limits(tr.bundle)) if args.vad else None  # serve's segmenter, this model's window
    for f in args.files:
        samples = load_audio(f, tr.sample_rate)
        spans = speech_spans(samples, vad) if vad is not None else None
        sys.stdout.write(render(tr.transcribe(samples, options, spans=spans), args.format, source=f))
        sys.stdout.flush()
    return 0


def _export_transcript(args: argparse.Namespace) -> int:
    from daemon.output.transcripts import export_transcript

    sys.stdout.write(export_transcript(args.file, args.format))
    return 0


COMMANDS = {"transcribe": _transcribe, "serve": _serve, "agent": _agent, "fetch": _fetch, "devices": _devices,
            "export-transcript": _export_transcript}


def main(argv: list[str] | None = None) -> int:
    """Run one command; the return value is the exit status (0 ok, 2 a mistake to fix, 130 interrupted)."""
    args = _parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
