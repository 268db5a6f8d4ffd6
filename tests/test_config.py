"""Drift guards: every `serve` flag is a DaemonConfig field and a TOML key, and back; values are checked."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from daemon.cli import _parser
from daemon.errors import ConfigError
from daemon.live.config import DaemonConfig, build_config, load_toml


def serve_flags() -> dict[str, argparse.Action]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    return {a.dest: a for a in serve._actions if a.dest not in ("help", "config")}


def test_flags_and_fields_match() -> None:
    assert set(serve_flags()) == set(DaemonConfig.__dataclass_fields__)


def test_flags_default_to_none_so_toml_can_set_them() -> None:
    assert all(a.default is None for a in serve_flags().values())


def test_toml_then_flags(tmp_path: Path) -> None:
    p = tmp_path / "daemon.toml"
    p.write_text('language = "es"\nend-silence-ms = 900\npunctuation = false\nport = 9000\n')
    c = build_config({"port": 9100, "language": None}, str(p))
    assert (c.language, c.end_silence_ms, c.punctuation, c.port) == ("es", 900, False, 9100)
    parsed = _parser().parse_args(["serve", "--no-punctuation", "--fast", "--end-silence-ms", "700"])
    c = build_config({k: v for k, v in vars(parsed).items() if k not in ("command", "config")})
    assert (c.punctuation, c.fast, c.end_silence_ms, c.language) == (False, True, 700, "en")


@pytest.mark.parametrize("text,match", [
    ("bogus = 1", "unknown key"),
    ("port = 'x'", "port must be int"),
    ("end_silence_ms = 5", "end_silence_ms must be"),
    ("language = [", "not valid TOML"),
    ("fast = 1", "fast must be bool"),
])
def test_bad_toml(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config({}, str(p))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
