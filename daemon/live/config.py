"""DaemonConfig: every `serve` option, from defaults ← a TOML file (`--config`) ← command-line flags.

Each field is both a flag (`--end-silence-ms 600`) and a TOML key (`end_silence_ms = 600`, dashes also
accepted); the drift-guard test keeps the two in step. The VAD fields take their defaults from VadOptions, the
one home of those numbers. A DaemonConfig is checked whole when it is made: value types against the field
annotations, ranges, and the stage options (VadOptions, DecodeOptions) built once, so a bad value is a
ConfigError before anything is loaded.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.audio import SAMPLE_RATE
from daemon.audio.files import MAX_RATE, MIN_RATE
from daemon.audio.vad import VadOptions
from daemon.errors import ConfigError
from daemon.live.access import TOKEN_ENV, is_loopback, origins_problem, token_problem
from daemon.model.backends import BACKENDS
from daemon.model.backends.coreml import COMPUTE_UNITS
from daemon.model.budget import max_segment_seconds, split_search_seconds
from daemon.model.decode import DecodeOptions
from daemon.model.locate import default_model

if TYPE_CHECKING:
    from daemon.model.bundle import Bundle

_VAD = VadOptions()  # the VAD defaults
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _default_model() -> str:
    return str(default_model())


@dataclass(frozen=True)
class DaemonConfig:
    """All options of `cohere-transcribe serve` (see the flag help for each)."""

    # model
    model: str = field(default_factory=_default_model)  # resolved when made: daemon.model.locate
    backend: str | None = None  # onnx | coreml; None: coreml on macOS when the bundle has it, else onnx
    language: str = "en"
    punctuation: bool = True
    max_new_tokens: int | None = None  # None: the bundle's
    dither: float | None = None  # None: the bundle's (1e-5); 0 turns it off
    verify: bool = False  # checksum every file of the selected backend now, even files verified before
    compute_units: str = "all"  # coreml: all | cpu_and_ne | cpu_and_gpu | cpu_only
    # audio source
    source: str = "mic"  # mic | a file path | - (raw s16le mono PCM on stdin)
    device: str | None = None  # microphone name (substring) or index
    fast: bool = False  # file source: as fast as possible instead of real time
    rate: int = SAMPLE_RATE  # stdin sample rate
    # voice activity detection
    vad_aggressiveness: int = _VAD.aggressiveness
    pre_roll_ms: int = _VAD.pre_roll_ms
    end_silence_ms: int = _VAD.end_silence_ms
    min_speech_ms: int = _VAD.min_speech_ms
    min_level_dbfs: float = _VAD.min_level_dbfs
    # captions
    partial_interval_ms: int = 500
    # server
    host: str = "127.0.0.1"
    token: str | None = None  # required by every client when set; needed to bind anything but loopback
    allowed_origins: str | None = None  # web pages (origins, comma-separated) allowed besides the daemon's own
    port: int = 8765
    transcripts: str | None = None  # folder for live JSONL transcripts
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for f in fields(self):
            check_type(f.name, getattr(self, f.name))
        checks = [
            (self.backend is None or self.backend in BACKENDS,
             f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"),
            (self.compute_units in COMPUTE_UNITS,
             f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, not {self.compute_units!r}"),
            (self.partial_interval_ms >= 50, f"partial_interval_ms must be ≥ 50, not {self.partial_interval_ms}"),
            (0 <= self.port <= 65535, f"port must be 0..65535, not {self.port}"),
            (MIN_RATE <= self.rate <= MAX_RATE, f"rate must be {MIN_RATE}..{MAX_RATE} Hz, not {self.rate}"),
            (self.log_level.upper() in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                                                   f"not {self.log_level!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self._check_access()
        self.vad_options()  # the stages' own checks are the only copy of their rules
        self.decode_options()

    def _check_access(self) -> None:
        """A token that can travel in a header; none at all is only allowed on loopback."""
        if self.token is not None and (problem := token_problem(self.token)):
            raise ConfigError(problem)
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(f"listening on {self.host} (not loopback) needs a token: --token, token = in the "
                              f"config file, or {TOKEN_ENV}")
        if problem := origins_problem(self.allowed_origins):
            raise ConfigError(problem)

    def vad_options(self, bundle: Bundle | None = None) -> VadOptions:
        """The segmenter's options; with a bundle, its sample rate and segment limits replace the defaults.

        Raises:
            ConfigError: for values VadOptions rejects (with a bundle: a pre-roll longer than its window, say).
        """
        limits = window_limits(bundle) if bundle is not None else {}
        try:
            return VadOptions(aggressiveness=self.vad_aggressiveness, pre_roll_ms=self.pre_roll_ms,
                              end_silence_ms=self.end_silence_ms, min_speech_ms=self.min_speech_ms,
                              min_level_dbfs=self.min_level_dbfs, **limits)
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def decode_options(self) -> DecodeOptions:
        try:
            return DecodeOptions(language=self.language, punctuation=self.punctuation,
                                 max_new_tokens=self.max_new_tokens, loop_guard=True)
        except ValueError as e:
            raise ConfigError(str(e)) from e


def window_limits(bundle: Bundle) -> dict[str, Any]:
    """The VadOptions fields a bundle decides: its sample rate and the longest segment, its window (≤ 35 s, cut
    like the reference) or less where its token budget holds less speech (daemon.model.budget: 14 s for
    FluidInference's 98 tokens; --max-new-tokens limits the tokens, not the cut)."""
    segment_s = max_segment_seconds(bundle.max_new_tokens, bundle.max_window_seconds)
    return {"sample_rate": bundle.features.sample_rate, "max_segment_s": segment_s,
            "split_search_s": split_search_seconds(bundle.split_search_seconds, segment_s),
            "split_block_samples": bundle.split_window_samples}


FIELDS = {f.name: f for f in fields(DaemonConfig)}
HINTS = typing.get_type_hints(DaemonConfig)


def field_default(name: str) -> Any:
    """A field's default as written in the class (None for `model`, whose default is found when run)."""
    f = FIELDS[name]
    return None if f.default is MISSING else f.default


def check_type(name: str, value: Any) -> None:
    """Raise ConfigError unless `value` fits the annotation of field `name` (bool is not an int here)."""
    hint = HINTS[name]
    optional = _is_union(hint)  # every union here is `X | None`
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if optional else [hint]
    if (value is None and optional) or any(_fits(value, k) for k in kinds):
        return
    expected = " or ".join(k.__name__ for k in kinds)
    hint_text = "; write it in quotes" if kinds == [str] and isinstance(value, (int, float)) else ""
    raise ConfigError(f"{name} must be {expected}, not {type(value).__name__} ({value!r}){hint_text}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _fits(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys are DaemonConfig fields (dashes or underscores)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except IsADirectoryError as e:
        raise ConfigError(f"config file {path} is a folder, not a TOML file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (is it a TOML file?)") from e
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from e
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
    """Defaults ← TOML file ← flags given on the command line (None means "not given"); the token may also
    come from the environment (COHERE_TRANSCRIBE_TOKEN), over the file, under the flag.

    Raises:
        ConfigError: for an unreadable file, an unknown key, a value of the wrong type or out of range.
    """
    values = load_toml(config_file) if config_file else {}
    values.update({k: v for k, v in cli.items() if v is not None and k in FIELDS})
    if cli.get("token") is None and os.environ.get(TOKEN_ENV):
        values["token"] = os.environ[TOKEN_ENV]  # the flag wins over the environment, which wins over the file
    for name, value in values.items():
        check_type(name, value)  # before the default model is looked for, so the first mistake is named
    return DaemonConfig(**values)
