"""What the background service runs: `<python> -m daemon serve --config FILE`, in the config file's folder, with
the environment it needs and (on macOS) its log file. launchd.py and systemd.py render the same ServiceSpec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.model.locate import ENV_VAR

from .host import Host

LABEL = "local.cohere-transcribe"  # the launchd label ("local.": a job of this user, not a vendor's)
UNIT = "cohere-transcribe.service"  # the systemd user unit
CONFIG_NAME = "daemon.toml"
LOG_NAME = "daemon.log"
DEFAULT_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # launchd's own PATH, for a shell without one
# Variables the daemon reads, carried from the shell that ran `agent install` into the service when set there:
# the default model, and where its caches and per-user data live. The token is not carried (it would be
# readable in the plist and through systemctl show); it belongs in the config file.
CARRIED = (ENV_VAR, "XDG_CACHE_HOME", "XDG_DATA_HOME")


@dataclass(frozen=True)
class ServiceSpec:
    """One service: the command, where it starts, its environment and log file."""

    program: tuple[str, ...]  # argv: the interpreter first
    config: Path
    working_dir: Path
    environment: dict[str, str]
    log_file: Path | None  # None: the service manager keeps the log (the journal)


def default_config(host: Host) -> Path:
    """The config file `agent install` writes when it is given none."""
    return host.config_dir() / CONFIG_NAME


def service_spec(host: Host, config: Path) -> ServiceSpec:
    """The service for this host running `serve --config config` (an absolute path)."""
    env = {"PATH": host.env.get("PATH") or DEFAULT_PATH}
    for name in CARRIED:
        if value := host.env.get(name):
            env[name] = str(Path(value).expanduser().resolve()) if name == ENV_VAR else value
    if host.pythonpath:
        env["PYTHONPATH"] = host.pythonpath
    return ServiceSpec(program=(host.python, "-m", "daemon", "serve", "--config", str(config)),
                       config=config, working_dir=config.parent, environment=env,
                       log_file=host.log_dir() / LOG_NAME if host.is_mac else None)


@dataclass(frozen=True)
class ServiceState:
    """What the service manager says about the service."""

    installed: bool  # its file (plist or unit) is in place
    running: bool
    pid: int | None
    detail: str  # the manager's own word for the state, e.g. "running", "inactive", "not loaded"
    config: Path | None  # the --config of the installed file
