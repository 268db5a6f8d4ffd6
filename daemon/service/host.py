"""The machine a service is installed on (OS, home, environment, uid, Python) and the runner of OS commands.

Both are seams: `Host.current()` and `SubprocessRunner` are the real ones; tests pass a Host with a temporary
home and a runner that records each command line (launchctl, systemctl) and answers it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from daemon.errors import ConfigError

APP_DIR = "cohere-transcribe"
DISTRIBUTION = "cohere-transcribe-daemon"


@dataclass(frozen=True)
class Host:
    """Facts about the machine and user a service is installed for."""

    system: str  # platform.system(): "Darwin", "Linux", ...
    home: Path
    env: Mapping[str, str] = field(default_factory=dict)
    uid: int = 0
    python: str = sys.executable  # the interpreter the service runs (a venv's bin/python, not resolved)
    pythonpath: str | None = None  # the folder holding daemon/, when the package is not installed (a bare checkout)

    @classmethod
    def current(cls) -> Host:
        getuid = getattr(os, "getuid", None)  # not on Windows
        return cls(platform.system(), Path.home(), dict(os.environ), getuid() if getuid else 0, sys.executable,
                   _checkout_path())

    @property
    def is_mac(self) -> bool:
        return self.system == "Darwin"

    def config_dir(self) -> Path:
        """Where the service's config file lives: ~/Library/Application Support/cohere-transcribe on macOS,
        $XDG_CONFIG_HOME/cohere-transcribe (default ~/.config/cohere-transcribe) elsewhere."""
        if self.is_mac:
            return self.home / "Library" / "Application Support" / APP_DIR
        return self.xdg("XDG_CONFIG_HOME", ".config") / APP_DIR

    def log_dir(self) -> Path:
        """~/Library/Logs/cohere-transcribe (macOS; on Linux the unit logs to the journal)."""
        return self.home / "Library" / "Logs" / APP_DIR

    def xdg(self, var: str, default: str) -> Path:
        value = self.env.get(var)
        return Path(value) if value and Path(value).is_absolute() else self.home / default


def _checkout_path() -> str | None:
    """The checkout's root when this package runs from it without being installed (so `python -m daemon` finds
    it only from there), else None."""
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return str(Path(__file__).resolve().parents[2])
    return None


@dataclass(frozen=True)
class Completed:
    """What an OS command did: its exit status and output."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def message(self) -> str:
        """The command's own words on one line (stderr, else stdout), for an error message."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return text[-1] if text else f"exit status {self.returncode}"


class Runner(Protocol):
    """Runs one OS command (argv, no shell) and reports what it did; a missing program is returncode 127."""

    def __call__(self, argv: Sequence[str]) -> Completed: ...


class SubprocessRunner:
    """The real runner: subprocess.run with captured text output and a time limit."""

    def __init__(self, timeout_s: float = 60) -> None:
        self.timeout_s = timeout_s

    def __call__(self, argv: Sequence[str]) -> Completed:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            return Completed(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Completed(124, "", f"{' '.join(argv)} did not finish in {self.timeout_s:.0f} s")
        return Completed(done.returncode, done.stdout, done.stderr)


def write_file(path: Path, data: str | bytes, mode: int = 0o644) -> bool:
    """Write `data` to `path` (folders made, replaced whole through a temporary file) unless it already holds
    it; True when the file changed.

    Raises:
        ConfigError: the file cannot be written.
    """
    raw = data.encode() if isinstance(data, str) else data
    try:
        if path.is_file() and path.read_bytes() == raw:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from e
    return True
