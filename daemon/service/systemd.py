"""Linux: the systemd user unit ~/.config/systemd/user/cohere-transcribe.service, enabled and started with
`systemctl --user enable --now`, stopped and disabled with `systemctl --user disable --now`, its state read
with `systemctl --user is-active` and `show -p MainPID`.

It starts with the user's session (WantedBy=default.target; after logout too with `loginctl enable-linger`),
Restart=always restarts it 5 s after any exit, and its log goes to the journal
(`journalctl --user -u cohere-transcribe`). Installing again with the same unit changes nothing; a changed
unit (or config file) is reloaded and, if it was running, restarted.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from daemon.errors import ConfigError

from .host import Completed, Host, Runner, write_file
from .spec import UNIT, ServiceSpec, ServiceState

SYSTEMCTL = ("systemctl", "--user")
NO_BUS_HINT = ("is a systemd user session running? It starts with a login (desktop or ssh); "
               "`loginctl enable-linger $USER` keeps it without one")


def quote(arg: str) -> str:
    """One word of a unit's command line or Environment=: double-quoted with backslash escapes when it holds
    spaces, quotes or backslashes; `%` (specifiers) and `$` (variables) doubled so they stay literal."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit(spec: ServiceSpec) -> str:
    """The unit file's text."""
    env = "".join(f"Environment={quote(f'{k}={v}')}\n" for k, v in spec.environment.items())
    return (
        "[Unit]\n"
        "Description=cohere-transcribe: live captions (websockets and GET /health)\n"
        "After=pipewire.service pipewire-pulse.service pulseaudio.service\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(quote(a) for a in spec.program)}\n"
        f"WorkingDirectory={spec.working_dir.as_posix().replace('%', '%%')}\n"
        f"{env}"
        "Restart=always\n"
        "RestartSec=5\n"
        "SyslogIdentifier=cohere-transcribe\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


class Systemd:
    """The user unit of one user, driven through `run` (systemctl --user command lines)."""

    name = "systemd"

    def __init__(self, host: Host, run: Runner) -> None:
        self.run = run
        self.path = host.xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user" / UNIT

    def describe(self) -> str:
        return f"systemd user unit {UNIT} ({self.path})"

    def logs(self, spec: ServiceSpec | None) -> str:
        return f"journalctl --user -u {UNIT.removesuffix('.service')}"

    def install(self, spec: ServiceSpec, restart: bool = False) -> list[str]:
        """Write the unit, reload systemd, enable and start it; restart it if it (or, with `restart`, its config
        file) changed while running. Nothing changes when it is in place, enabled and active; a unit file that
        this call created is removed again when systemctl fails."""
        new = not self.path.exists()
        changed = write_file(self.path, unit(spec))
        lines = [f"wrote {self.path}" if changed else f"{self.path}: unchanged"]
        try:
            self._must("daemon-reload")  # also when unchanged: an earlier install may have failed before it
            was_active = self._systemctl("is-active", UNIT).stdout.strip() == "active"
            self._must("enable", "--now", UNIT)
        except ConfigError:
            if new:  # nothing half-installed is left behind
                self.path.unlink()
            raise
        if (changed or restart) and was_active:
            self._must("restart", UNIT)
            lines.append(f"restarted {UNIT} with the new settings")
        lines.append(f"{UNIT} is enabled and started: it runs now and with every session of this user")
        return lines

    def restart(self) -> list[str]:
        """Stop the running daemon and start it again (it reads its config file anew)."""
        if not self.path.exists():
            raise ConfigError(f"{UNIT} is not installed; run `cohere-transcribe agent install` first")
        self._must("restart", UNIT)
        return [f"restarted {UNIT}"]

    def uninstall(self) -> list[str]:
        """Stop and disable the unit, remove its file and reload; nothing to do when there is no file."""
        if not self.path.exists():
            return [f"{UNIT} is not installed; nothing to do"]
        self._must("disable", "--now", UNIT)
        self.path.unlink()
        self._must("daemon-reload")
        return [f"stopped and disabled {UNIT}", f"removed {self.path}"]

    def state(self) -> ServiceState:
        installed = self.path.is_file()
        config = _config_of(self.path) if installed else None
        done = self._systemctl("is-active", UNIT)
        word = done.stdout.strip()  # active, inactive, failed, activating, ...
        if not word:  # no answer at all: no user manager to ask
            word = f"unknown: {done.message}" + (f" ({NO_BUS_HINT})" if "bus" in done.message.lower() else "")
        if word != "active":
            return ServiceState(installed, False, None, word, config)
        pid = self._systemctl("show", "-p", "MainPID", "--value", UNIT).stdout.strip()
        return ServiceState(installed, True, int(pid) if pid.isdigit() and pid != "0" else None, word, config)

    def _systemctl(self, *args: str) -> Completed:
        return self.run([*SYSTEMCTL, *args])

    def _must(self, *args: str) -> Completed:
        done = self._systemctl(*args)
        if done.returncode != 0:
            hint = f" ({NO_BUS_HINT})" if "bus" in done.message.lower() else ""
            raise ConfigError(f"{' '.join([*SYSTEMCTL, *args])} failed: {done.message}{hint}")
        return done


def _config_of(path: Path) -> Path | None:
    """The --config argument of an installed unit's ExecStart (None if it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)
    if not m:
        return None
    try:
        args = shlex.split(m.group(1).replace("%%", "%").replace("$$", "$"))
    except ValueError:
        return None
    return Path(args[args.index("--config") + 1]) if "--config" in args[:-1] else None
