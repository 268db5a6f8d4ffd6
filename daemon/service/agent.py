"""`cohere-transcribe agent install|uninstall|restart|status`: the daemon as a background service of this user —
a launchd LaunchAgent on macOS, a systemd user unit on Linux — and its `/health`.

install: the config file is the one given (`--config FILE`, checked), else the default one
(`Host.config_dir()/daemon.toml`), written from the `serve` flags given to install (or kept as it is when
install gets none). Then the service file is written and loaded. uninstall stops and removes it (the config
file stays). restart restarts it after an edit of its config file. status says whether it is installed and running and asks the daemon for `GET /health` on the host
and port of its config file. Each returns the lines to print; mistakes raise DaemonError (one line, exit 2).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import ConfigError, DaemonError
from daemon.live.config import field_default, load_toml

from . import configfile
from .host import Host, Runner, SubprocessRunner, write_file
from .launchd import Launchd
from .spec import ServiceSpec, ServiceState, default_config, service_spec
from .systemd import Systemd

STATUS_RUNNING, STATUS_DOWN = 0, 3  # `agent status` exit codes (LSB: 3 = not running)
HEALTH_TIMEOUT_S = 3.0


class Manager(Protocol):
    """A service manager: launchd or systemd."""

    name: str
    path: Path

    def describe(self) -> str: ...
    def logs(self, spec: ServiceSpec | None) -> str: ...
    def install(self, spec: ServiceSpec, restart: bool = False) -> list[str]: ...
    def restart(self) -> list[str]: ...
    def uninstall(self) -> list[str]: ...
    def state(self) -> ServiceState: ...


def manager_for(host: Host, run: Runner | None = None) -> Manager:
    """launchd on macOS, systemd elsewhere on Linux; any other OS is a ConfigError."""
    run = run or SubprocessRunner()
    if host.is_mac:
        return Launchd(host, run)
    if host.system == "Linux":
        return Systemd(host, run)
    raise ConfigError(f"agent: no service manager for {host.system} (launchd on macOS, systemd on Linux)")


def install(host: Host, manager: Manager, config: str | None, flags: Mapping[str, Any],
            prog: str = "cohere-transcribe") -> list[str]:
    """Choose and check the config file, then write and load the service that runs `serve --config` on it.

    Args:
        config: a config file to use as it is; None: the default config file.
        flags: `serve` options given to install (None values left out); written into the default config file.
        prog: how the user runs this command (for the hint at the end).
    """
    given = {k: v for k, v in flags.items() if v is not None}
    lines: list[str] = []
    changed = False
    if config is not None:
        if given:
            raise ConfigError(f"agent install: give --config FILE or serve options ({', '.join(map(_flag, given))}),"
                              " not both; write the options into the file")
        path = Path(config).expanduser().resolve()
        configfile.check_file(path)
        lines.append(f"config: {path}")
    else:
        path = default_config(host)
        if given or not path.exists():
            values = configfile.absolute_paths(given, Path.cwd())
            configfile.check(values, "agent install")  # before anything is written
            changed = write_file(path, configfile.render(values, path), mode=0o600)  # it may hold a token
            lines.append(f"{'wrote' if changed else 'unchanged'} config: {path}")
        else:
            configfile.check_file(path)
            lines.append(f"config: {path} (kept; give serve options to install to rewrite it)")
    spec = service_spec(host, path)
    lines += manager.install(spec, restart=changed)
    lines.append(f"logs: {manager.logs(spec)}")
    lines.append(f"status: {prog} agent status")
    return lines


def restart(manager: Manager) -> list[str]:
    """Restart the installed service, so that it reads its (edited) config file again."""
    return manager.restart()


def uninstall(manager: Manager) -> list[str]:
    """Stop the service and remove its file (the config file stays)."""
    return manager.uninstall()


def status(host: Host, manager: Manager) -> tuple[int, list[str]]:
    """The service's state and the daemon's /health; exit code 0 when it runs and answers, else 3."""
    state = manager.state()
    lines = [f"service: {manager.describe()}: {'installed' if state.installed else 'not installed'}",
             f"state: {state.detail}" + (f" (pid {state.pid})" if state.pid else "")]
    if state.config is not None:
        spec = service_spec(host, state.config)
        lines += [f"config: {state.config}", f"logs: {manager.logs(spec)}"]
    if not state.running or state.config is None:
        return STATUS_DOWN, lines
    ok, health_lines = health_report(state.config)
    return (STATUS_RUNNING if ok else STATUS_DOWN), lines + health_lines


def health_report(config: Path) -> tuple[bool, list[str]]:
    """GET /health of the daemon a config file describes; (answered, the lines saying what it answered)."""
    try:
        values = load_toml(config)
    except DaemonError as e:
        return False, [f"health: unknown ({e})"]
    host, port = values.get("host", field_default("host")), values.get("port", field_default("port"))
    if port == 0:
        return False, ["health: unknown (port = 0: the daemon picks a free port; its log says which)"]
    url = f"http://{_connect_host(host)}:{port}"
    try:
        health = fetch_health(f"{url}/health", values.get("token"))
    except OSError as e:
        reason = getattr(e, "reason", None) or e.strerror or e
        return False, [f"health: no answer from {url}/health ({reason})"]
    lines = [f"health: {health.get('status')} ({url}/health)" + _summary(health)]
    lines += [f"  warning: {w}" for w in health.get("warnings") or []]
    lines.append(f"captions: {url.replace('http://', 'ws://')}  page: {url}/")
    return True, lines


def fetch_health(url: str, token: str | None, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
    """The /health JSON (with the token, every field; without it only `status` when the daemon has one).

    Raises:
        OSError: no daemon answers, or it answers with an HTTP error or not JSON.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            data = json.loads(r.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OSError(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise OSError("not a JSON object")
    return data


def _summary(health: dict[str, Any]) -> str:
    parts = [f"{k} {health[k]}" for k in ("model", "backend") if health.get(k)]
    if isinstance(health.get("uptime_s"), (int, float)):
        parts.append(f"up {health['uptime_s']:.0f} s")
    return ": " + ", ".join(parts) if parts else ""


def _connect_host(host: str) -> str:
    """Where to reach a daemon listening on `host` from this machine (the wildcard → loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
