"""`cohere-transcribe agent install|uninstall|status` (daemon/service): the LaunchAgent plist and the launchctl
command lines (through the runner seam, against a stand-in that answers as launchctl does), the systemd user
unit (checked by `systemd-analyze verify`, driven through the seam, and installed, started and stopped for real
by a systemd user manager in a private mount namespace), the config file install writes, and status against a
real daemon's /health.
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest

from daemon import cli
from daemon.errors import BundleError, ConfigError
from daemon.live.config import build_config
from daemon.service import agent
from daemon.service.host import Completed, Host
from daemon.service.launchd import Launchd, parse_print
from daemon.service.spec import LABEL, UNIT, ServiceState
from daemon.service.systemd import Systemd, quote
from devtools.daemon_process import DEMO, ROOT, Daemon

PY = "/Users/ada/cohere/.venv/bin/python"
PATH = "/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin"
SAMPLE = ROOT / "samples" / "demo-en.wav"


# ---------------------------------------------------------------- stand-ins for launchctl and systemctl
class FakeLaunchctl:
    """Answers launchctl's subcommands as launchctl does for one job (exit codes and words of macOS 15)."""

    def __init__(self, target: str) -> None:
        self.target, self.loaded, self.calls = target, False, []
        self.fail: dict[str, Completed] = {}

    def __call__(self, argv: Sequence[str]) -> Completed:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[0] == "launchctl"
        verb = argv[1]
        if verb in self.fail:
            return self.fail[verb]
        if verb == "print":
            if not self.loaded:
                return Completed(113, "", f'Bad request.\nCould not find service "{LABEL}" in domain for user gui: 501\n')
            return Completed(0, PRINT_RUNNING.format(target=self.target))
        if verb == "bootstrap":
            if self.loaded:
                return Completed(5, "", "Bootstrap failed: 5: Input/output error\n")
            self.loaded = True
            return Completed(0)
        if verb == "bootout":
            if not self.loaded:
                return Completed(3, "", "Boot-out failed: 3: No such process\n")
            self.loaded = False
            return Completed(0)
        if verb == "enable":
            return Completed(0)
        if verb == "kickstart":
            return Completed(0) if self.loaded else Completed(113, "", "Could not find service\n")
        raise AssertionError(f"unexpected launchctl call {argv}")


PRINT_RUNNING = """{target} = {{
\tactive count = 1
\tpath = /Users/ada/Library/LaunchAgents/local.cohere-transcribe.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/ada/cohere/.venv/bin/python
\tenvironment = {{
\t\tPATH => /usr/bin:/bin
\t}}

\tendpoints = {{
\t\tstate = active
\t}}
\truns = 1
\tpid = 4242
\tlast exit code = (never exited)
}}
"""


class FakeSystemctl:
    """Answers `systemctl --user` for one unit as systemctl does (is-active prints the state, exit 3 if not
    active)."""

    def __init__(self) -> None:
        self.enabled = self.active = False
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> Completed:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[:2] == ["systemctl", "--user"]
        args = argv[2:]
        if args == ["is-active", UNIT]:
            return Completed(0, "active\n") if self.active else Completed(3, "inactive\n")
        if args == ["enable", "--now", UNIT]:
            self.enabled = self.active = True
        elif args == ["disable", "--now", UNIT]:
            self.enabled = self.active = False
        elif args == ["show", "-p", "MainPID", "--value", UNIT]:
            return Completed(0, "4242\n" if self.active else "0\n")
        elif args not in (["daemon-reload"], ["restart", UNIT]):
            raise AssertionError(f"unexpected systemctl call {argv}")
        return Completed(0)


def mac(tmp_path: Path, **env: str) -> Host:
    return Host("Darwin", tmp_path / "home", {"PATH": PATH, **env}, 501, PY)


def linux(tmp_path: Path, **env: str) -> Host:
    return Host("Linux", tmp_path / "home", {"PATH": PATH, **env}, 1000, PY)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths given to install are made absolute against the cwd
    monkeypatch.delenv("COHERE_TRANSCRIBE_TOKEN", raising=False)
    monkeypatch.delenv("COHERE_TRANSCRIBE_MODEL", raising=False)


# ---------------------------------------------------------------- macOS: the plist and launchctl
def test_the_plist_runs_serve_with_the_config_environment_logs_and_keepalive(tmp_path: Path) -> None:
    host = mac(tmp_path, COHERE_TRANSCRIBE_MODEL=str(DEMO), COHERE_TRANSCRIBE_TOKEN="secret-never-in-the-plist")
    launchd = Launchd(host, FakeLaunchctl(f"gui/501/{LABEL}"))
    agent.install(host, launchd, None, {"language": "es", "transcripts": "captions"})

    home = tmp_path / "home"
    assert launchd.path == home / "Library" / "LaunchAgents" / "local.cohere-transcribe.plist"
    with launchd.path.open("rb") as f:
        p = plistlib.load(f)
    config = home / "Library" / "Application Support" / "cohere-transcribe" / "daemon.toml"
    log = home / "Library" / "Logs" / "cohere-transcribe" / "daemon.log"
    assert p == {
        "Label": "local.cohere-transcribe",
        "ProgramArguments": [PY, "-m", "daemon", "serve", "--config", str(config)],
        "WorkingDirectory": str(config.parent),
        "EnvironmentVariables": {"PATH": PATH, "COHERE_TRANSCRIBE_MODEL": str(DEMO)},
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Interactive",
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    assert log.parent.is_dir()  # launchd would not make the folder
    # the config file: the flags given, paths absolute, read back by serve's own loader; owner-only
    assert tomllib.loads(config.read_text()) == {"language": "es", "transcripts": str(tmp_path / "captions")}
    assert build_config({}, str(config)).language == "es"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_launchd_install_and_uninstall_are_idempotent(tmp_path: Path) -> None:
    host = mac(tmp_path)
    target = f"gui/501/{LABEL}"
    launchctl = FakeLaunchctl(target)
    launchd = Launchd(host, launchctl)
    plist = str(launchd.path)

    agent.install(host, launchd, None, {})
    assert launchctl.calls == [["launchctl", "print", target], ["launchctl", "enable", target],
                               ["launchctl", "bootstrap", "gui/501", plist]]
    assert launchctl.loaded and launchd.path.is_file()
    launchctl.calls.clear()
    lines = agent.install(host, launchd, None, {})
    assert launchctl.calls == [["launchctl", "print", target]]  # loaded and unchanged: nothing else
    assert any("nothing to do" in line for line in lines)

    launchctl.calls.clear()
    assert agent.uninstall(launchd) == [f"unloaded {LABEL} from gui/501", f"removed {plist}"]
    assert launchctl.calls == [["launchctl", "print", target], ["launchctl", "bootout", target]]
    assert not launchctl.loaded and not launchd.path.exists()
    launchctl.calls.clear()
    assert agent.uninstall(launchd) == [f"{LABEL} is not installed; nothing to do"]
    assert launchctl.calls == [["launchctl", "print", target]]
    # the config file stays for the next install
    assert (tmp_path / "home/Library/Application Support/cohere-transcribe/daemon.toml").is_file()


def test_a_changed_plist_is_booted_out_and_bootstrapped_again(tmp_path: Path) -> None:
    host = mac(tmp_path)
    target = f"gui/501/{LABEL}"
    launchctl = FakeLaunchctl(target)
    launchd = Launchd(host, launchctl)
    agent.install(host, launchd, None, {"language": "en"})
    launchctl.calls.clear()
    agent.install(host, launchd, None, {"language": "fr"})  # new config file, the same plist: a restart
    assert launchctl.calls == [["launchctl", "print", target], ["launchctl", "print", target],
                               ["launchctl", "kickstart", "-k", target]]
    launchctl.calls.clear()
    agent.install(Host("Darwin", host.home, {"PATH": "/usr/bin:/bin"}, 501, PY), launchd, None, {})  # new PATH
    assert launchctl.calls == [["launchctl", "print", target], ["launchctl", "bootout", target],
                                   ["launchctl", "enable", target], ["launchctl", "bootstrap", "gui/501",
                                                                     str(launchd.path)]]
    assert launchctl.loaded


def test_restart_after_an_edit_of_the_config_file(tmp_path: Path) -> None:
    host = mac(tmp_path)
    target = f"gui/501/{LABEL}"
    launchctl = FakeLaunchctl(target)
    launchd = Launchd(host, launchctl)
    with pytest.raises(ConfigError, match=f"^{LABEL} is not loaded; run `cohere-transcribe agent install` first$"):
        agent.restart(launchd)
    agent.install(host, launchd, None, {})
    launchctl.calls.clear()
    assert agent.restart(launchd) == [f"restarted {LABEL}"]
    assert launchctl.calls == [["launchctl", "print", target], ["launchctl", "kickstart", "-k", target]]

    systemctl = FakeSystemctl()
    systemd = Systemd(linux(tmp_path), systemctl)
    with pytest.raises(ConfigError, match=f"^{UNIT} is not installed"):
        agent.restart(systemd)
    agent.install(linux(tmp_path), systemd, None, {})
    systemctl.calls.clear()
    agent.restart(systemd)
    assert systemctl.calls == [["systemctl", "--user", "restart", UNIT]]


def test_a_plist_written_but_not_loaded_is_loaded(tmp_path: Path) -> None:
    host = mac(tmp_path)
    launchctl = FakeLaunchctl(f"gui/501/{LABEL}")
    launchd = Launchd(host, launchctl)
    agent.install(host, launchd, None, {})
    launchctl.loaded = False  # e.g. `launchctl bootout` by hand
    lines = agent.install(host, launchd, None, {})
    assert launchctl.loaded and any("unchanged, not loaded" in line for line in lines)


def test_launchd_status_reads_launchctl_print(tmp_path: Path) -> None:
    host = mac(tmp_path)
    launchctl = FakeLaunchctl(f"gui/501/{LABEL}")
    launchd = Launchd(host, launchctl)
    assert launchd.state() == ServiceState(False, False, None, "not loaded", None)
    agent.install(host, launchd, None, {})
    config = tmp_path / "home/Library/Application Support/cohere-transcribe/daemon.toml"
    assert launchd.state() == ServiceState(True, True, 4242, "running", config)


def test_parse_print_reads_only_the_jobs_own_lines() -> None:
    stopped = "gui/501/x = {\n\tstate = not running\n\tendpoints = {\n\t\tstate = active\n\t}\n\truns = 3\n" \
              "\tlast exit code = 2\n}\n"
    assert parse_print(stopped, True, None) == ServiceState(True, False, None, "not running (last exit code 2)",
                                                            None)
    assert parse_print(PRINT_RUNNING.format(target="t"), True, None).pid == 4242


def test_a_failing_launchctl_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    host = mac(tmp_path)
    launchctl = FakeLaunchctl(f"gui/501/{LABEL}")
    launchctl.fail["bootstrap"] = Completed(5, "", "Bootstrap failed: 5: Input/output error\n")
    monkeypatch.setattr(Host, "current", classmethod(lambda cls: host))
    monkeypatch.setattr(agent, "SubprocessRunner", lambda: launchctl)
    assert cli.main(["agent", "install"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: launchctl bootstrap gui/501 {tmp_path}/home/Library/LaunchAgents/{LABEL}.plist "
                   "failed: Bootstrap failed: 5: Input/output error\n")


# ---------------------------------------------------------------- the config file install uses or writes
def test_install_keeps_an_existing_default_config_and_rewrites_it_from_flags(tmp_path: Path) -> None:
    host = mac(tmp_path)
    launchd = Launchd(host, FakeLaunchctl(f"gui/501/{LABEL}"))
    config = tmp_path / "home/Library/Application Support/cohere-transcribe/daemon.toml"
    config.parent.mkdir(parents=True)
    config.write_text('language = "de"  # my own edit\n')
    lines = agent.install(host, launchd, None, {})
    assert config.read_text() == 'language = "de"  # my own edit\n' and "kept" in lines[0]
    agent.install(host, launchd, None, {"end_silence_ms": 800})
    assert tomllib.loads(config.read_text()) == {"end_silence_ms": 800}
    with launchd.path.open("rb") as f:
        assert plistlib.load(f)["ProgramArguments"][-1] == str(config)


def test_install_with_a_config_file_uses_it(tmp_path: Path) -> None:
    host = mac(tmp_path)
    launchd = Launchd(host, FakeLaunchctl(f"gui/501/{LABEL}"))
    mine = tmp_path / "mine.toml"
    mine.write_text("port = 8800\n")
    agent.install(host, launchd, "mine.toml", {})
    with launchd.path.open("rb") as f:
        p = plistlib.load(f)
    assert p["ProgramArguments"][-2:] == ["--config", str(mine)] and p["WorkingDirectory"] == str(tmp_path)
    assert not (tmp_path / "home/Library/Application Support").exists()  # no default file written


@pytest.mark.parametrize(("config", "flags", "message"), [
    ("mine.toml", {"language": "es"}, "give --config FILE or serve options (--language), not both"),
    ("missing.toml", {}, "does not exist"),
    (None, {"source": "-"}, "stdin) cannot feed a background service"),
    (None, {"port": 70000}, "port must be 0..65535, not 70000"),
    (None, {"host": "0.0.0.0"}, "needs a token"),
    (None, {"model": "no/such/bundle"}, None),  # checked when the service would load it, not here
])
def test_bad_install_options_are_refused_before_anything_is_written(
        tmp_path: Path, config: str | None, flags: dict[str, object], message: str | None) -> None:
    (tmp_path / "mine.toml").write_text("")
    host = mac(tmp_path)
    launchctl = FakeLaunchctl(f"gui/501/{LABEL}")
    launchd = Launchd(host, launchctl)
    if message is None:
        agent.install(host, launchd, config, flags)
        assert launchctl.loaded
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        agent.install(host, launchd, config, flags)
    assert not (tmp_path / "home").exists() and launchctl.calls == []


def test_no_default_model_is_refused_at_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("daemon.model.locate.candidates", lambda: [tmp_path / "nothing"])
    host = mac(tmp_path)
    with pytest.raises(BundleError, match="no model given and no demo model found"):
        agent.install(host, Launchd(host, FakeLaunchctl("t")), None, {})


def test_the_written_config_lists_every_key_and_serve_reads_it(tmp_path: Path) -> None:
    from daemon.live.config import FIELDS
    from daemon.service.configfile import render

    text = render({"language": "es", "min_level_dbfs": -50.5, "punctuation": False, "device": 'Mic "2"'},
                  tmp_path / "d.toml")
    assert tomllib.loads(text) == {"language": "es", "min_level_dbfs": -50.5, "punctuation": False,
                                   "device": 'Mic "2"'}
    named = set(re.findall(r"^#? ?(\w+) = ", text, re.MULTILINE))
    assert named == set(FIELDS)


# ---------------------------------------------------------------- Linux: the systemd user unit
def test_the_unit_runs_serve_restarts_always_and_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    cfg = tmp_path / "my config 100%"  # a space and a specifier character in every path of the unit
    host = linux(tmp_path, COHERE_TRANSCRIBE_MODEL=str(DEMO), XDG_CONFIG_HOME=str(cfg))
    host = Host(host.system, host.home, host.env, host.uid, sys.executable)  # an interpreter verify can find
    systemd = Systemd(host, FakeSystemctl())
    agent.install(host, systemd, None, {"device": "USB 100% mic"})
    assert systemd.path == cfg / "systemd" / "user" / "cohere-transcribe.service"
    config = cfg / "cohere-transcribe" / "daemon.toml"
    text = systemd.path.read_text()
    quoted = '"' + str(config).replace("%", "%%") + '"'
    assert f"ExecStart={sys.executable} -m daemon serve --config {quoted}\n" in text
    assert systemd.state().config == config  # read back from ExecStart
    for line in ("Restart=always", "RestartSec=5", f"WorkingDirectory={str(config.parent).replace('%', '%%')}",
                 f"Environment=PATH={PATH}", f"Environment=COHERE_TRANSCRIBE_MODEL={DEMO}",
                 "WantedBy=default.target"):
        assert f"\n{line}\n" in text
    assert tomllib.loads(config.read_text()) == {"device": "USB 100% mic"}
    assert verify(systemd.path).returncode == 0, verify(systemd.path).stderr


def test_systemd_analyze_verify_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=relative/python -m daemon\nRestart=sometimes\n")
    done = verify(bad)
    assert done.returncode != 0 and "relative/python" in done.stderr


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (Debian's systemd package)"
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False)


def test_quote_keeps_spaces_quotes_specifiers_and_dollars_literal() -> None:
    assert quote("/usr/bin/python3") == "/usr/bin/python3"
    assert quote("/Users/a b/p") == '"/Users/a b/p"'
    assert quote('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert quote("100%") == "100%%" and quote("$HOME") == "$$HOME"


def test_systemd_install_and_uninstall_are_idempotent(tmp_path: Path) -> None:
    host = linux(tmp_path)
    systemctl = FakeSystemctl()
    systemd = Systemd(host, systemctl)
    u = ["systemctl", "--user"]
    agent.install(host, systemd, None, {})
    assert systemctl.calls == [[*u, "daemon-reload"], [*u, "is-active", UNIT], [*u, "enable", "--now", UNIT]]
    assert systemctl.enabled and systemctl.active
    systemctl.calls.clear()
    agent.install(host, systemd, None, {})  # unchanged: no restart
    assert systemctl.calls == [[*u, "daemon-reload"], [*u, "is-active", UNIT], [*u, "enable", "--now", UNIT]]
    systemctl.calls.clear()
    agent.install(host, systemd, None, {"language": "es"})  # a new config file, the same unit: a restart
    assert systemctl.calls == [[*u, "daemon-reload"], [*u, "is-active", UNIT], [*u, "enable", "--now", UNIT],
                               [*u, "restart", UNIT]]
    systemctl.calls.clear()
    agent.install(Host("Linux", host.home, {"PATH": "/usr/bin"}, 1000, PY), systemd, None, {})  # changed unit
    assert systemctl.calls == [[*u, "daemon-reload"], [*u, "is-active", UNIT], [*u, "enable", "--now", UNIT],
                               [*u, "restart", UNIT]]
    assert systemd.state() == ServiceState(True, True, 4242, "active", host.config_dir() / "daemon.toml")

    systemctl.calls.clear()
    agent.uninstall(systemd)
    assert systemctl.calls == [[*u, "disable", "--now", UNIT], [*u, "daemon-reload"]]
    assert not systemd.path.exists() and not systemctl.active
    systemctl.calls.clear()
    assert agent.uninstall(systemd) == [f"{UNIT} is not installed; nothing to do"] and systemctl.calls == []


def test_no_user_manager_is_one_line_with_the_reason(tmp_path: Path) -> None:
    host = linux(tmp_path)

    def no_bus(argv: Sequence[str]) -> Completed:
        return Completed(1, "", "Failed to connect to bus: No medium found\n")

    with pytest.raises(ConfigError, match=r"^systemctl --user daemon-reload failed: Failed to connect to bus: "
                                          r"No medium found \(is a systemd user session running\?"):
        agent.install(host, Systemd(host, no_bus), None, {})
    systemd = Systemd(host, no_bus)
    assert not systemd.path.exists()  # the unit it wrote is removed again: nothing half-installed
    assert systemd.state().detail.startswith("unknown: Failed to connect to bus")


def test_other_systems_have_no_agent(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent: no service manager for Windows"):
        agent.manager_for(Host("Windows", tmp_path, {}, 0, PY))


# ---------------------------------------------------------------- status: the daemon's /health
class Stated:
    """A manager whose state is given (status reads only state, describe and logs)."""

    name, path = "fake", Path("/nowhere")

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def describe(self) -> str:
        return "fake service"

    def logs(self, spec: object) -> str:
        return "the log"

    def install(self, spec: object, restart: bool = False) -> list[str]:
        raise AssertionError

    def restart(self) -> list[str]:
        raise AssertionError

    def uninstall(self) -> list[str]:
        raise AssertionError

    def state(self) -> ServiceState:
        return self._state


def test_status_with_a_running_daemon_and_with_none(tmp_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    host = linux(tmp_path)
    with Daemon("--source", str(SAMPLE)) as d:
        config.write_text(f"port = {d.port}\n")
        code, lines = agent.status(host, Stated(ServiceState(True, True, d.proc.pid, "active", config)))
    assert code == 0, lines
    assert lines[:4] == ["service: fake service: installed", f"state: active (pid {d.proc.pid})",
                         f"config: {config}", "logs: the log"]
    url = rf"\(http://127\.0\.0\.1:{d.port}/health\)"
    assert re.fullmatch(rf"health: (ok {url}: model \S+, backend onnx|loading {url}: model \S+, backend auto), "
                        r"up \d+ s", lines[4]), lines
    assert lines[-1] == f"captions: ws://127.0.0.1:{d.port}  page: http://127.0.0.1:{d.port}/"
    # the daemon has stopped: nobody answers on its port
    code, lines = agent.status(host, Stated(ServiceState(True, True, 1, "active", config)))
    assert code == agent.STATUS_DOWN
    assert lines[-1].startswith(f"health: no answer from http://127.0.0.1:{d.port}/health (")
    code, lines = agent.status(host, Stated(ServiceState(False, False, None, "not loaded", None)))
    assert (code, lines) == (3, ["service: fake service: not installed", "state: not loaded"])


def test_status_sends_the_token_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    token = "t0ken-for-the-status-test"
    with Daemon("--source", str(SAMPLE), "--token", token) as d:
        config.write_text(f"port = {d.port}\n")
        _, without = agent.health_report(config)
        config.write_text(f'port = {d.port}\ntoken = "{token}"\n')
        _, with_token = agent.health_report(config)
    assert re.fullmatch(r"health: (ok|loading) \(\S+\)", without[0])  # only the status without the token
    assert re.search(r"backend (onnx|auto)", with_token[0])


def test_cli_status_exit_3_when_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    host = mac(tmp_path)
    monkeypatch.setattr(Host, "current", classmethod(lambda cls: host))
    monkeypatch.setattr(agent, "SubprocessRunner", lambda: FakeLaunchctl(f"gui/501/{LABEL}"))
    assert cli.main(["agent", "status"]) == 3
    assert capsys.readouterr().out.splitlines()[1] == "state: not loaded"
    assert cli.main(["agent", "install", "--port", "8799"]) == 0
    assert "loaded into gui/501: it runs now and at every login" in capsys.readouterr().out


# ---------------------------------------------------------------- a real systemd user manager
REAL = """
set -eu
mount -t tmpfs tmpfs /run/systemd   # this mount namespace only: systemd believes it was booted
mkdir /run/systemd/system
/lib/systemd/systemd --user >"$T/manager.log" 2>&1 &
SD=$!
trap 'kill $SD; wait $SD || true' EXIT
for i in $(seq 100); do [ -S "$XDG_RUNTIME_DIR/systemd/private" ] && break; sleep 0.1; done
cd "$T"
"$PY" - <<'PYTHON'
import json, os, re, time, subprocess, sys
from pathlib import Path
from daemon.service import agent
from daemon.service.host import Host, SubprocessRunner
from daemon.service.spec import UNIT
host = Host.current()
m = agent.manager_for(host, SubprocessRunner())
out = {"install": agent.install(host, m, None, {"source": os.environ["SAMPLE"], "port": 0})}
def sh(*a): return subprocess.run(["systemctl", "--user", *a], capture_output=True, text=True).stdout.strip()
deadline = time.monotonic() + 60
while sh("is-active", UNIT) != "active" and time.monotonic() < deadline: time.sleep(0.1)
state = m.state()
out["state"] = [state.running, state.detail]
out["pid"] = state.pid
out["cmdline"] = Path(f"/proc/{state.pid}/cmdline").read_text().split("\\0")[:-1] if state.pid else None
out["port"] = None
while out["port"] is None and time.monotonic() < deadline:  # the port it listens on, from /proc
    inodes = {os.readlink(f"/proc/{state.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{state.pid}/fd")}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f"socket:[{f[9]}]" in inodes: out["port"] = int(f[1].split(":")[1], 16)
    time.sleep(0.1)
out["health"] = agent.fetch_health(f"http://127.0.0.1:{out['port']}/health", None)["status"]
out["reinstall"] = agent.install(host, m, None, {"source": os.environ["SAMPLE"], "port": 0})
out["pid_after_reinstall"] = m.state().pid
out["uninstall"] = agent.uninstall(m)
out["after"] = [sh("is-active", UNIT), m.path.exists(), Path(f"/proc/{state.pid}").exists()]
print(json.dumps(out))
PYTHON
"""


def test_a_real_systemd_user_manager_installs_starts_and_stops_the_unit(tmp_path: Path) -> None:
    """systemd --user in a private mount namespace (its marker /run/systemd/system exists only there), HOME and
    XDG_RUNTIME_DIR in tmp_path; `agent install` through the real runner starts the daemon on the demo model,
    which answers /health; `agent uninstall` stops it."""
    assert os.geteuid() == 0, "needs root for unshare -m (CI runs as root)"
    for tool in ("unshare", "systemctl"):
        assert shutil.which(tool), f"{tool} missing (Debian's util-linux and systemd)"
    assert Path("/lib/systemd/systemd").is_file(), "/lib/systemd/systemd missing (Debian's systemd package)"
    (tmp_path / "home").mkdir()
    (tmp_path / "run").mkdir(mode=0o700)
    env = {**os.environ, "T": str(tmp_path), "HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR":
           str(tmp_path / "run"), "PY": sys.executable, "SAMPLE": str(SAMPLE)}
    env.pop("XDG_CONFIG_HOME", None)
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", textwrap.dedent(REAL)],
                          env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr + (tmp_path / "manager.log").read_text()
    out = json.loads(done.stdout.strip().splitlines()[-1])
    config = tmp_path / "home/.config/cohere-transcribe/daemon.toml"
    assert out["state"] == [True, "active"]
    assert out["cmdline"] == [sys.executable, "-m", "daemon", "serve", "--config", str(config)]
    assert out["health"] in ("ok", "loading")
    assert out["reinstall"][1].endswith(": unchanged") and out["pid_after_reinstall"] == out["pid"]  # no restart
    assert out["uninstall"][0] == f"stopped and disabled {UNIT}"
    assert out["after"] == ["inactive", False, False]
