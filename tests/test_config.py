"""Drift guards and checks of DaemonConfig: every `serve` flag is a field and a TOML key, and back; each default
has one home (VadOptions for the VAD, DaemonConfig for the rest) and the help text shows it; every bad value is
a ConfigError naming the key, before anything is loaded."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.audio.vad import VadOptions
from daemon.cli import _parser
from daemon.errors import ConfigError
from daemon.live.config import FIELDS, HINTS, DaemonConfig, build_config, field_default, load_toml
from daemon.model.backends import BACKENDS

SHARED = ("model", "backend", "language", "punctuation", "max_new_tokens", "dither", "verify")
VAD_FIELDS = {"vad_aggressiveness": "aggressiveness", "pre_roll_ms": "pre_roll_ms",
              "end_silence_ms": "end_silence_ms", "min_speech_ms": "min_speech_ms",
              "min_level_dbfs": "min_level_dbfs"}


def flags(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions if a.dest not in ("help", "config")}


def serve_flags() -> dict[str, argparse.Action]:
    return flags("serve")


def test_flags_and_fields_match() -> None:
    assert set(serve_flags()) == set(DaemonConfig.__dataclass_fields__)


def test_flags_default_to_none_so_toml_can_set_them() -> None:
    assert all(a.default is None for a in serve_flags().values())


def test_vad_defaults_have_one_home() -> None:
    """DaemonConfig's VAD fields are VadOptions' defaults, and the config builds exactly those options."""
    vad = VadOptions()
    for name, vad_name in VAD_FIELDS.items():
        assert field_default(name) == getattr(vad, vad_name), name
    assert DaemonConfig(model="m").vad_options() == vad


def test_help_shows_the_dataclass_defaults() -> None:
    """Every default the help states is the field's, and every field with a plain default states it."""
    for command in ("serve", "transcribe"):
        for dest, action in flags(command).items():
            if dest not in FIELDS:
                continue
            shown = re.findall(r"\(default:? ([^)]*)\)", action.help or "")
            default = field_default(dest)
            if default is not None and not isinstance(default, bool):  # None: the help says what happens
                assert shown == [str(default)], (command, dest, action.help)


def test_transcribe_and_serve_share_their_model_flags() -> None:
    t, s = flags("transcribe"), flags("serve")
    for dest in SHARED:
        assert t[dest].option_strings == s[dest].option_strings, dest
        assert t[dest].help == s[dest].help, dest
        assert (t[dest].type, t[dest].choices, t[dest].const) == (s[dest].type, s[dest].choices, s[dest].const)
        assert t[dest].default == field_default(dest), dest  # transcribe's defaults are the config's
    assert tuple(s["backend"].choices or ()) == BACKENDS


def test_toml_then_flags(tmp_path: Path) -> None:
    p = tmp_path / "daemon.toml"
    p.write_text('language = "es"\nend-silence-ms = 900\npunctuation = false\nport = 9000\n')
    c = build_config({"port": 9100, "language": None}, str(p))
    assert (c.language, c.end_silence_ms, c.punctuation, c.port) == ("es", 900, False, 9100)
    parsed = _parser().parse_args(["serve", "--no-punctuation", "--fast", "--end-silence-ms", "700", "--verify"])
    c = build_config({k: v for k, v in vars(parsed).items() if k not in ("command", "config")})
    assert (c.punctuation, c.fast, c.end_silence_ms, c.language, c.verify) == (False, True, 700, "en", True)


@pytest.mark.parametrize("text,match", [
    ("bogus = 1", "unknown key"),
    ("port = 'x'", "port must be int"),
    ("end_silence_ms = 0", "end_silence_ms must be"),
    ("language = [", "not valid TOML"),
    ("fast = 1", "fast must be bool"),
    # the Optional fields: their type comes from the annotation, not from a None default
    ("transcripts = 5", "transcripts must be str, not int"),
    ("device = 3", "device must be str, not int"),
    ("model = 1", "model must be str, not int"),
    ("backend = 2", "backend must be str, not int"),
    ("max_new_tokens = 'x'", "max_new_tokens must be int, not str"),
    ("max_new_tokens = true", "max_new_tokens must be int, not bool"),
    ("dither = 'x'", "dither must be float, not str"),
    ("verify = 'yes'", "verify must be bool"),
    ("backend = 'tpu'", "backend must be one of onnx, coreml"),
    # VadOptions' own checks, as ConfigErrors
    ("min_level_dbfs = 5", "min_level_dbfs must be ≤ 0"),
    ("pre_roll_ms = 40000", "pre_roll_ms=40000"),
    ("vad_aggressiveness = 7", "aggressiveness must be 0, 1, 2 or 3"),
    ("min_speech_ms = -1", "min_speech_ms must be ≥ 0"),
])
def test_bad_toml(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config({}, str(p))


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_rejects_a_wrong_type(tmp_path: Path, name: str) -> None:
    """A TOML array fits no field's annotation; the error names the key and the expected type."""
    p = tmp_path / "bad.toml"
    p.write_text(f"{name} = [1]\n")
    with pytest.raises(ConfigError, match=rf"^{name} must be \w+, not list"):
        build_config({}, str(p))


def test_ints_are_floats_and_fit_optional_fields(tmp_path: Path) -> None:
    p = tmp_path / "ok.toml"
    p.write_text('min_level_dbfs = -50\ndither = 0\nmax_new_tokens = 32\ndevice = "3"\ntranscripts = "t"\n')
    c = build_config({}, str(p))
    assert (c.min_level_dbfs, c.dither, c.max_new_tokens, c.device, c.transcripts) == (-50, 0, 32, "3", "t")


@pytest.mark.parametrize("flag,value,match", [
    ("min_level_dbfs", 5.0, "min_level_dbfs must be ≤ 0"),
    ("pre_roll_ms", 40000, "pre_roll_ms=40000"),
    ("end_silence_ms", 0, "end_silence_ms must be > 0"),
    ("partial_interval_ms", 10, "partial_interval_ms must be ≥ 50"),
    ("port", 70000, "port must be 0..65535"),
    ("log_level", "LOUD", "log_level must be one of"),
])
def test_bad_flag_values(flag: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config({flag: value})


def test_the_config_is_checked_whole_when_made() -> None:
    with pytest.raises(ConfigError, match="min_level_dbfs"):
        dataclasses.replace(DaemonConfig(model="m"), min_level_dbfs=3.0)
    with pytest.raises(ConfigError, match="device must be str"):
        DaemonConfig(model="m", device=3)  # type: ignore[arg-type]


def test_every_annotation_is_checkable() -> None:
    """check_type knows each field's annotation (a new type of field needs a rule, not a silent pass)."""
    simple = {str, int, float, bool}
    for name, hint in HINTS.items():
        kinds = set(getattr(hint, "__args__", (hint,))) - {type(None)}
        assert kinds <= simple, (name, hint)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")


def test_config_file_that_is_a_folder_or_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_toml(tmp_path)
    binary = tmp_path / "model.onnx"
    binary.write_bytes(b"\x08\x07\x12\x04\xff\xfe\x00\x80 binary")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_toml(binary)
    nul = tmp_path / "nul.toml"
    nul.write_bytes(b"port = 1\x00\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(nul)


def test_model_default_is_found_when_made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default model is looked up when a config is made, so $COHERE_TRANSCRIBE_MODEL set later counts."""
    monkeypatch.setenv("COHERE_TRANSCRIBE_MODEL", str(tmp_path / "bundle"))
    assert DaemonConfig().model == str(tmp_path / "bundle")
    assert build_config({}).model == str(tmp_path / "bundle")
    assert build_config({"model": "x"}).model == "x"


def fake_bundle(window_s: float) -> Any:
    return SimpleNamespace(features=SimpleNamespace(sample_rate=16000), max_window_seconds=window_s,
                           split_search_seconds=2.0, split_window_samples=800, max_new_tokens=256)


def test_vad_options_take_the_bundles_window() -> None:
    o = DaemonConfig(model="m").vad_options(fake_bundle(10.0))
    assert (o.max_segment_s, o.split_search_s, o.split_block_samples) == (10.0, 2.0, 800)
    with pytest.raises(ConfigError, match="pre_roll_ms=8000"):  # fits 35 s, not this bundle's 5 s window
        DaemonConfig(model="m", pre_roll_ms=8000).vad_options(fake_bundle(5.0))
