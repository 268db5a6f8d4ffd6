"""scripts/setup.sh's branches on a pretend Mac and a pretend Debian: `uname`, the system Python, apt-get and the
.venv's Python are stand-ins on PATH (shell scripts that log how they were called), so the branch logic runs
here — which packages are asked of apt (none on a Mac), what pip installs, what is said about Homebrew, and the
Python ≥ 3.11 check — without installing anything.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_TOOLS = ("dirname", "mkdir", "grep", "cat", "id", "chmod", "basename", "sed")  # what setup.sh uses besides the stand-ins

UNAME = """#!/bin/bash
case "$1" in -m) echo "$FAKE_ARCH" ;; *) echo "$FAKE_OS" ;; esac
"""
# A Python that answers setup.sh's questions as Python $FAKE_PY_VERSION would; `-m venv DIR` makes DIR/bin/python
# (a Python 3.12 stand-in) and every call is logged.
PYTHON = """#!/bin/bash
echo "$0 $*" >> "$LOG"
version=${PYVERSION:-$FAKE_PY_VERSION}
if [ "$1" = -c ]; then
  case "$2" in
    *version_info*) IFS=. read -r major minor _ <<< "$version"; [ "$major" -gt 3 ] || [ "$minor" -ge 11 ]; exit ;;
    *python_version*) echo "$version"; exit 0 ;;
    *) exit 0 ;;
  esac
fi
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  { echo '#!/bin/bash'; echo 'PYVERSION=3.12.1'; sed 1d "$0"; } > "$3/bin/python"
  chmod +x "$3/bin/python"
fi
exit 0
"""
LOGGER = """#!/bin/bash
echo "$(basename "$0") $*" >> "$LOG"
"""
SUDO = """#!/bin/bash
exec "$@"
"""


class Machine:
    """A copy of scripts/setup.sh in a temporary checkout and a PATH of stand-ins, `FAKE_OS` and friends."""

    def __init__(self, tmp: Path, os_name: str, arch: str = "arm64", python: str | None = "3.12.1",
                 tools: tuple[str, ...] = ()) -> None:
        self.repo, self.bin, self.log = tmp / "repo", tmp / "bin", tmp / "calls.log"
        (self.repo / "scripts").mkdir(parents=True)
        shutil.copy(ROOT / "scripts" / "setup.sh", self.repo / "scripts" / "setup.sh")
        self.bin.mkdir()
        for tool in REAL_TOOLS:
            real = shutil.which(tool)
            assert real, f"{tool} missing"
            (self.bin / tool).symlink_to(real)
        self._script("uname", UNAME)
        if python is not None:
            self._script("python3", PYTHON)
        for name in ("apt-get", "ldconfig", *tools):
            self._script(name, LOGGER)
        self._script("sudo", SUDO)
        self.log.write_text("")
        self.env = {"PATH": str(self.bin), "LOG": str(self.log), "FAKE_OS": os_name, "FAKE_ARCH": arch,
                    "FAKE_PY_VERSION": python or "", "HOME": str(tmp)}

    def _script(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def setup(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        bash = shutil.which("bash")
        assert bash
        return subprocess.run([bash, str(self.repo / "scripts" / "setup.sh"), *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=60, check=False)

    def calls(self) -> list[str]:
        return [line.replace(str(self.bin) + "/", "").replace(str(self.repo) + "/", "")
                for line in self.log.read_text().splitlines()]

    def pip_installs(self) -> list[str]:
        return [c.split(" install ", 1)[1] for c in self.calls() if c.startswith(".venv/bin/python -m pip install")]


def test_mac_runtime_needs_no_apt_and_no_homebrew_and_installs_coremltools(tmp_path: Path) -> None:
    m = Machine(tmp_path, "Darwin")
    done = m.setup("--runtime")
    assert done.returncode == 0, done.stderr
    assert not any(c.startswith(("apt-get", "ldconfig")) for c in m.calls())
    assert m.pip_installs() == ["-q --upgrade pip", "-q -e .[coreml]"]
    assert "brew" not in done.stdout + done.stderr
    assert "import daemon, onnxruntime, webrtcvad, sounddevice, websockets, coremltools" in m.calls()[-1]
    assert done.stdout.splitlines()[-1] == "[setup] ready"


def test_mac_full_setup_names_the_homebrew_tools_of_the_tests(tmp_path: Path) -> None:
    m = Machine(tmp_path, "Darwin", tools=("sox",))  # sox is there, espeak-ng and tmux are not
    done = m.setup()
    assert done.returncode == 0, done.stderr
    assert "[setup] the test suite also needs: brew install espeak-ng tmux (nothing else here needs Homebrew;" \
           in done.stdout
    assert not any(c.startswith("apt-get") for c in m.calls())
    assert m.pip_installs() == ["-q --upgrade pip", "-q -e .[export,dev]"]


def test_an_intel_mac_is_told_that_torch_has_no_wheels_for_it(tmp_path: Path) -> None:
    m = Machine(tmp_path, "Darwin", arch="x86_64")
    done = m.setup()
    assert done.returncode == 2 and "no wheels for Intel Macs" in done.stderr
    assert m.calls() == [] and not (m.repo / ".venv").exists()
    assert m.setup("--runtime").returncode == 0 and m.pip_installs()[-1] == "-q -e .[coreml]"  # the quick start


@pytest.mark.parametrize(("os_name", "hint"), [("Darwin", "macOS's own python3 is 3.9: install Python 3.12 from "
                                                           "python.org or with `brew install python@3.12`, then run again"),
                                               ("Linux", "Debian 12 and Ubuntu 24.04 have it as python3")])
def test_an_old_python_is_one_clear_line(tmp_path: Path, os_name: str, hint: str) -> None:
    m = Machine(tmp_path, os_name, python="3.9.6")
    done = m.setup("--runtime")
    assert done.returncode == 2
    assert done.stderr == f"error: python3 is Python 3.9.6; this project needs 3.11 or newer ({hint}; " \
                          "PYTHON=/path/to/python3.12 picks another)\n"
    assert not (m.repo / ".venv").exists()


def test_no_python_at_all_and_the_python_override(tmp_path: Path) -> None:
    m = Machine(tmp_path, "Darwin", python=None)
    done = m.setup("--runtime")
    assert done.returncode == 2 and done.stderr.startswith("error: python3 not found; this project needs Python 3.11")
    other = tmp_path / "py312"
    other.write_text(PYTHON)
    other.chmod(0o755)
    done = m.setup("--runtime", PYTHON=str(other), FAKE_PY_VERSION="3.12.4")
    assert done.returncode == 0, done.stderr
    assert "[setup] creating .venv (Python 3.12.4)" in done.stdout
    assert f"{other} -m venv .venv" in m.calls()


def test_an_old_venv_is_named(tmp_path: Path) -> None:
    m = Machine(tmp_path, "Darwin")
    venv = m.repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/bash\nPYVERSION=3.10.2\n" + PYTHON.split("\n", 1)[1])
    (venv / "python").chmod(0o755)
    done = m.setup("--runtime")
    assert done.returncode == 2 and done.stderr.startswith("error: .venv has Python 3.10.2; this project needs 3.11 "
                                                           "or newer: remove .venv and run again")


def test_debian_runtime_asks_apt_for_portaudio_only(tmp_path: Path) -> None:
    m = Machine(tmp_path, "Linux")
    done = m.setup("--runtime")
    assert done.returncode == 0, done.stderr
    apt = [c for c in m.calls() if c.startswith("apt-get")]
    assert apt == ["apt-get update -qq", "apt-get install -y -qq --no-install-recommends libportaudio2"]
    assert m.pip_installs() == ["-q --upgrade pip", "-q -e ."]


def test_a_wrong_argument_is_usage(tmp_path: Path) -> None:
    done = Machine(tmp_path, "Darwin").setup("--fast")
    assert (done.returncode, done.stderr) == (2, "usage: bash scripts/setup.sh [--runtime]\n")
