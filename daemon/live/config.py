"""DaemonConfig: every `serve` option, from defaults ← a TOML file (`--config`) ← command-line flags.

Each field is both a flag (`--end-silence-ms 600`) and a TOML key (`end_silence_ms = 600`, dashes also
accepted); the drift-guard test keeps the two in step. Stage options (VadOptions, DecodeOptions) are derived
from it, never stored twice.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError
from daemon.model.locate import DEFAULT_MODEL


@dataclass(frozen=True)
class DaemonConfig:
    """All options of `python -m daemon serve` (see the flag help for each)."""

    # model
    model: str = str(DEFAULT_MODEL)
    backend: str | None = None  # onnx | coreml; None: coreml on macOS when the bundle has it, else onnx
    language: str = "en"
    punctuation: bool = True
    max_new_tokens: int | None = None
    dither: float | None = None  # None: the bundle's (1e-5); 0 turns it off
    # audio source
    source: str = "mic"  # mic | a file path | - (raw s16le mono PCM on stdin)
    device: str | None = None  # microphone name (substring) or index
    fast: bool = False  # file source: as fast as possible instead of real time
    rate: int = 16000  # stdin sample rate
    # voice activity detection
    vad_aggressiveness: int = 3
    pre_roll_ms: int = 300
    end_silence_ms: int = 600
    min_speech_ms: int = 250
    min_level_dbfs: float = -45.0
    # captions
    partial_interval_ms: int = 500
    # server
    host: str = "127.0.0.1"
    port: int = 8765
    transcripts: str | None = None  # folder for live JSONL transcripts
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        checks = [
            (self.backend in (None, "onnx", "coreml"), f"backend must be onnx or coreml, not {self.backend!r}"),
            (0 <= self.vad_aggressiveness <= 3, "vad_aggressiveness must be 0..3"),
            (self.pre_roll_ms >= 0, "pre_roll_ms must be ≥ 0"),
            (self.end_silence_ms >= 30, "end_silence_ms must be ≥ 30"),
            (self.min_speech_ms >= 0, "min_speech_ms must be ≥ 0"),
            (self.partial_interval_ms >= 50, "partial_interval_ms must be ≥ 50"),
            (0 <= self.port <= 65535, "port must be 0..65535"),
            (self.rate >= 8000, "rate must be ≥ 8000 Hz"),
            (self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level: DEBUG|INFO|WARNING|ERROR"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def vad_options(self):  # -> VadOptions
        from daemon.audio.vad import VadOptions

        return VadOptions(aggressiveness=self.vad_aggressiveness, pre_roll_ms=self.pre_roll_ms,
                          end_silence_ms=self.end_silence_ms, min_speech_ms=self.min_speech_ms,
                          min_level_dbfs=self.min_level_dbfs)

    def decode_options(self):  # -> DecodeOptions
        from daemon.model.decode import DecodeOptions

        return DecodeOptions(language=self.language, punctuation=self.punctuation,
                             max_new_tokens=self.max_new_tokens, loop_guard=True)


FIELDS = {f.name: f for f in fields(DaemonConfig)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys are DaemonConfig fields (dashes or underscores)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        out[name] = value
    return out


def build_config(cli: dict[str, Any], config_file: str | None = None) -> DaemonConfig:
    """Defaults ← TOML file ← flags given on the command line (None means "not given")."""
    values = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in cli.items() if v is not None and k in FIELDS})
    for name, value in values.items():
        _check_type(name, value)
    try:
        return dataclasses.replace(DaemonConfig(), **values)
    except TypeError as e:
        raise ConfigError(str(e)) from e


def _check_type(name: str, value: Any) -> None:
    default = FIELDS[name].default
    kinds: tuple[type, ...] = (type(default),) if default is not None else (str, int, float)
    if isinstance(default, float):
        kinds = (int, float)
    if (isinstance(value, bool) and not isinstance(default, bool)) or not isinstance(value, kinds):
        raise ConfigError(f"{name} must be {kinds[0].__name__}, not {type(value).__name__} ({value!r})")
