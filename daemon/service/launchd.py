"""macOS: the LaunchAgent ~/Library/LaunchAgents/local.cohere-transcribe.plist (written with plistlib), loaded
into the user's login session with `launchctl bootstrap gui/UID PLIST`, removed with `launchctl bootout
gui/UID/LABEL`, its state read from `launchctl print gui/UID/LABEL`.

RunAtLoad starts it at load and at every login; KeepAlive restarts it whenever it exits (launchd waits 10 s
between starts). Installing again with the same plist changes nothing; with a changed plist the loaded job is
booted out and bootstrapped again, which restarts the daemon with its new settings; a changed config file alone
restarts it with `launchctl kickstart -k`.
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError

from .host import Completed, Host, Runner, write_file
from .spec import LABEL, ServiceSpec, ServiceState

LAUNCHCTL = "launchctl"


def plist(spec: ServiceSpec) -> dict[str, Any]:
    """The LaunchAgent's property list."""
    out: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": list(spec.program),
        "WorkingDirectory": str(spec.working_dir),
        "EnvironmentVariables": dict(spec.environment),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Interactive",  # live audio: no background throttling of CPU or timers
    }
    if spec.log_file is not None:
        out["StandardOutPath"] = out["StandardErrorPath"] = str(spec.log_file)
    return out


class Launchd:
    """The LaunchAgent of one user, driven through `run` (launchctl command lines)."""

    name = "launchd"

    def __init__(self, host: Host, run: Runner) -> None:
        self.run = run
        self.path = host.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        self.domain = f"gui/{host.uid}"
        self.target = f"{self.domain}/{LABEL}"

    def describe(self) -> str:
        return f"launchd LaunchAgent {LABEL} ({self.path})"

    def logs(self, spec: ServiceSpec | None) -> str:
        return str(spec.log_file) if spec and spec.log_file else "StandardErrorPath in the plist"

    def install(self, spec: ServiceSpec, restart: bool = False) -> list[str]:
        """Write the plist and load it (again, if it changed); when it is loaded and unchanged, restart it if
        `restart` (its config file changed), else nothing to do."""
        if spec.log_file is not None:
            _mkdir(spec.log_file.parent)  # launchd opens the log file but makes no folder
        changed = write_file(self.path, plistlib.dumps(plist(spec)))
        loaded = self._print().returncode == 0
        if loaded and not changed:
            if restart:
                return [f"{self.path}: unchanged", *self.restart()]
            return [f"{self.path}: unchanged and loaded; nothing to do"]
        lines = [f"wrote {self.path}" if changed else f"{self.path}: unchanged, not loaded"]
        if loaded:
            self._must(LAUNCHCTL, "bootout", self.target)
            lines.append(f"unloaded the previous {LABEL}")
        self._must(LAUNCHCTL, "enable", self.target)  # a job once disabled would not bootstrap
        self._must(LAUNCHCTL, "bootstrap", self.domain, str(self.path))
        lines.append(f"loaded into {self.domain}: it runs now and at every login")
        return lines

    def restart(self) -> list[str]:
        """Stop the running daemon and start it again (it reads its config file anew)."""
        if self._print().returncode != 0:
            raise ConfigError(f"{LABEL} is not loaded; run `cohere-transcribe agent install` first")
        self._must(LAUNCHCTL, "kickstart", "-k", self.target)
        return [f"restarted {LABEL}"]

    def uninstall(self) -> list[str]:
        """Unload the job if loaded and remove the plist if present; nothing to do when neither is there."""
        lines = []
        if self._print().returncode == 0:
            self._must(LAUNCHCTL, "bootout", self.target)
            lines.append(f"unloaded {LABEL} from {self.domain}")
        if self.path.exists():
            self.path.unlink()
            lines.append(f"removed {self.path}")
        return lines or [f"{LABEL} is not installed; nothing to do"]

    def state(self) -> ServiceState:
        installed, config = self.path.is_file(), None
        if installed:
            config = _config_of(self.path)
        done = self._print()
        if done.returncode != 0:
            return ServiceState(installed, False, None, "not loaded", config)
        return parse_print(done.stdout, installed, config)

    def _print(self) -> Completed:
        return self.run([LAUNCHCTL, "print", self.target])

    def _must(self, *argv: str) -> Completed:
        done = self.run(argv)
        if done.returncode != 0:
            raise ConfigError(f"{' '.join(argv)} failed: {done.message}")
        return done


def parse_print(text: str, installed: bool, config: Path | None) -> ServiceState:
    """The state in `launchctl print` output: the job's own `state = running`, `pid = N` and `last exit code`
    lines (indented by one tab; nested blocks such as `environment = {` are indented deeper)."""
    top = dict(re.findall(r"^\t([a-z][a-z ]*) = (.*)$", text, re.MULTILINE))
    word = top.get("state", "loaded").strip()
    running = word == "running"
    if not running and "last exit code" in top:
        word += f" (last exit code {top['last exit code'].strip()})"
    pid = top.get("pid", "").strip()
    return ServiceState(installed, running, int(pid) if running and pid.isdigit() else None, word, config)


def _config_of(path: Path) -> Path | None:
    """The --config argument of an installed plist (None if it cannot be read)."""
    try:
        args = plistlib.loads(path.read_bytes()).get("ProgramArguments", [])
    except (OSError, plistlib.InvalidFileException, ValueError):
        return None
    return _after(args, "--config")


def _after(args: list[str], flag: str) -> Path | None:
    return Path(args[args.index(flag) + 1]) if flag in args[:-1] else None


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make {folder}: {e.strerror or e}") from e
