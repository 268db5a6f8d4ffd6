"""clients/cli.py in a real terminal (tmux) against a running daemon: finals shown, restart, follow a file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import soundfile as sf
from live import DEMO, ROOT, Daemon
from test_live import SR, program, sentences


class Tmux:
    def __init__(self, command: str) -> None:
        assert shutil.which("tmux"), "tmux missing: .ci/run installs it"
        self.name = f"cli-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", command],
                       check=True, cwd=ROOT)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name, "-S", "-200"], capture_output=True,
                              text=True).stdout

    def wait_for(self, texts: list[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"not on screen: {texts}\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def finals_of(folder: Path) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_cli_shows_finals_survives_a_restart_and_follows_a_file(tmp_path: Path) -> None:
    first, second = sentences(2), sentences(8)[6:7]
    for name, texts in (("one.wav", first), ("two.wav", second)):
        sf.write(tmp_path / name, program(texts)[0], SR)
    d1 = Daemon("--model", str(DEMO), "--source", str(tmp_path / "one.wav"), "--transcripts", str(tmp_path / "a"))
    term = Tmux(f"{sys.executable} clients/cli.py --url {d1.url}")
    try:
        deadline = time.monotonic() + 60
        while len(finals_of(tmp_path / "a")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        shown = finals_of(tmp_path / "a")
        term.wait_for(shown, 20)
        d1.stop()  # the daemon goes away ...
        time.sleep(1.0)
        d2 = Daemon("--model", str(DEMO), "--source", str(tmp_path / "two.wav"), "--transcripts",
                    str(tmp_path / "b"), port=d1.port)  # ... and comes back on the same port
        try:
            deadline = time.monotonic() + 60
            while not finals_of(tmp_path / "b") and time.monotonic() < deadline:
                time.sleep(0.2)
            new = finals_of(tmp_path / "b")
            screen = term.wait_for(new, 30)
        finally:
            d2.stop()
        for text in shown + new:
            assert screen.count(text) == 1, (text, screen)  # no duplicates, no gaps
        assert "reconnect" in screen.lower()
    finally:
        term.kill()
    follower = Tmux(f"{sys.executable} clients/cli.py --follow {next((tmp_path / 'a').glob('*.jsonl'))}")
    try:
        follower.wait_for(shown, 20)
    finally:
        follower.kill()
