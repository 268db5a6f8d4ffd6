"""`python -m daemon serve` in a subprocess for end-to-end tests and benchmarks, a websocket collector, WER."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import jiwer
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
STOP_WAIT_S = 20


class Daemon:
    """`python -m daemon serve ARGS --port 0` in a subprocess; `port` is the one it reports once listening.

    Its log goes to a temporary file, removed by `stop()` (its text stays readable through `log()`).
    """

    def __init__(self, *args: str, stdin: int | None = None, env: dict[str, str] | None = None,
                 start_timeout: float = 60) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="daemon-")
        self.log_path = Path(self._dir.name) / "daemon.log"
        self._log: IO[str] | None = self.log_path.open("w")
        self._final_log: str | None = None
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "serve", "--port", "0", *args],
                                     cwd=ROOT, stdin=stdin, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        try:
            self.port = self._wait_port(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on ws://[\d.]+:(\d+)", self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log()}")
            time.sleep(0.05)
        raise TimeoutError(self.log())

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        """What the daemon has logged so far (all of it once stopped)."""
        return self._final_log if self._final_log is not None else self.log_path.read_text()

    def stop(self, sig: int = 2) -> int:
        """Signal the daemon (SIGINT by default: finish the open segment, close clients with 1001) and wait for
        its exit (killed after STOP_WAIT_S); returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
            self._final_log = self.log_path.read_text()
            self._dir.cleanup()
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def collect(url: str, done: Callable[[list[dict[str, Any]]], bool],
                  timeout: float) -> list[dict[str, Any]]:  # noqa: ASYNC109 (what came before the timeout is the result)
    """Messages from one client until done(messages) or `timeout` seconds have passed."""
    out: list[dict[str, Any]] = []
    async with connect(url) as ws:
        try:
            async with asyncio.timeout(timeout):
                while not done(out):
                    out.append(json.loads(await ws.recv()))
        except TimeoutError:
            pass
    return out


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate of the hypotheses against the references (joined, lower-cased)."""
    return float(jiwer.wer(" ".join(refs).lower(), " ".join(hyps).lower()))
