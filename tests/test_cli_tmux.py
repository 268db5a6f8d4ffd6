"""clients/cli.py in a real terminal (tmux) against a running daemon: finals shown once each, a daemon restart
survived, a transcript file followed.

The client talks to the daemon through a TCP relay whose port stays open for the whole test, so the second
daemon can take any free port (no port is closed and bound again) while the client keeps one URL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
import soundfile as sf

from devtools.daemon_process import DEMO, ROOT, Daemon
from devtools.speech import SR, heldout_sentences, program

SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))  # scale up on slow machines
FINALS_WAIT_S = 60 * SCALE  # a daemon's finals of a few sentences reach its transcript within this
SCREEN_WAIT_S = 30 * SCALE  # shown finals reach the terminal within this
FINAL_LINE = re.compile(r"^\[\d{2,}:\d{2}\] (.*)$")  # how the client prints a final: "[mm:ss] text"

pytestmark = pytest.mark.timeout(600)


class Relay:
    """Forwards each TCP connection on `port` to 127.0.0.1:`target`; with no target, it closes them at once."""

    def __init__(self) -> None:
        self.target: int | None = None
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port: int = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                if self.target is None:
                    raise ConnectionRefusedError
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._server.close()
        for s in self._open:
            s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src → dst until either side ends, then end both."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Tmux:
    """A detached tmux session running `command` in a 200×50 terminal, on its own tmux server (`-L`): two
    sessions on the shared default server race when the first one's exit stops the server while the second
    starts ("server exited unexpectedly")."""

    def __init__(self, command: str) -> None:
        assert shutil.which("tmux"), "tmux missing: scripts/setup.sh installs it"
        self.name = f"cli-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "-L", self.name, "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", command],
                       check=True, cwd=ROOT)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-L", self.name, "capture-pane", "-p", "-t", self.name, "-S", "-200"], capture_output=True,
                              text=True).stdout

    def finals(self) -> Counter[str]:
        """How often each text was printed as a final line (whole lines, so one text inside another is no hit)."""
        return Counter(m.group(1).rstrip() for line in self.screen().splitlines()
                       if (m := FINAL_LINE.match(line.strip())))

    def wait_for_finals(self, texts: list[str], timeout: float) -> Counter[str]:
        """Wait until each of `texts` is on screen as a final line; fails with the screen after `timeout`."""
        wait_until(lambda: all(self.finals()[t] for t in texts), timeout, lambda: f"{texts} not on screen:\n"
                   f"{self.screen()}")
        return self.finals()

    def __enter__(self) -> Tmux:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True)


def wait_until(ok: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g} s: {what()}")
        time.sleep(0.2)


def finals_of(folder: Path) -> list[str]:
    """The final texts of the daemon's JSONL transcripts in `folder`."""
    return [json.loads(line)["text"] for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


def wait_for_transcript(folder: Path, n: int) -> list[str]:
    """The finals in `folder` once there are at least n (fails after FINALS_WAIT_S)."""
    wait_until(lambda: len(finals_of(folder)) >= n, FINALS_WAIT_S,
               lambda: f"fewer than {n} finals in {folder}: {finals_of(folder)}")
    return finals_of(folder)


def test_cli_shows_finals_survives_a_restart_and_follows_a_file(tmp_path: Path) -> None:
    first, second = heldout_sentences(2), heldout_sentences(8)[6:7]
    for name, texts in (("one.wav", first), ("two.wav", second)):
        sf.write(tmp_path / name, program(texts)[0], SR)
    serve = ("--model", str(DEMO), "--source")
    with ExitStack() as stack:
        relay = stack.enter_context(Relay())
        d1 = stack.enter_context(Daemon(*serve, str(tmp_path / "one.wav"), "--transcripts", str(tmp_path / "a")))
        relay.target = d1.port
        term = stack.enter_context(Tmux(f"{sys.executable} clients/cli.py --url ws://127.0.0.1:{relay.port}"))
        shown = wait_for_transcript(tmp_path / "a", len(first))
        assert len(shown) == len(first), shown  # one final per sentence
        term.wait_for_finals(shown, SCREEN_WAIT_S)

        d1.stop()  # the daemon goes away (and the relay drops the client) ...
        relay.target = None
        d2 = stack.enter_context(Daemon(*serve, str(tmp_path / "two.wav"), "--transcripts", str(tmp_path / "b")))
        relay.target = d2.port  # ... and another one comes back behind the same URL
        new = wait_for_transcript(tmp_path / "b", len(second))
        counts = term.wait_for_finals(new, SCREEN_WAIT_S)
        d2.stop()
        assert {t: counts[t] for t in shown + new} == dict.fromkeys(shown + new, 1), term.screen()  # no duplicates
        assert sum(counts.values()) == len(shown + new), term.screen()  # and nothing else shown as a final
        assert "reconnect" in term.screen().lower()

    transcript = next((tmp_path / "a").glob("*.jsonl"))
    with Tmux(f"{sys.executable} clients/cli.py --follow {transcript}") as follower:
        counts = follower.wait_for_finals(shown, SCREEN_WAIT_S)
        assert sum(counts.values()) == len(shown), follower.screen()
