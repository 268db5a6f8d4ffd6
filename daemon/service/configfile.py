"""The TOML config file of the service: written by `agent install` from its flags, checked before use.

The keys are DaemonConfig's fields (daemon.live.config); the file lists the ones given as settings and every
other one as a comment with its default, so a user sees what can be set. Paths are written absolute, since the
service starts in the config file's folder, not where `agent install` ran.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError
from daemon.live.access import TOKEN_ENV
from daemon.live.config import FIELDS, DaemonConfig, check_type, field_default, load_toml

PATH_KEYS = ("model", "transcripts")  # values that name files or folders (source too, unless mic or -)
HEADER = ("# cohere-transcribe serve --config {path}\n"
          "# Written by `cohere-transcribe agent install`. Every key is also a flag of `serve` (see\n"
          "# `cohere-transcribe serve --help`); after an edit, `cohere-transcribe agent restart`.\n")


def toml_value(value: Any) -> str:
    """One value as TOML: a basic string, an integer, a float or a boolean."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 0.0005, -45.0, inf, nan are all TOML
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML's basic-string escapes
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} to a TOML config file")


def absolute_paths(values: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """The values with relative paths (model, transcripts, a file source) made absolute against `cwd`."""
    out = dict(values)
    keys = [*PATH_KEYS, *(["source"] if out.get("source") not in (None, "mic", "-") else [])]
    for key in keys:
        if isinstance(out.get(key), str):
            out[key] = str((cwd / Path(out[key]).expanduser()).resolve())
    return out


def render(values: dict[str, Any], path: Path) -> str:
    """The config file's text: the given keys as settings, the others as comments with their defaults."""
    lines = [HEADER.format(path=path)]
    for f in fields(DaemonConfig):
        if f.name in values:
            lines.append(f"{f.name} = {toml_value(values[f.name])}\n")
        elif f.name == "token":
            lines.append(f"# token = \"...\"            # or {TOKEN_ENV}; needed off loopback\n")
        else:
            default = field_default(f.name)
            shown = "(the default model)" if f.name == "model" else (
                "(not set)" if default is None else toml_value(default))
            lines.append(f"# {f.name} = {shown}\n")
    return "".join(lines)


def check(values: dict[str, Any], where: str) -> DaemonConfig:
    """The DaemonConfig these values give, as the service will build it (no flags, no token from this shell).

    Raises:
        ConfigError: a bad key or value, or a source a service cannot have (stdin).
        BundleError: no model given and no default model found.
    """
    for name, value in values.items():
        if name not in FIELDS:
            raise ConfigError(f"{where}: unknown key {name!r}")
        check_type(name, value)
    if values.get("source") == "-":
        raise ConfigError(f"{where}: source = \"-\" (stdin) cannot feed a background service; use mic or a file")
    return DaemonConfig(**values)


def check_file(path: Path) -> DaemonConfig:
    """Read and check an existing config file (see `check`)."""
    return check(load_toml(path), f"config file {path}")
